#!/usr/bin/env bash
# make compose-test: the container deployment (deploy/docker-compose.yml)
# end to end, as a compose project of its own that is removed afterwards.
#
#  1. builds the images (scripts/build-images.sh);
#  2. brings the stack up and waits until every service is healthy, PD
#     reports 3 stores Up (each with its advertised status address), every
#     region has 3 voters and a leader, and
#     Prometheus scrapes the nodes;
#  3. puts 100 keys and reads them back with mnemo-cli in a node container;
#  4. stops the container of the node holding the (first) region's leader:
#     100 more puts and all 200 reads succeed on the other two, and PD marks
#     its store Down (max-store-down-time lowered to 15s; with no fourth
#     node PD has nowhere to rebuild the replica, so the peer stays);
#  5. starts it again: PD sees it Up; region leadership moves to it and it
#     serves all 200 keys, the 100 written while it was away among them;
#     then another node is stopped, so that a write commits only with the
#     restarted node's vote, and 20 more puts and all 220 reads succeed;
#  6. removes the project's containers, network and volumes, pass or fail
#     (the images stay: they are what scripts/build-images.sh makes).
#
# Polls with deadlines, never sleeps for a fixed time. Prints
# "compose-test: PASS (Ns)" or "compose-test: FAIL: <why> (Ns)" last.
# Needs docker, docker-compose (or `docker compose`) and jq; the binaries
# from make build (MNEMO_BIN_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=mnemo-ct-$(date +%s)-$$
# Free host ports, so that the test runs beside `make run` or another test.
unset MNEMO_PD_PORT MNEMO_PROMETHEUS_PORT
PD_ENDPOINTS=pd1:2379,pd2:2379,pd3:2379
NODES=(node1 node2 node3)
SERVICES=(pd1 pd2 pd3 "${NODES[@]}" prometheus)

t0=$SECONDS
result=FAIL
why="a command failed"
log() { printf '[%3ds] %s\n' $((SECONDS - t0)) "$*"; }
fail() { why=$*; exit 1; }

if command -v docker-compose >/dev/null; then
  DC=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  DC=(docker compose)
else
  echo "compose-test: FAIL: docker-compose is missing (apt-get install docker-compose)"; exit 1
fi
DC+=(-f deploy/docker-compose.yml -p "$PROJECT")
command -v jq >/dev/null || { echo "compose-test: FAIL: jq is missing (apt-get install jq)"; exit 1; }

cleanup() {
  set +e
  if [ "$result" != PASS ] && [ "$why" != interrupted ]; then
    log "FAIL: $why; the services' state and last log lines:"
    "${DC[@]}" ps
    "${DC[@]}" logs --no-color --tail 15
  fi
  log "tearing down project $PROJECT (containers, network, volumes)"
  "${DC[@]}" down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 ||
    log "docker-compose down failed: see docker ps -a --filter label=com.docker.compose.project=$PROJECT"
  if [ "$result" = PASS ]; then
    echo "compose-test: PASS ($((SECONDS - t0))s)"
  else
    echo "compose-test: FAIL: $why ($((SECONDS - t0))s)"
  fi
}
trap cleanup EXIT
trap 'why="interrupted"; exit 130' INT TERM
trap 'why="line $LINENO failed: $BASH_COMMAND"' ERR

# wait_for WHAT SECONDS COMMAND...: polls COMMAND once a second until it
# succeeds, or fails the test after SECONDS.
wait_for() {
  local what=$1 limit=$2
  local deadline=$((SECONDS + limit))
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "no $what after ${limit}s"
    sleep 1
  done
  log "$what"
}

pdctl() { "${DC[@]}" exec -T pd1 pd-ctl -u http://pd1:2379 "$@"; }

healthy() {
  local s id
  for s in "$@"; do
    id=$("${DC[@]}" ps -q "$s")
    [ -n "$id" ] && [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ] || return 1
  done
}

# stores_up N: PD lists exactly N stores, all Up.
stores_up() {
  pdctl store | jq -e --argjson n "$1" '.count == $n and ([.stores[] | select(.store.state_name == "Up")] | length) == $n'
}

store_state() { # store_state ID STATE
  pdctl store | jq -e --argjson id "$1" --arg s "$2" '.stores[] | select(.store.id == $id) | .store.state_name == $s'
}

regions_replicated() {
  pdctl region | jq -e '.count > 0 and all(.regions[]; ([.peers[] | select(.role_name == "Voter")] | length) == 3 and .leader != null)'
}

leaders_on() { # leaders_on STORE_ID: every region's leader is on that store
  pdctl region | jq -e --argjson id "$1" 'all(.regions[]; .leader.store_id == $id)'
}

prometheus_scrapes_nodes() { # every target of both jobs (3 PD members, 3 nodes) up
  "${DC[@]}" exec -T prometheus wget -q -O- 'http://127.0.0.1:9090/api/v1/targets' |
    jq -e '[.data.activeTargets[] | select(.health == "up") | .labels.job] | (map(select(. == "pd")) | length) == 3
      and (map(select(. == "node")) | length) == 3'
}

show_stores() {
  pdctl store | jq -r '.stores[] | "    store \(.store.id) \(.store.address) \(.store.state_name) regions=\(.status.region_count) leaders=\(.status.leader_count)"'
}

# kv VIA put|get PREFIX COUNT: in container VIA, one mnemo-cli run per key
# PREFIX1..PREFIXCOUNT; put writes value-<key>, get checks it reads that.
kv() {
  # shellcheck disable=SC2016 # the script expands inside the container
  "${DC[@]}" exec -T "$1" sh -c '
    op=$1 prefix=$2 count=$3 pd=$4
    for i in $(seq 1 "$count"); do
      k=$prefix$i
      if [ "$op" = put ]; then
        out=$(mnemo-cli --pd "$pd" put "$k" "value-$k" 2>&1) && [ "$out" = OK ] ||
          { echo "put $k: $out"; exit 1; }
      else
        out=$(mnemo-cli --pd "$pd" get "$k" 2>&1) && [ "$out" = "value-$k" ] ||
          { echo "get $k: read \"$out\", wrote \"value-$k\""; exit 1; }
      fi
    done' sh "$2" "$3" "$4" "$PD_ENDPOINTS" || fail "$2 of $3* from the $1 container failed"
  log "$2 $4 keys ${3}1..${3}$4 from the $1 container: ok"
}

log "building images"
scripts/build-images.sh || fail "scripts/build-images.sh failed"

log "starting project $PROJECT"
# Compose starts the nodes once the PD members are healthy.
timeout 300 "${DC[@]}" up -d 2>&1 | sed 's/^/    /' || fail "docker-compose up failed"
wait_for "every service healthy" 120 healthy "${SERVICES[@]}"
wait_for "3 stores Up in PD" 60 stores_up 3
wait_for "every region with 3 voters and a leader" 60 regions_replicated
show_stores
# Each node gave PD the status address others reach it at, not 0.0.0.0.
pdctl store | jq -e '[.stores[].store.status_address] | sort == ["node1:20180","node2:20180","node3:20180"]' >/dev/null ||
  fail "PD's stores do not carry the advertised status addresses: $(pdctl store | jq -c '[.stores[].store.status_address]')"

kv node1 put before- 100
kv node1 get before- 100
n=$("${DC[@]}" exec -T node1 mnemo-cli --pd "$PD_ENDPOINTS" scan before- before. --limit 1000 | wc -l)
[ "$n" = 100 ] || fail "scan of before-* returned $n pairs, not 100"
log "scan before-* from the node1 container: 100 pairs"
wait_for "Prometheus scraping the 3 PD members and the 3 nodes" 60 prometheus_scrapes_nodes

# The node to stop: the one holding the first region's leader, so that the
# stop also costs the region its leader.
victim_id=$(pdctl region | jq -r '.regions[0].leader.store_id')
victim=$(pdctl store | jq -r --argjson id "$victim_id" '.stores[] | select(.store.id == $id) | .store.address' | cut -d: -f1)
case " ${NODES[*]} " in *" $victim "*) ;; *) fail "leader store $victim_id has address '$victim', no node service" ;; esac
others=()
for s in "${NODES[@]}"; do [ "$s" = "$victim" ] || others+=("$s"); done
via=${others[0]}

pdctl config set max-store-down-time 15s >/dev/null || fail "pd-ctl config set max-store-down-time failed"
log "max-store-down-time set to 15s (nodes heartbeat every 10s)"
log "stopping $victim (store $victim_id, region leader)"
"${DC[@]}" stop -t 10 "$victim" 2>&1 | sed 's/^/    /' || fail "docker-compose stop $victim failed"
kv "$via" put during- 100
kv "$via" get before- 100
kv "$via" get during- 100
wait_for "store $victim_id Down in PD" 90 store_state "$victim_id" Down
show_stores

log "starting $victim again"
"${DC[@]}" start "$victim" 2>&1 | sed 's/^/    /' || fail "docker-compose start $victim failed"
wait_for "$victim healthy" 90 healthy "$victim"
wait_for "3 stores Up in PD" 60 stores_up 3
# Leadership to the restarted store: its reads then show what it holds
# (balance-leader off first, or it would spread the leaders again).
pdctl scheduler remove balance-leader-scheduler >/dev/null || fail "removing balance-leader-scheduler failed"
for rid in $(pdctl region | jq -r --argjson id "$victim_id" '.regions[] | select(.leader.store_id != $id) | .id'); do
  pdctl operator add transfer-leader "$rid" "$victim_id" >/dev/null || fail "transfer-leader of region $rid failed"
done
wait_for "every region led by store $victim_id ($victim)" 60 leaders_on "$victim_id"
kv "$victim" get during- 100
kv "$victim" get before- 100
leaders_on "$victim_id" >/dev/null || fail "leadership left store $victim_id while it served the reads"
log "store $victim_id led every region throughout those reads"

# With a second node stopped, a write commits only with the restarted
# node's vote: it must hold the whole log.
log "stopping ${others[1]}: $victim and $via are left"
"${DC[@]}" stop -t 10 "${others[1]}" 2>&1 | sed 's/^/    /' || fail "docker-compose stop ${others[1]} failed"
kv "$via" put after- 20
kv "$via" get after- 20
kv "$via" get during- 100
kv "$via" get before- 100
show_stores

result=PASS

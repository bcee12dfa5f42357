#!/usr/bin/env bash
# Idle cost of many region peers (issue 10's target: a node with 10,000
# peers idles under 5% of a core and 500 MiB RSS). A 3-node cluster with
# default settings is split through PD's split API into REGIONS regions
# (default 10,000: every node then holds 10,000 peers), then left alone;
# prints each process's CPU (% of one core) and RSS over WINDOWS windows
# of MEASURE seconds once PD has been quiet for 10 s.
#
#   REGIONS=10000 MEASURE=30 WINDOWS=1 scripts/bench-idle.sh   (or: make bench-idle)
set -euo pipefail
BIN=${MNEMO_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/mnemosyne/target}/release}
ROOT=$(mktemp -d /tmp/mnemo-idle-XXXX)
REGIONS=${REGIONS:-10000}
MEASURE=${MEASURE:-30}
KEYS=$((REGIONS * 10))
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$ROOT"; }
trap cleanup EXIT
source "$(dirname "$0")/bench-lib.sh"

count() { curl -sf "http://$PD/pd/api/v1/regions" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])'; }
# split_keys N: asks PD to split the key space at N-1 evenly spaced keys (regions already cut there are left alone).
split_keys() {
  python3 -c "
import json
n, keys = $1, $KEYS
print(json.dumps({'split_keys': [('%016d' % (keys * i // n)).encode().hex() for i in range(1, n)]}))" |
    curl -sf -X POST "http://$PD/pd/api/v1/regions/split" -H 'content-type: application/json' -d @- >/dev/null || true
}

start_mnemosyne
start=$(date +%s)
# In two steps (first ~sqrt(REGIONS) regions, then all), asked again until
# PD counts them all: one region is split by one operator at a time.
step=$(python3 -c "import math; print(max(2, int(math.sqrt($REGIONS))))")
split_keys "$step"
for _ in $(seq 1 1200); do
  n=$(count)
  [ "$n" -ge "$REGIONS" ] && break
  if [ "$n" -ge "$step" ]; then split_keys "$REGIONS"; fi
  sleep 1
done
[ "$(count)" -ge "$REGIONS" ] || { echo "only $(count) of $REGIONS regions after 20 min (see $ROOT/*.log)"; exit 1; }
wait_replicated
echo "split into $(count) regions, replicated, in $(( $(date +%s) - start )) s"

# Idle: wait until PD has run no operator for 10 s (leaders balanced),
# then measure WINDOWS windows of MEASURE seconds each.
quiet=0
for _ in $(seq 1 600); do
  n=$(curl -sf "http://$PD/pd/api/v1/operators" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' || echo 1)
  if [ "$n" = 0 ]; then quiet=$((quiet + 1)); else quiet=0; fi
  [ "$quiet" -ge 10 ] && break
  sleep 1
done
echo "PD quiet (no operator for 10 s) $(( $(date +%s) - start )) s after the start"
hz=$(getconf CLK_TCK)
names=(pd n1 n2 n3)
for w in $(seq 1 "${WINDOWS:-1}"); do
  declare -A t0
  for i in 0 1 2 3; do t0[$i]=$(awk '{print $14+$15}' "/proc/${pids[$i]}/stat"); done
  sleep "$MEASURE"
  echo "window $w of $MEASURE s:"
  printf '%-4s %8s %8s %10s %8s\n' proc peers leaders cpu_%core rss_MiB
  for i in 0 1 2 3; do
    t1=$(awk '{print $14+$15}' "/proc/${pids[$i]}/stat")
    rss=$(awk '/VmRSS/ {print $2}' "/proc/${pids[$i]}/status")
    peers=- leaders=-
    if [ "$i" -gt 0 ]; then
      m=$(curl -sf "127.0.0.1:2472$i/metrics")
      peers=$(awk '/^mnemo_region_count / {print $2}' <<<"$m")
      leaders=$(awk '/^mnemo_leader_count / {print $2}' <<<"$m")
    fi
    printf '%-4s %8s %8s %10s %8s\n' "${names[$i]}" "$peers" "$leaders" \
      "$(python3 -c "print(f'{($t1-${t0[$i]})/$hz/$MEASURE*100:.2f}')")" "$((rss / 1024))"
  done
done

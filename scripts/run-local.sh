#!/usr/bin/env bash
# Starts 3 PD members + 3 storage nodes on loopback, data under ./data/, in
# the foreground. Ctrl-C stops everything. PD_MEMBERS=1 starts one PD.
set -euo pipefail
BIN=${MNEMO_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/mnemosyne/target}/release}
DATA=${DATA_DIR:-./data}
mkdir -p "$DATA/logs"

pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "stopping..."
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped. Data kept in $DATA (make clean-data removes it)."
}
trap stop INT TERM EXIT

# PD member i: client port 2379 + 100*(i-1), peer port one above.
PD_MEMBERS=${PD_MEMBERS:-3}
initial=""
endpoints=""
for i in $(seq 1 "$PD_MEMBERS"); do
  initial="$initial${initial:+,}pd$i=http://127.0.0.1:$((2280 + 100 * i))"
  endpoints="$endpoints${endpoints:+,}127.0.0.1:$((2279 + 100 * i))"
done
for i in $(seq 1 "$PD_MEMBERS"); do
  "$BIN/mnemo-pd" --name "pd$i" --data-dir "$DATA/pd$i" \
    --client-urls "http://127.0.0.1:$((2279 + 100 * i))" --peer-urls "http://127.0.0.1:$((2280 + 100 * i))" \
    --initial-cluster "$initial" >"$DATA/logs/pd$i.log" 2>&1 &
  pids+=($!)
done

for i in 1 2 3; do
  "$BIN/mnemo-node" --pd "$endpoints" --addr 127.0.0.1:2016$i \
    --status-addr 127.0.0.1:2018$i --data-dir "$DATA/n$i" >"$DATA/logs/n$i.log" 2>&1 &
  pids+=($!)
done

# Wait until the first region has 3 voters and a leader (as the PD leader
# sees it: ask each member).
ready=""
for _ in $(seq 1 120); do
  for ep in ${endpoints//,/ }; do
    if curl -sf "http://$ep/pd/api/v1/regions" 2>/dev/null | grep -q '"leader"'; then
      peers=$(curl -sf "http://$ep/pd/api/v1/regions" | grep -o '"store_id"' | wc -l)
      [ "$peers" -ge 4 ] && ready=1
    fi
  done
  [ -n "$ready" ] && break
  sleep 0.5
done

cat <<TXT
Mnemosyne is running (logs in $DATA/logs):
  PD        $endpoints   (gRPC and HTTP; pd-ctl member shows the leader)
  nodes     127.0.0.1:20161 20162 20163   status: http://127.0.0.1:20181/metrics ...
Try:
  $BIN/mnemo-cli --pd $endpoints put hello world
  $BIN/mnemo-cli --pd $endpoints get hello
  $BIN/pd-ctl -u http://127.0.0.1:2379 member        (any member; followers forward to the leader)
  $BIN/pd-ctl -u http://127.0.0.1:2379 region
Press Ctrl-C to stop.
TXT
wait

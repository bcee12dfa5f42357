#!/usr/bin/env bash
# Starts 1 PD + 3 storage nodes on loopback, data under ./data/, in the
# foreground. Ctrl-C stops everything.
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

"$BIN/mnemo-pd" --name pd1 --data-dir "$DATA/pd1" \
  --client-urls http://127.0.0.1:2379 --peer-urls http://127.0.0.1:2380 \
  --initial-cluster pd1=http://127.0.0.1:2380 >"$DATA/logs/pd1.log" 2>&1 &
pids+=($!)

for i in 1 2 3; do
  "$BIN/mnemo-node" --pd 127.0.0.1:2379 --addr 127.0.0.1:2016$i \
    --status-addr 127.0.0.1:2018$i --data-dir "$DATA/n$i" >"$DATA/logs/n$i.log" 2>&1 &
  pids+=($!)
done

# Wait until the first region has 3 voters and a leader.
for _ in $(seq 1 120); do
  if curl -sf http://127.0.0.1:2379/pd/api/v1/regions 2>/dev/null | grep -q '"leader"'; then
    peers=$(curl -sf http://127.0.0.1:2379/pd/api/v1/regions | grep -o '"store_id"' | wc -l)
    [ "$peers" -ge 4 ] && break
  fi
  sleep 0.5
done

cat <<TXT
Mnemosyne is running (logs in $DATA/logs):
  PD        http://127.0.0.1:2379   (gRPC and HTTP: curl 127.0.0.1:2379/pd/api/v1/regions)
  nodes     127.0.0.1:20161 20162 20163   status: http://127.0.0.1:20181/metrics ...
Try:
  $BIN/mnemo-cli --pd 127.0.0.1:2379 put hello world
  $BIN/mnemo-cli --pd 127.0.0.1:2379 get hello
  $BIN/pd-ctl -u http://127.0.0.1:2379 region
Press Ctrl-C to stop.
TXT
wait

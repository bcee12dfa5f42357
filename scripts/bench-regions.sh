#!/usr/bin/env bash
# Measures, on this machine, in one run:
#   1. put/get throughput and latency with 1 region vs >= 64 regions (3 nodes);
#   2. CPU and RSS of an idle node holding ~1,000 region peers.
# Each cluster runs on loopback under a temporary directory, removed at the end.
set -euo pipefail
BIN=${MNEMO_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/mnemosyne/target}/release}
ROOT=$(mktemp -d /tmp/mnemo-bench-XXXX)
DURATION=${DURATION:-10}
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$ROOT"; }
trap cleanup EXIT

# start_cluster NAME PD_PORT NODE_TOML
start_cluster() {
  local name=$1 port=$2 toml=$3 dir=$ROOT/$1
  mkdir -p "$dir"; printf '%b' "$toml" > "$dir/node.toml"
  "$BIN/mnemo-pd" --name pd1 --data-dir "$dir/pd" --client-urls "http://127.0.0.1:$port" \
    --peer-urls "http://127.0.0.1:$((port+1))" --initial-cluster "pd1=http://127.0.0.1:$((port+1))" >"$dir/pd.log" 2>&1 &
  pids+=($!)
  for i in 1 2 3; do
    "$BIN/mnemo-node" --pd "127.0.0.1:$port" --addr "127.0.0.1:$((port+10+i))" --status-addr "127.0.0.1:$((port+20+i))" \
      --data-dir "$dir/n$i" --config "$dir/node.toml" >"$dir/n$i.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 1 120); do
    [ "$(curl -sf "127.0.0.1:$port/pd/api/v1/regions" | grep -o '"role_name":"Voter"' | wc -l)" -ge 4 ] && return 0
    sleep 0.5
  done
  echo "cluster $name did not come up"; exit 1
}
# settle PORT: waits until PD has run no operator for 3 s in a row (splits and balancing done).
settle() {
  local quiet=0
  for _ in $(seq 1 240); do
    n=$(curl -sf "127.0.0.1:$1/pd/api/v1/operators" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
    if [ "$n" = 0 ]; then quiet=$((quiet+1)); else quiet=0; fi
    [ "$quiet" -ge 6 ] && return 0
    sleep 0.5
  done
}
regions() { curl -sf "127.0.0.1:$1/pd/api/v1/regions" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])'; }
bench() { "$BIN/mnemo-bench" --pd "127.0.0.1:$1" --op "$2" --clients 32 --duration "$DURATION" --key-size 16 --value-size 256 --keys 10000 2>/dev/null | sed -n 2p; }
stop_cluster() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }

FAST='[raftstore]\npd-heartbeat-tick-interval = "1s"\npd-store-heartbeat-tick-interval = "1s"\n'
echo "op   clients elapsed_s        ops       ops/s  errors  undet   p50_ms   p99_ms  p999_ms   max_ms  regions"

start_cluster one 24100 "$FAST"
echo "$(bench 24100 put) 1"
echo "$(bench 24100 get) 1"
stop_cluster

start_cluster many 24200 "$FAST[coprocessor]\nregion-split-size = \"24KiB\"\nregion-split-keys = 80\nsplit-region-check-tick-interval = \"200ms\"\n"
"$BIN/mnemo-bench" --pd 127.0.0.1:24200 --op get --clients 1 --duration 1 --keys 10000 --key-size 16 --value-size 256 >/dev/null 2>&1
for _ in $(seq 1 120); do [ "$(regions 24200)" -ge 64 ] && break; sleep 0.5; done
settle 24200
echo "$(bench 24200 put) $(regions 24200)"
echo "$(bench 24200 get) $(regions 24200)"
stop_cluster

# ~1,000 regions, then idle: CPU seconds and RSS of node 1 over 30 s.
start_cluster idle 24300 "$FAST[coprocessor]\nregion-split-size = \"4KiB\"\nregion-split-keys = 10\nsplit-region-check-tick-interval = \"200ms\"\n"
"$BIN/mnemo-bench" --pd 127.0.0.1:24300 --op get --clients 1 --duration 1 --keys 12000 --key-size 16 --value-size 256 >/dev/null 2>&1
for _ in $(seq 1 240); do [ "$(regions 24300)" -ge 1000 ] && break; sleep 0.5; done
settle 24300
node=$(pgrep -f "status-addr 127.0.0.1:24321")
peers=$(curl -sf 127.0.0.1:24321/metrics | awk '/^mnemo_region_count/ {print $2}')
t0=$(awk '{print $14+$15}' /proc/$node/stat); sleep 30; t1=$(awk '{print $14+$15}' /proc/$node/stat)
hz=$(getconf CLK_TCK)
rss=$(awk '/VmRSS/ {print $2}' /proc/$node/status)
echo "idle node: $peers region peers ($(regions 24300) regions), CPU $(python3 -c "print(f'{($t1-$t0)/$hz/30*100:.1f}')")% of one core over 30 s, RSS $((rss/1024)) MiB"

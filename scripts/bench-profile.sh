#!/usr/bin/env bash
# Where a node's time goes under load (`make bench-profile`): a 3-node
# Mnemosyne with one PD on loopback, the key space split into REGIONS
# regions (1 = unsplit), WORKLOAD run by mnemo-bench with CLIENTS clients
# while `perf record --call-graph dwarf` samples the node leading most regions
# for PERF_SECONDS; prints the
# benchmark's result, the CPU each process used, and perf's top entries
# (self time, then children), and keeps perf.data in OUT.
# Settings: REGIONS (64), WORKLOAD (put), CLIENTS (64), DURATION (20),
# PERF_SECONDS (10), KEYS (100000), OUT (bench-results/profile), BENCH_ARGS
# (more mnemo-bench flags, e.g. --batch-commands).
set -euo pipefail
BIN=${MNEMO_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/mnemosyne/target}/release}
REGIONS=${REGIONS:-64}
WORKLOAD=${WORKLOAD:-put}
CLIENTS=${CLIENTS:-64}
DURATION=${DURATION:-20}
PERF_SECONDS=${PERF_SECONDS:-10}
KEYS=${KEYS:-100000}
OUT=${OUT:-bench-results/profile}
ROOT=$(mktemp -d /tmp/mnemo-profile-XXXX)
mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$ROOT"; }
trap cleanup EXIT
# start_mnemosyne, wait_replicated, split_into, load
. "$(dirname "$0")/bench-lib.sh"

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

start_mnemosyne
load --target mnemosyne --pd "$PD"
[ "$REGIONS" -gt 1 ] && split_into "$REGIONS"
# Profile the node leading most regions (with 1 region: the leader), whose
# store loop does the most: its status port serves mnemo_leader_count.
leaders_on() { curl -s "127.0.0.1:2472$1/metrics" | awk '/^mnemo_leader_count/ {print $2}'; }
best=1
for i in 2 3; do [ "$(leaders_on $i)" -gt "$(leaders_on $best)" ] && best=$i; done
node=$(pgrep -f "status-addr 127.0.0.1:2472$best")
procs=$(pgrep -f "mnemo-(node|pd) .*$ROOT" | tr '\n' ' ')
declare -A before
for p in $procs; do before[$p]=$(cpu_ticks "$p"); done
"$BIN/mnemo-bench" --target mnemosyne --pd "$PD" --workload "$WORKLOAD" --clients "$CLIENTS" \
  --duration "$DURATION" --keys "$KEYS" --key-size 16 --value-size 256 --warmup 2 --no-load --quiet ${BENCH_ARGS:-} \
  >"$ROOT/bench.json" 2>>"$ROOT/bench.err" &
bench=$!
sleep 4 # past the warm-up
perf record --call-graph dwarf,32768 -F 199 -p "$node" -o "$OUT/perf.data" -- sleep "$PERF_SECONDS" 2>"$ROOT/perf.err"
wait "$bench"
hz=$(getconf CLK_TCK)
echo "$WORKLOAD, $CLIENTS clients, $REGIONS regions: $(tail -1 "$ROOT/bench.json" | python3 -c 'import json,sys; t=json.load(sys.stdin)["total"]; print("%.0f ops/s, p50 %.2f ms, p99 %.2f ms" % (t["ops_per_sec"], t["p50_us"]/1000, t["p99_us"]/1000))')"
for p in $procs; do
  echo "  $(tr '\0' ' ' <"/proc/$p/cmdline" | grep -o 'mnemo-[a-z]* .*--\(addr\|name\) [^ ]*' | awk '{print $1, $NF}'): $(( ($(cpu_ticks "$p") - before[$p]) * 100 / hz / DURATION ))% of a core"
done
echo "perf (node $best, leading most regions; self time):"
perf report -i "$OUT/perf.data" --no-children --sort dso,sym --stdio -g none --percent-limit 0.4 2>/dev/null | grep -E "^ +[0-9]" | cut -c1-160 | sed "s/ *$//" | head -40
echo "perf (node $best, by thread):"
perf report -i "$OUT/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null | grep -E "^ +[0-9]" | head -8
echo "perf (node $best, with children):"
perf report -i "$OUT/perf.data" --children --sort sym --stdio -g none --percent-limit 2 2>/dev/null | grep -E "^ +[0-9]" | cut -c1-160 | sed "s/ *$//" | head -60

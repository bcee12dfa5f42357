#!/usr/bin/env bash
# Mnemosyne, etcd and RocksDB side by side on this machine, in one run
# (`make bench-compare`):
#   - a 3-member etcd (Debian's etcd-server) and a 3-node Mnemosyne (1 PD),
#     each on loopback with its own data directories, fsync on, 3 replicas;
#     RocksDB in process (mnemo-bench --target rocksdb) as the ceiling;
#   - the same key set loaded into each, then each workload run on each
#     system in turn, ROUNDS times, the order alternating every round so
#     that machine drift hits both;
#   - put and get again with the Mnemosyne key space split into 64 and 512
#     regions;
#   - a ratio table (median ops/s and p99 of the rounds), written with every
#     raw result to bench-results/<date>.json, and a bar chart to
#     bench-results/<date>.svg.
#   - for each workload in HALF, each system again at half its own peak
#     (median) rate, open loop (`--rate`): rows `put@half`, `get@half`, whose
#     p99 compares latency at the same relative load;
# The Mnemosyne client sends gets and puts on one BatchCommands stream per
# node, as TiKV's Go client does (BATCH_COMMANDS=0: one call each).
# Settings: DURATION (s per run, 15), ROUNDS (3), CLIENTS (64), KEYS (100000),
# WORKLOADS ("put get batch_get scan ycsb-a ycsb-b ycsb-e"), REGIONS ("64 512"),
# HALF ("put get").
set -euo pipefail
BIN=${MNEMO_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/mnemosyne/target}/release}
DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-64}
KEYS=${KEYS:-100000}
WORKLOADS=${WORKLOADS:-"put get batch_get scan ycsb-a ycsb-b ycsb-e"}
REGIONS=${REGIONS-"64 512"}
HALF=${HALF-"put get"}
OUT=${OUT:-bench-results}
ROOT=$(mktemp -d /tmp/mnemo-compare-XXXX)
RAW=$ROOT/raw.jsonl
mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$ROOT"; }
trap cleanup EXIT
# start_mnemosyne, wait_replicated, split_into, load
. "$(dirname "$0")/bench-lib.sh"

ETCD_EP=http://127.0.0.1:24379,http://127.0.0.1:24479,http://127.0.0.1:24579
start_etcd() {
  local initial=etcd1=http://127.0.0.1:24380,etcd2=http://127.0.0.1:24480,etcd3=http://127.0.0.1:24580
  for i in 1 2 3; do
    local c=$((24279 + 100 * i)) p=$((24280 + 100 * i))
    etcd --name "etcd$i" --data-dir "$ROOT/etcd$i" --listen-client-urls "http://127.0.0.1:$c" \
      --advertise-client-urls "http://127.0.0.1:$c" --listen-peer-urls "http://127.0.0.1:$p" \
      --initial-advertise-peer-urls "http://127.0.0.1:$p" --initial-cluster "$initial" \
      --initial-cluster-state new --initial-cluster-token "compare-$$" >"$ROOT/etcd$i.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 1 120); do
    curl -sf http://127.0.0.1:24379/health | grep -q '"true"' && return 0
    sleep 0.5
  done
  echo "etcd did not come up (see $ROOT/etcd1.log)"; exit 1
}

# run SYSTEM WORKLOAD REGIONS [extra mnemo-bench args]: one measured run, appended to RAW
# (its workload named WORKLOAD$TAG there).
run() {
  local system=$1 workload=$2 regions=$3; shift 3
  local target=(--target "$system")
  case $system in
    mnemosyne) target+=(--pd "$PD"); [ "${BATCH_COMMANDS:-1}" = 1 ] && target+=(--batch-commands) ;;
    etcd) target+=(--etcd-endpoints "$ETCD_EP") ;;
    rocksdb) target+=(--rocksdb-dir "$ROOT/rocksdb") ;;
  esac
  "$BIN/mnemo-bench" "${target[@]}" --workload "$workload" --clients "$CLIENTS" --duration "$DURATION" \
    --keys "$KEYS" --key-size 16 --value-size 256 --warmup 2 --no-load --quiet "$@" 2>>"$ROOT/bench.err" |
    tail -1 | python3 -c "import json,sys; r=json.load(sys.stdin); r['regions']=$regions; r['options']['workload']+='${TAG:-}'; print(json.dumps(r))" >>"$RAW"
  printf '  %-9s %-9s %4s regions: %s\n' "$system" "$workload${TAG:-}" "$regions" \
    "$(tail -1 "$RAW" | python3 -c 'import json,sys; t=json.load(sys.stdin)["total"]; print("%.0f ops/s, p99 %.2f ms, %d errors" % (t["ops_per_sec"], t["p99_us"]/1000, t["errors"]))')"
}

echo "starting etcd (3 members) and Mnemosyne (3 nodes) under $ROOT"
start_etcd
start_mnemosyne
echo "loading $KEYS keys into each"
load --target etcd --etcd-endpoints "$ETCD_EP"
load --target mnemosyne --pd "$PD"
load --target rocksdb --rocksdb-dir "$ROOT/rocksdb"
regions=$(curl -sf "http://$PD/pd/api/v1/regions" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])')
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round of $ROUNDS"
  for w in $WORKLOADS; do
    if [ $((round % 2)) = 1 ]; then order="mnemosyne etcd"; else order="etcd mnemosyne"; fi
    for s in $order; do run "$s" "$w" "$regions"; done
    case $w in put|get) run rocksdb "$w" 1 ;; esac
  done
done
# Half of each system's own peak (median of its rounds), open loop.
for w in $HALF; do
  for s in mnemosyne etcd; do
    rate=$(python3 -c "
import json, statistics
rs = [json.loads(l) for l in open('$RAW')]
ops = [r['total']['ops_per_sec'] for r in rs if r['target'] == '$s' and r['options']['workload'] == '$w' and r['regions'] == $regions]
print('%.0f' % (statistics.median(ops) / 2) if ops else '')")
    if [ -n "$rate" ]; then TAG=@half run "$s" "$w" "$regions" --rate "$rate"; fi
  done
done
for n in $REGIONS; do
  split_into "$n"
  regions=$(curl -sf "http://$PD/pd/api/v1/regions" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])')
  for round in $(seq 1 "$ROUNDS"); do
    for w in put get; do run mnemosyne "$w" "$regions"; done
  done
done

stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
python3 scripts/bench-report.py "$RAW" "$OUT/$stamp.json" "$OUT/$stamp.svg"

# Shell functions the benchmark scripts share (sourced, not run): a
# 3-node Mnemosyne with one PD on loopback under $ROOT, key-space splits,
# loading the key set. The caller sets BIN, ROOT, KEYS and a `pids` array
# (killed by its cleanup trap); NODE_ARGS, if set, goes to every node.
# GRPC_CONCURRENCY (default 1): each node's gRPC/async threads — three
# nodes sharing two cores do ~9% more puts with one each than with one per
# core (docs/performance.md).

PD=127.0.0.1:24700
start_mnemosyne() {
  "$BIN/mnemo-pd" --name pd1 --data-dir "$ROOT/pd" --client-urls "http://$PD" \
    --peer-urls http://127.0.0.1:24701 --initial-cluster pd1=http://127.0.0.1:24701 >"$ROOT/pd.log" 2>&1 &
  pids+=($!)
  for i in 1 2 3; do
    "$BIN/mnemo-node" --pd "$PD" --addr "127.0.0.1:2471$i" --status-addr "127.0.0.1:2472$i" \
      --data-dir "$ROOT/n$i" --grpc-concurrency "${GRPC_CONCURRENCY:-1}" ${NODE_ARGS:-} >"$ROOT/n$i.log" 2>&1 &
    pids+=($!)
  done
  wait_replicated
}
# Every region has 3 voters and a leader.
wait_replicated() {
  for _ in $(seq 1 240); do
    curl -sf "http://$PD/pd/api/v1/regions" | python3 -c '
import json, sys
try:
    rs = json.load(sys.stdin)["regions"]
except Exception:
    sys.exit(1)
ok = rs and all(len(r["peers"]) == 3 and r.get("leader", {}).get("store_id") for r in rs)
sys.exit(0 if ok else 1)' 2>/dev/null && return 0
    sleep 0.5
  done
  echo "Mnemosyne did not replicate (see $ROOT/*.log)"; exit 1
}
# split_into N: splits the key space of KEYS keys into N regions (PD splits, then waits).
split_into() {
  python3 -c "
import json
n, keys = $1, $KEYS
print(json.dumps({'split_keys': [('%016d' % (keys * i // n)).encode().hex() for i in range(1, n)]}))" |
    curl -sf -X POST "http://$PD/pd/api/v1/regions/split" -H 'content-type: application/json' -d @- >/dev/null
  for _ in $(seq 1 240); do
    [ "$(curl -sf "http://$PD/pd/api/v1/regions" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])')" -ge "$1" ] && break
    sleep 0.5
  done
  wait_replicated
}

load() {
  "$BIN/mnemo-bench" "$@" --workload get --keys "$KEYS" --key-size 16 --value-size 256 --ops 1 --clients 1 --quiet >/dev/null
}

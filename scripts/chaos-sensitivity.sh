#!/usr/bin/env bash
# Sensitivity of the chaos checker: RUNS runs of the deliberately unsafe mode
# (--unsafe: stale follower reads) on the default schedule (all faults, all
# workloads), seeds 1..RUNS, DURATION seconds each. Prints how many the
# checker flagged invalid (the issue asks for at least 9 of 10).
# Usage: scripts/chaos-sensitivity.sh [RUNS] [DURATION]
set -uo pipefail
RUNS=${1:-10}
DURATION=${2:-60}
BIN=${MNEMO_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/mnemosyne/target}/release}
OUT=${OUT:-chaos-results/sensitivity-$(date +%s)}
mkdir -p "$OUT"
flagged=0
for seed in $(seq 1 "$RUNS"); do
    "$BIN/mnemo-chaos" --unsafe --duration "$DURATION" --seed "$seed" --out "$OUT/seed-$seed" \
        >"$OUT/seed-$seed.log" 2>&1
    rc=$?
    verdict=$(grep '^verdict:' "$OUT/seed-$seed.log" | cut -d' ' -f2)
    echo "seed $seed: exit $rc, verdict ${verdict:-none}"
    [ "$rc" -eq 1 ] && flagged=$((flagged + 1))
    rm -rf "$OUT/seed-$seed/data"
done
echo "unsafe runs flagged invalid: $flagged / $RUNS (${DURATION}s each, results in $OUT)"

#!/usr/bin/env bash
# Sensitivity of the chaos harness: for each planted bug (mnemo-chaos
# --plant), RUNS runs of DURATION seconds, seeds 1..RUNS, under the faults
# that exercise the code the bug breaks; counts how many the harness's own
# checkers flag invalid (exit 1; the issue asks for at least 9 of 10), and
# prints a Markdown table. Also RUNS safe runs of the same length under every
# fault, which must all stay valid.
# Usage: scripts/chaos-sensitivity.sh [RUNS] [DURATION] [BUG...]
set -uo pipefail
RUNS=${1:-10}
DURATION=${2:-60}
shift 2 2>/dev/null || shift $#
BIN=${MNEMO_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/mnemosyne/target}/release}
OUT=${OUT:-chaos-results/sensitivity-$(date +%s)}
mkdir -p "$OUT"

# bug → the faults that drive its code path.
declare -A NEMESIS=(
    [stale-follower-reads]=partition-one,partition-leader
    [apply-local-clock]=delay,pause,kill-one
    [lease-ignores-transfer]=delay-transfer
    [ack-before-commit]=kill-leader,kill-one,partition-leader
    [skip-apply-epoch-check]=delay-split
    [none]=everything
)
BUGS=("$@")
[ ${#BUGS[@]} -eq 0 ] && BUGS=(stale-follower-reads apply-local-clock lease-ignores-transfer ack-before-commit skip-apply-epoch-check none)

table="| planted bug | nemesis | runs | flagged invalid | anomalies seen |\n|---|---|---|---|---|\n"
for bug in "${BUGS[@]}"; do
    nemesis=${NEMESIS[$bug]:-everything}
    flagged=0
    kinds=""
    for seed in $(seq 1 "$RUNS"); do
        dir="$OUT/$bug-$seed"
        plant=(--plant "$bug")
        [ "$bug" = none ] && plant=()
        "$BIN/mnemo-chaos" "${plant[@]}" --nemesis "$nemesis" --duration "$DURATION" --seed "$seed" \
            --out "$dir" >"$dir.log" 2>&1
        rc=$?
        verdict=$(grep '^verdict:' "$dir.log" | cut -d' ' -f2)
        seen=$(grep '^anomaly:' "$dir.log" | cut -d' ' -f2 | tr -d ':' | sort -u | tr '\n' ' ')
        echo "$bug seed $seed: exit $rc, verdict ${verdict:-none} ${seen}"
        [ "$rc" -eq 1 ] && flagged=$((flagged + 1))
        kinds="$kinds $seen"
        rm -rf "$dir/data"
    done
    kinds=$(echo "$kinds" | tr ' ' '\n' | grep -v '^$' | sort | uniq -c | awk '{print $2 " ×" $1}' | paste -sd, -)
    table="$table| $bug | \`$nemesis\` | $RUNS | $flagged | ${kinds:--} |\n"
done
echo
printf "%b" "$table" | tee "$OUT/table.md"
echo "(${DURATION}s runs, seeds 1..$RUNS; results in $OUT)"

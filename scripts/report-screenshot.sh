#!/usr/bin/env bash
# Renders a chaos run's report.html to report.png with headless Chromium
# (Debian's chromium-headless-shell, installed if missing), to check the
# report by looking at it. Usage: scripts/report-screenshot.sh RUN_DIR [WIDTH] [HEIGHT]
set -euo pipefail
DIR=${1:?usage: scripts/report-screenshot.sh RUN_DIR [WIDTH] [HEIGHT]}
WIDTH=${2:-1100}
HEIGHT=${3:-3000}
[ -f "$DIR/report.html" ] || { echo "no $DIR/report.html" >&2; exit 1; }
if ! command -v chromium-headless-shell >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell >/dev/null
fi
BROWSER=$(command -v chromium-headless-shell || echo /usr/lib/chromium/headless_shell)
"$BROWSER" --no-sandbox --disable-gpu --hide-scrollbars --window-size="$WIDTH,$HEIGHT" \
    --screenshot="$(realpath "$DIR")/report.png" "file://$(realpath "$DIR")/report.html" 2>/dev/null
echo "$DIR/report.png"

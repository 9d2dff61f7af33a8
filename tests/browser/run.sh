#!/usr/bin/env bash
# The page at `/` in a real browser: headless Debian Chromium driven by playwright-core (no
# browser download) against `kiln serve` on the tiny demo models, with an API key: it loads
# without the key, generates with SD (previews, final PNG, seed) and DALL·E, and shows a wrong
# key's error (page.test.mjs, node's built-in test runner). Screenshots go to $SHOT_DIR (a temp
# dir by default, printed at the end).
# Installs chromium with apt-get when missing and this runs as root (CI); node_modules comes
# from `npm ci` (git-ignored).
# Usage: tests/browser/run.sh   (after `cargo build --release`)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=${KILN_BIN:-$ROOT/target/release/kiln}
KEY=browser-test-key
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
[ -x "$BIN" ] || cargo build --release

if [ ! -x "$CHROMIUM" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    else
        echo "no $CHROMIUM: install Debian's chromium (apt-get install chromium) or set CHROMIUM"; exit 1
    fi
fi
# playwright-core needs node >= 20 (and `node --test`); Debian 12's own nodejs is 18.
if ! command -v npm >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null || true
fi
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$NODE_MAJOR" -lt 20 ] || ! command -v npm >/dev/null; then
    echo "tests/browser needs node >= 20 and npm (found node major $NODE_MAJOR)"; exit 1
fi
(cd tests/browser && timeout 120 npm ci --no-audit --no-fund --loglevel=error)

SHOT_DIR=${SHOT_DIR:-$(mktemp -d)}
status=0
# start_server / stop_server
source tests/demo_server.sh
start_server --max-size 128
(cd tests/browser && KILN_URL="http://127.0.0.1:$PORT" KILN_KEY="$KEY" SHOT_DIR="$SHOT_DIR" CHROMIUM="$CHROMIUM" \
    timeout 180 node --test --test-timeout=90000 page.test.mjs) || status=1
stop_server
trap - EXIT
rm -f "$LOG"
echo "screenshots: $SHOT_DIR"
exit $status

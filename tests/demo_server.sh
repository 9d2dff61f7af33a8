# Sourced by tests/sdk/run.sh and tests/browser/run.sh: `kiln serve` on the tiny demo models.
# The caller sets ROOT, BIN, KEY and status=0. start_server ARGS... starts it on a free port
# with the key and returns once /health answers (sets PORT and PID; output in $LOG);
# stop_server sends SIGTERM, which must make it exit 0 (else status=1 and the log's tail).
# A server still running when the script exits is killed.
LOG=$(mktemp)
PID=""
cleanup() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; fi; }
trap cleanup EXIT

start_server() {
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$BIN" serve --offline --port "$PORT" --models-dir "$ROOT/models" --api-key "$KEY" --preload "$@" >"$LOG" 2>&1 &
    PID=$!
    for _ in $(seq 1 120); do
        if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "http://127.0.0.1:$PORT/health" 2>/dev/null; then return 0; fi
        kill -0 "$PID" 2>/dev/null || { cat "$LOG"; echo "kiln serve died"; exit 1; }
        sleep 1
    done
    cat "$LOG"; echo "kiln serve not ready"; exit 1
}

stop_server() {
    kill -TERM "$PID"
    if wait "$PID"; then echo "ok   kiln serve exited 0 on SIGTERM"; else echo "FAIL kiln serve exit status $? on SIGTERM"; status=1; fi
    PID=""
    if [ $status -ne 0 ]; then echo "--- server log (tail)"; tail -40 "$LOG"; fi
}

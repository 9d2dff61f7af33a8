#!/usr/bin/env bash
# The one GPU check (issue 27), run on the lent GPU machine from the repo root with what
# benches/gpu/pack.sh carried: .gpu (kiln and the bench examples in one binary, built with
# --features cuda,wgpu, stripped, xz), .whl (diffusers, min-dalle and the pure-Python needs the machine
# lacks), .gl (the Vulkan loader). Everything it measures lands in $OUT (at most 8 files come
# back): summary.txt (every table), doctor-*.json, compare-*.json, logs.tgz.
#
#   bash benches/gpu/run.sh                   # on the GPU machine: cuda, then wgpu
#   bash benches/gpu/run.sh --device cpu --tiny   # dry run here: tiny models, CPU
#   GPU_STAGES="sd serve" bash benches/gpu/run.sh     # a rerun of some stages (doctor sd serve dalle)
#
# Stages, in order of what matters most, each bounded by `timeout` and all by GPU_BUDGET_S
# (default 530 s: the lease allows 600 s a command and 15 min in all, with a rerun):
#   nvidia-smi; kiln doctor (tiny parity, f32 and f16) on cuda and on wgpu, while the full-size
#   random weights are drawn in the background; the harness (image, unet, vae: kiln cuda f16 vs
#   diffusers fp16 on the same GPU); one real request through `kiln serve`; the DALL·E Mini/Mega
#   harness rows.
set -uo pipefail
cd "$(dirname "$0")/../.."

DEVICES="cuda wgpu"
TINY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICES="$2"; shift 2 ;;
        --tiny) TINY=1; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
MAIN=${DEVICES%% *}
STAGES=" ${GPU_STAGES:-doctor sd serve dalle} "
want() { [[ "$STAGES" == *" $1 "* ]]; }
OUT=${OUT:-.cache/gpu-out}
LOGS=/tmp/kiln-gpu-logs
BIN=/tmp/kiln-gpu/release/examples
PY=${KILN_GPU_PYTHON:-python3}
BUDGET=${GPU_BUDGET_S:-530}
START=$(date +%s)
mkdir -p "$OUT" "$LOGS" "$BIN"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

say() { echo "$*" | tee -a "$SUMMARY"; }
# The harness's printed table (from its heading on), or the log's end when it stopped short.
table() {
    if grep -q '^kiln \(on\|vs\) ' "$LOGS/$1.log"; then
        sed -n '/^kiln \(on\|vs\) /,$p' "$LOGS/$1.log" >>"$SUMMARY"
    else
        tail -30 "$LOGS/$1.log" >>"$SUMMARY"
    fi
}
left() { echo $((BUDGET - ($(date +%s) - START))); }
# stage NAME LIMIT_S CMD...: runs CMD under the smaller of LIMIT_S and the budget left, its
# output in $LOGS/NAME.log; one line in the summary with its exit status and seconds.
stage() {
    local name=$1 limit=$2 t0 rc
    shift 2
    local l; l=$(left)
    [ "$l" -lt "$limit" ] && limit=$l
    if [ "$limit" -lt 15 ]; then say "== $name: skipped (budget spent)"; return 1; fi
    t0=$(date +%s)
    timeout --kill-after=5 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    say "== $name: rc=$rc in $(($(date +%s) - t0)) s (limit $limit s)"
    return $rc
}

# --- set-up: binaries, wheels, loaders, CUDA libraries ---------------------------------
KIT=.gpu/gpu_kit.xz
[ -e "$KIT" ] || { say "no $KIT: run benches/gpu/pack.sh first"; exit 1; }
"$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$KIT" /tmp/kiln-gpu/gpu_kit
chmod +x /tmp/kiln-gpu/gpu_kit
# examples/gpu_kit.rs is kiln, sd15_bench or dalle_bench by the name it runs under.
ln -sf /tmp/kiln-gpu/gpu_kit /tmp/kiln-gpu/release/kiln
for name in sd15_bench dalle_bench; do ln -sf /tmp/kiln-gpu/gpu_kit "$BIN/$name"; done
KILN=/tmp/kiln-gpu/release/kiln
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >"$LOGS/pip.log" 2>&1 || say "wheel install failed (see logs/pip.log)"
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ "$MAIN" != cpu ] && ! ldconfig -p | grep -q libvulkan.so.1 && ls .gl/*.deb >/dev/null 2>&1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}
fi
# cubecl loads the CUDA driver and NVRTC at run time (cudarc's dynamic loading): add every
# folder holding an NVRTC (CUDA toolkit, torch's nvidia wheels) to the loader's path.
# The driver's own folder first (libcuda.so; read-only there, /usr/local/nvidia).
[ -d /usr/local/nvidia/lib64 ] && LD_LIBRARY_PATH=/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
for lib in $(find /usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib /opt/torch/.venv/lib/python3*/site-packages/nvidia \
        -name 'libnvrtc.so*' 2>/dev/null | head -4); do
    LD_LIBRARY_PATH=$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
done
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}
export RUST_LOG=${RUST_LOG:-info}

say "kiln GPU check: devices '$DEVICES', tiny=$TINY, $(date -u +%FT%TZ), budget $BUDGET s"
say "$($KILN --version 2>&1)"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$SUMMARY"
fi
say "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"

# The full-size random weights (never committed) are drawn on the GPU while the parity checks
# run: SD 1.5 (folder + fp16 file) and DALL·E Mini/Mega (min-dalle .pt files). Helper measured
# on 2 CPU cores: SD 109 s, mini 48 s, mega 123 s; far less with 16 cores and cuda.
make_weights() {  # make_weights NAME CMD...: with --device cuda, again on the CPU if that fails
    local name=$1
    shift
    "$@" --device cuda >"$LOGS/$name-weights.log" 2>&1 || "$@" --device cpu >>"$LOGS/$name-weights.log" 2>&1
}
if [ "$TINY" = 1 ]; then
    SD=models/fixtures/sd15-tiny
    MINI=models/fixtures/dalle-tiny/mindalle/dalle_bart_tiny
    SIZE=64
    HARNESS=(--device "$MAIN" --size "$SIZE" --model "$SD" --mini "$MINI" --timed 1)
else
    SD=.cache/sd15-random
    SIZE=512
    HARNESS=(--device "$MAIN" --threads "$(nproc)")
    # Drawn once per machine: a rerun on the same (warm) machine finds them.
    if { want sd || want serve; } && [ ! -e "$SD/sd15-random-fp16.safetensors" ]; then
        (timeout 240 bash -c "$(declare -f make_weights); LOGS=$LOGS; make_weights sd15 $PY models/make_sd15_fixtures.py --full --threads $(nproc) --no-fp32-file --no-reload-check"; echo "sd15 weights rc=$?" >"$LOGS/sd15-weights.rc") &
    fi
    if want dalle && [ ! -e .cache/dalle-mega-random/vqgan/detoker.pt ]; then
        (timeout 300 bash -c "$(declare -f make_weights); LOGS=$LOGS; make_weights mini $PY models/make_dalle_fixtures.py full --model mini && make_weights mega $PY models/make_dalle_fixtures.py full --model mega"; echo "dalle weights rc=$?" >"$LOGS/dalle-weights.rc") &
    fi
fi

# --- 1. tiny-model parity against the committed references ------------------------------
want doctor && for dev in $DEVICES; do
    stage "doctor-$dev" 150 "$KILN" doctor --device "$dev" --json "$OUT/doctor-$dev.json"
    grep -v 'INFO' "$LOGS/doctor-$dev.log" >>"$SUMMARY"
done

# --- 2. SD 1.5: the harness, one request through the server ------------------------------
# Both weight jobs end first: they would share the GPU (its memory, as the harness reads it).
wait
say "$(cat "$LOGS"/*-weights.rc 2>/dev/null)"
REF=(--ref-python "$PY" --no-build)
export CARGO_TARGET_DIR=/tmp/kiln-gpu
want sd && stage compare-sd 170 "$PY" benches/compare.py "${HARNESS[@]}" "${REF[@]}" --only image,unet,vae --out "$OUT/compare-sd.json"
want sd && table compare-sd

serve_request() {
    local port=18573
    "$KILN" serve --device "$MAIN" --model "sd15=$SD" --offline --preload --port "$port" --max-queue 4 \
        >"$LOGS/kiln-serve.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 120); do
        "$KILN" probe ready --port "$port" >/dev/null 2>&1 && break
        kill -0 $pid 2>/dev/null || break
        sleep 1
    done
    "$PY" - "$port" "$SIZE" <<'PYEOF'
import base64, io, json, sys, time, urllib.request
port, size = sys.argv[1], int(sys.argv[2])
body = {"model": "sd15", "prompt": "a photograph of an astronaut riding a horse", "size": f"{size}x{size}",
        "num_inference_steps": 20, "scheduler": "ddim", "seed": 1, "response_format": "b64_json"}
for run in ("first (compiles kernels)", "second"):
    t0 = time.time()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/images/generations", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    out = json.load(urllib.request.urlopen(req, timeout=300))
    png = base64.b64decode(out["data"][0]["b64_json"])
    from PIL import Image
    im = Image.open(io.BytesIO(png))
    print(f"serve request {run}: {time.time() - t0:.2f} s, PNG {im.size[0]}x{im.size[1]} {im.mode}, {len(png)} bytes")
PYEOF
    local rc=$?
    kill -TERM $pid 2>/dev/null
    wait $pid
    return $rc
}
export -f serve_request
export KILN MAIN SD SIZE LOGS PY
if want serve; then
    stage serve 120 bash -c serve_request
    grep '^serve request' "$LOGS/serve.log" >>"$SUMMARY"
fi

# --- 3. DALL·E Mini and Mega: the harness -------------------------------------------------
if ! want dalle; then
    :
elif [ "$TINY" = 1 ]; then
    stage compare-dalle 120 "$PY" benches/compare.py "${HARNESS[@]}" "${REF[@]}" --only dalle-image --out "$OUT/compare-dalle.json"
else
    stage compare-dalle 170 "$PY" benches/compare.py "${HARNESS[@]}" "${REF[@]}" --only dalle-image,mega-step,mega-image --out "$OUT/compare-dalle.json"
fi
want dalle && table compare-dalle

say "total $(($(date +%s) - START)) s"
tar -czf "$OUT/logs.tgz" -C "$LOGS" .

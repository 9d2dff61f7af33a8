#!/usr/bin/env bash
# Packs what benches/gpu/run.sh needs on the GPU machine (no network, no Rust there): kiln and
# its timing examples as one release binary built here with --features cuda,wgpu, stripped
# and xz-compressed into .gpu/;
# the missing wheels into .whl/ (benches/gpu/wheels.sh); the Vulkan loader packages into .gl/
# (the device tool's README). All three are ignored (.gitignore) and travel as `carry`.
# Fails if the tracked and untracked-not-ignored files plus the carry exceed the 64 MiB a call
# may send. Then prints the call to make:
#
#   run(command="bash benches/gpu/run.sh", carry=[".gpu", ".whl", ".gl"], timeout_s=600)
#
# KILN_GPU_TARGET: the cargo target folder of this build (default target/gpu, apart from the
# CPU build's so that neither rebuilds the other). --no-download: binaries only (offline).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_PROFILE_RELEASE_DEBUG=false
TARGET=${KILN_GPU_TARGET:-target/gpu}
DOWNLOAD=1
[ "${1:-}" = --no-download ] && DOWNLOAD=0
LIMIT=$((64 << 20))

# One binary, `kiln` and the two timing examples by the name it runs under
# (examples/gpu_kit.rs): three would not fit the 64 MiB.
CARGO_TARGET_DIR=$TARGET cargo build --release --features cuda,wgpu --example gpu_kit
mkdir -p .gpu
rm -f .gpu/*.xz
strip -o .gpu/gpu_kit "$TARGET/release/examples/gpu_kit"
# xz -9: 109 MB stripped came to 17 MB for `kiln` alone; run.sh unpacks with Python's lzma
# (the GPU machine's image has Python, maybe not xz).
xz -9 -T2 -f .gpu/gpu_kit

if [ "$DOWNLOAD" = 1 ]; then
    bash benches/gpu/wheels.sh
    if [ ! -e .gl/.done ]; then
        mkdir -p .gl /tmp/amd64/partial
        o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
        # shellcheck disable=SC2086
        apt-get $o update -qq
        # shellcheck disable=SC2086
        (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
        touch .gl/.done
    fi
fi

# What one call sends: tracked and untracked-not-ignored files, and the carried folders.
tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
carry=$(du -cb .gpu .whl .gl 2>/dev/null | tail -1 | cut -f1)
total=$((tree + carry))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
du -b .gpu/* | while read -r size f; do echo "  $f $(mib "$size")"; done
echo "tree $(mib "$tree") + carry $(mib "$carry") (.gpu $(mib "$(du -cb .gpu | tail -1 | cut -f1)")) = $(mib "$total") of $(mib $LIMIT)"
if [ "$total" -gt "$LIMIT" ]; then
    echo "too large for one call: the device tool sends at most 64 MiB" >&2
    exit 1
fi
echo 'ready: run(command="bash benches/gpu/run.sh", carry=[".gpu", ".whl", ".gl"], timeout_s=600)'

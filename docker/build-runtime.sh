#!/usr/bin/env bash
# The runtime image of an export (docker/runtime.Dockerfile):
#
#   bash docker/build-runtime.sh EXPORT [TAG]        (TAG defaults to nnlab-runtime)
#
# EXPORT: a folder written by nnlab export (with model.onnx). Environment: BASE, the base image (default
# debian:bookworm-slim; any Debian-like image with apt); EXTRAS, the extras installed (default runtime,demo;
# runtime alone predicts and has no demo); DOCKER, the docker command (default docker). Needs uv (nnlab's dev
# environment has it) to build nnlab's wheel and write the pinned requirements from uv.lock.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: bash docker/build-runtime.sh EXPORT [TAG]" >&2
    exit 2
fi
model=$1
tag=${2:-nnlab-runtime}
extras=${EXTRAS:-runtime,demo}
docker=${DOCKER:-docker}
uv=${UV:-uv}
if [ ! -f "$model/nnlab.json" ] || [ ! -f "$model/model.onnx" ]; then
    echo "error: $model is not an ONNX export (no nnlab.json and model.onnx): make one with nnlab export CHECKPOINT" >&2
    exit 1
fi
context=$(mktemp -d "${TMPDIR:-/tmp}/nnlab-image.XXXXXX")
trap 'rm -rf "$context"' EXIT
"$uv" build --quiet --wheel --out-dir "$context/dist" "$root"
extra_args=()
IFS=, read -ra chosen <<< "$extras"
for extra in "${chosen[@]}"; do
    extra_args+=(--extra "$extra")
done
"$uv" export --quiet --frozen --project "$root" --no-dev --no-emit-project "${extra_args[@]}" \
    --format requirements-txt -o "$context/requirements.txt"
cp -r "$model" "$context/model"
# The machine's own trusted certificates (never in git: copied into a context outside the checkout).
mkdir "$context/certs"
find /usr/local/share/ca-certificates -maxdepth 1 -name '*.crt' -exec cp {} "$context/certs/" \; 2>/dev/null || true
cp "$root/docker/runtime.Dockerfile" "$context/Dockerfile"
"$docker" build --quiet --build-arg "BASE=${BASE:-debian:bookworm-slim}" -t "$tag" "$context"

#!/usr/bin/env bash
# The GPU check rehearsed here, without a GPU: `bash scripts/gpu_rehearsal.sh` builds a fresh Python 3.12
# environment holding only what the GPU machines' image holds of nnlab's needs (GPU_CHECK_WHEELHOUSE/image.txt, in the
# image's versions), then runs `GPU_CHECK_DEVICE=cpu bash scripts/gpu_check.sh` in it with the wheelhouse
# (default wheelhouse/, made by scripts/gpu_wheelhouse.sh), which the check installs with no index as it does on a
# GPU machine. A wheel missing from the wheelhouse, or a version that clashes with the image's, fails here.
#
#   bash scripts/gpu_rehearsal.sh             # GPU_CHECK_DATA and the other GPU_CHECK_* settings as gpu_check.sh's
#   bash scripts/gpu_rehearsal.sh --prepare   # only fetch the image's packages into uv's cache (needs the registry)
#
# With UV_OFFLINE=1 (the tests) the image's packages come from uv's cache alone. PYTHON312 names the interpreter;
# by default python3.12 on PATH, else pyenv's. The environment (about 5 GB) is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
wheelhouse=${GPU_CHECK_WHEELHOUSE:-wheelhouse}
if [ ! -f "$wheelhouse/image.txt" ]; then
    echo "no wheelhouse at $wheelhouse: bash scripts/gpu_wheelhouse.sh makes it" >&2
    exit 2
fi
python312=${PYTHON312:-}
if [ -z "$python312" ]; then
    for candidate in "$(command -v python3.12 || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12; do
        if [ -n "$candidate" ] && "$candidate" -c "" 2>/dev/null; then
            python312=$candidate
            break
        fi
    done
fi
if [ -z "$python312" ]; then
    echo "no Python 3.12 found (python3.12 on PATH or pyenv's): set PYTHON312" >&2
    exit 2
fi
if command -v uv >/dev/null; then uv=(uv); else uv=(python3 -m uv); fi
place=$(mktemp -d)
trap 'rm -rf "$place"' EXIT
"$python312" -m venv "$place/venv"
# Compiled now, as the image's are: where PYTHONDONTWRITEBYTECODE is set, every step would compile torch again.
"${uv[@]}" pip install --quiet --compile-bytecode --python "$place/venv/bin/python" --no-deps \
    --requirement "$wheelhouse/image.txt"
if [ "${1:-}" = --prepare ]; then
    exit 0
fi
GPU_CHECK_DEVICE=cpu GPU_CHECK_WHEELHOUSE="$wheelhouse" PYTHON="$place/venv/bin/python" bash scripts/gpu_check.sh

#!/usr/bin/env bash
# The wheels a GPU machine lacks, to carry there: `bash scripts/gpu_wheelhouse.sh [DIR]` (default wheelhouse/,
# git-ignored). The lent GPU machines reach no package registry; their image (scripts/gpu_image.txt) holds torch,
# Lightning, torchmetrics and most of the rest. DIR gets, for CPython 3.12 on x86-64 Linux (the machines' Python):
#
#   - a wheel of every package nnlab needs that the image lacks, in the version uv.lock pins (pip download, here),
#     but optuna-dashboard, a viewer that no step of the check runs;
#   - nnlab itself as a wheel (uv build);
#   - tested.txt: every package nnlab needs on Python 3.12, in the versions uv.lock pins (what the tests ran with),
#     which scripts/gpu_check.sh compares with what it finds there;
#   - image.txt: the image's share of them, in the image's versions where KINDS.md gives one, else uv.lock's: what
#     the rehearsal without a GPU (tests/test_gpu_check.py) installs as the image.
#
# scripts/gpu_check.sh installs DIR with no index before its steps (GPU_CHECK_WHEELHOUSE). DIR is built beside
# itself and renamed into place, so an interrupted build leaves the last complete one.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-wheelhouse}
if command -v uv >/dev/null; then uv=(uv); else uv=(python3 -m uv); fi
tmp="$dir.partial"
rm -rf "$tmp"
mkdir -p "$tmp"
"${uv[@]}" export --frozen --no-dev --extra train --no-hashes --no-emit-project --no-annotate --no-header \
    > "$tmp/locked.txt"
# Each requirement's markers for the GPU machines' Python; the image's packages set apart.
"${uv[@]}" run --frozen python - "$tmp" scripts/gpu_image.txt <<'EOF'
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tmp, image_list = Path(sys.argv[1]), Path(sys.argv[2])
gpu_python = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
    "platform_machine": "x86_64", "os_name": "posix", "extra": "",
}
image = {}  # name: the version the image has, where known
for line in image_list.read_text().splitlines():
    if line.strip() and not line.startswith("#"):
        name, _, known = line.strip().partition("==")
        image[canonicalize_name(name)] = known
# optuna-dashboard (and bottle, its web server): a viewer a user starts, which no step of the check runs; 4 MB.
# ONNX, ONNX Runtime and onnxscript (and what only they need): nnlab export, which no step of the check runs; 36 MB,
# past what a call to the GPU machine carries beside the rest (the image has versions of its own of some).
not_carried = {"optuna-dashboard", "bottle", "onnx", "onnxruntime", "onnxscript", "onnx-ir", "ml-dtypes", "flatbuffers"}
tested, carried, there = [], [], []
for line in (tmp / "locked.txt").read_text().splitlines():
    req = Requirement(line)
    if req.marker is None or req.marker.evaluate(gpu_python):
        pin = f"{canonicalize_name(req.name)}{req.specifier}"
        tested.append(pin)
        name = canonicalize_name(req.name)
        if name in image:
            there.append(f"{name}=={image[name]}" if image[name] else pin)
        elif name not in not_carried:
            carried.append(pin)
(tmp / "tested.txt").write_text("\n".join(sorted(tested)) + "\n")
(tmp / "carried.txt").write_text("\n".join(sorted(carried)) + "\n")
(tmp / "image.txt").write_text("\n".join(sorted(there)) + "\n")
print(f"{len(tested)} packages for Python 3.12; {len(carried)} of them, not in the GPU image, to carry")
EOF
rm "$tmp/locked.txt"
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
# One package at a time: a package published only as source (antlr4-python3-runtime 4.9.3, Hydra's parser) is built
# into a wheel here, which must then be pure Python (py3-none-any) to serve Python 3.12 there.
while read -r pin; do
    if ! python3 -m pip download -qq --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            "${platforms[@]}" --dest "$tmp" "$pin" 2>/dev/null; then
        python3 -m pip wheel -qq --no-deps --wheel-dir "$tmp/built" "$pin"
        for wheel in "$tmp"/built/*.whl; do
            case $wheel in
                *-none-any.whl) mv "$wheel" "$tmp/" ;;
                *) echo "$pin: no wheel for CPython 3.12 on x86-64 Linux, and it is not pure Python" >&2; exit 1 ;;
            esac
        done
    fi
done < "$tmp/carried.txt"
rm -rf "$tmp/built"
"${uv[@]}" build --quiet --wheel --out-dir "$tmp" .
rm -rf "$dir"
mv "$tmp" "$dir"
echo "$dir: $(find "$dir" -name '*.whl' | wc -l) wheels, $(du -sh "$dir" | cut -f1)"

#!/usr/bin/env bash
# The data a GPU check carries: `bash scripts/gpu_data.sh [DIR]` (default gpu_data/, git-ignored), from the real
# datasets in GPU_CHECK_SOURCE (default ../shared/datasets: MNIST/raw/, aclImdb_labeled.tar.gz,
# speech_commands_fsdd.tar.gz). Everything a call to a GPU machine takes along fits in 64 MiB, the wheelhouse
# (scripts/gpu_wheelhouse.sh) included, so DIR holds:
#
#   - MNIST/raw/*.gz: all of MNIST, its four files compressed as downloaded (nnlab reads them); time to 99% needs
#     the whole training set;
#   - aclImdb_labeled.tar.gz: 1,000 training and 500 test reviews of each label (the first by file name);
#   - speech_commands_fsdd.tar.gz: of each speaker and digit, utterance 0 (the test list), 5 (the validation list) and
#     10-13 (training): 360 clips with the lists that name them (and _background_noise_/, where the set has one).
#
# The same names as the full datasets, and overrides.env with what the subsets need (IMDB's validation split: 250
# reviews): scripts/gpu_check.sh reads DIR as GPU_CHECK_DATA. DIR is built beside itself and renamed into place.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-gpu_data}
source=${GPU_CHECK_SOURCE:-../shared/datasets}
for need in MNIST/raw/train-images-idx3-ubyte aclImdb_labeled.tar.gz speech_commands_fsdd.tar.gz; do
    if [ ! -f "$source/$need" ]; then
        echo "gpu_data: $source/$need not found: GPU_CHECK_SOURCE names the folder of the real datasets" >&2
        exit 2
    fi
done
tmp="$dir.partial"
rm -rf "$tmp"
mkdir -p "$tmp/MNIST/raw" "$tmp/unpacked"
for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    gzip -9 -n -c "$source/MNIST/raw/$name" > "$tmp/MNIST/raw/$name.gz"
done
tar -xzf "$source/aclImdb_labeled.tar.gz" -C "$tmp/unpacked"
tar -xzf "$source/speech_commands_fsdd.tar.gz" -C "$tmp/unpacked"
python3 - "$tmp/unpacked" <<'EOF'
import sys
from pathlib import Path

root = Path(sys.argv[1])
keep_reviews = {"train": 1000, "test": 500}
with open(root / "reviews.txt", "w") as listing:
    for split, n in keep_reviews.items():
        for label in ("pos", "neg"):
            for path in sorted((root / "aclImdb" / split / label).glob("*.txt"))[:n]:
                listing.write(f"{path.relative_to(root)}\n")
speech = root / "SpeechCommands" / "speech_commands_v0.02"
keep = {0, 5, 10, 11, 12, 13}  # the test list's utterance 0, the validation list's 5, training's 10-13
clips = sorted(
    p.relative_to(speech).as_posix() for p in speech.glob("*/*_nohash_*.wav") if int(p.stem.rsplit("_", 1)[1]) in keep
)
noise = sorted(p.relative_to(speech).as_posix() for p in speech.glob("_background_noise_/*"))
with open(root / "clips.txt", "w") as listing:
    for clip in clips + noise:
        listing.write(f"SpeechCommands/speech_commands_v0.02/{clip}\n")
    for name in ("validation_list.txt", "testing_list.txt"):
        listed = [line for line in (speech / name).read_text().splitlines() if line in set(clips)]
        (speech / name).write_text("".join(f"{line}\n" for line in listed))
        listing.write(f"SpeechCommands/speech_commands_v0.02/{name}\n")
EOF
(cd "$tmp/unpacked" && tar --sort=name --mtime=@0 --owner=0 --group=0 -cf - -T reviews.txt | gzip -9 -n) \
    > "$tmp/aclImdb_labeled.tar.gz"
(cd "$tmp/unpacked" && tar --sort=name --mtime=@0 --owner=0 --group=0 -cf - -T clips.txt | gzip -9 -n) \
    > "$tmp/speech_commands_fsdd.tar.gz"
rm -rf "$tmp/unpacked"
echo "IMDB_OVERRIDES=data.val_size=250" > "$tmp/overrides.env"  # of 2,000 training reviews (the default: 2,500)
rm -rf "$dir"
mv "$tmp" "$dir"
echo "$dir: $(du -sh "$dir" | cut -f1)"

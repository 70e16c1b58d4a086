#!/usr/bin/env bash
# Every GPU path the docs document, in one command, in under 8 minutes on one GPU:
#
#     bash scripts/gpu_check.sh                        # on a machine with a CUDA GPU
#     GPU_CHECK_DEVICE=cpu bash scripts/gpu_check.sh   # the same steps on the CPU, shortened: checks the script
#
# 1-4. each of the four models for one short epoch, trainer=gpu (bf16, the data held on the GPU), on real data;
# 5.   trainer=ddp with trainer.devices=1 (DDP's process group and sampler on one GPU);
# 6.   a 2-trial sweep through hydra/launcher=parallel on one GPU;
# 7.   scripts/benchmark.py for the MLP and the CNN (ratio to a plain PyTorch loop, training GFLOP/s and the share of
#      the GPU's matmul peak), then the training time to 99% test accuracy of the default CNN and of
#      experiment=mnist_speedrun (3 seeds each); the same throughput and utilisation for the LSTM and the keyword
#      spotter (30 batches an epoch);
# 8.   python -m nnlab.predict on the CPU (CUDA_VISIBLE_DEVICES="") from the LSTM's and the keyword spotter's
#      checkpoints that the GPU trained; then inference of the four checkpoints (benchmark.py --inference: latency at
#      batch 1, throughput at batch 64, eager and compiled PyTorch on the GPU, their exports in ONNX Runtime);
# 9.   model.compile=true against the plain CNN on the GPU (benchmark.py --compare: first epoch with compilation,
#      steady samples/s);
# 10.  this machine's CPU: whether it has bf16 instructions, and trainer=cpu_bf16 against trainer=cpu for the MLP and
#      the CNN (benchmark.py --compare, on the CPU).
#
# Results go to one JSON file, GPU_CHECK_OUT (default outputs/gpu_check/results.json), rewritten after every step (a
# check stopped at a time limit leaves the steps it finished): per step its command, exit code, seconds, the end of
# its log and its figures. The first failing step stops the script with exit code 1 and its name. Logs and runs go to
# GPU_CHECK_LOGS (default: GPU_CHECK_OUT's folder).
#
# A machine without a package registry: GPU_CHECK_WHEELHOUSE names a folder made by scripts/gpu_wheelhouse.sh. Its
# wheels are installed first with no index (pip --no-index --no-deps: what the machine has stays), then every package
# nnlab was tested with is compared with the version found (step `versions`: each difference named). The steps run
# this checkout's src/ first on PYTHONPATH either way.
#
# Data: GPU_CHECK_DATA (default ../shared/datasets) holding MNIST/raw/, and aclImdb/ and SpeechCommands/ (or the
# archives aclImdb_labeled.tar.gz and speech_commands_fsdd.tar.gz, unpacked once into GPU_CHECK_WORK); or each
# dataset's folder on its own: MNIST_DIR, IMDB_DIR, SPEECH_DIR (the folders given as paths.data_dir), with overrides
# that such data needs in MNIST_OVERRIDES, IMDB_OVERRIDES, SPEECH_OVERRIDES (space-separated; e.g. data.val_size=100
# for a small MNIST). A file overrides.env in GPU_CHECK_DATA (scripts/gpu_data.sh writes one for its subsets) sets
# those that the environment does not.
set -euo pipefail
cd "$(dirname "$0")/.."
device=${GPU_CHECK_DEVICE:-gpu}
out=${GPU_CHECK_OUT:-outputs/gpu_check/results.json}
logs=${GPU_CHECK_LOGS:-$(dirname "$out")}
work=${GPU_CHECK_WORK:-$logs/data}
data=${GPU_CHECK_DATA:-../shared/datasets}
python=${PYTHON:-python}
wheelhouse=${GPU_CHECK_WHEELHOUSE:-}
mkdir -p "$logs" "$work" "$(dirname "$out")"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -f "$data/overrides.env" ]; then
    while IFS='=' read -r key value; do
        case $key in
            MNIST_OVERRIDES | IMDB_OVERRIDES | SPEECH_OVERRIDES) [ -n "${!key:-}" ] || printf -v "$key" '%s' "$value" ;;
        esac
    done < "$data/overrides.env"
fi
export WANDB_MODE=${WANDB_MODE:-offline}
steps=$logs/steps.jsonl
: > "$steps"

if [ "$device" = gpu ]; then
    trainer=(trainer=gpu); ddp=(trainer=ddp trainer.devices=1)
    short=(trainer.max_epochs=1)
    bench=(--rounds 3 --seeds 3)
    bench_seq=(--rounds 2 --batches 30)
    compiled=(--models cnn --rounds 2)
    cpu_bench=(--models mlp cnn --rounds 2 --batches 50)
    inference=(mlp cnn lstm speech_rnn); inference_args=()
    target=0.99
    gpu_name=$("$python" -c "import torch, sys; print(torch.cuda.get_device_name()) if torch.cuda.is_available() else sys.exit('no CUDA GPU: GPU_CHECK_DEVICE=cpu checks the steps on the CPU')")
elif [ "$device" = cpu ]; then
    trainer=(trainer=cpu); ddp=(trainer=ddp_cpu trainer.devices=1)
    short=(trainer.max_epochs=1 trainer.limit_train_batches=20 trainer.limit_val_batches=2 trainer.limit_test_batches=2)
    bench=(--rounds 1 --seeds 1 trainer.limit_train_batches=20 trainer.limit_val_batches=1)
    bench_seq=(--rounds 1 --batches 2)
    compiled=(--models mlp --rounds 1 --batches 5)
    cpu_bench=(--models mlp --rounds 1 --batches 5)
    inference=(mlp); inference_args=(--seconds 0.1 --no-compile)
    target=${GPU_CHECK_TARGET:-0.5}  # the CPU's check: the step runs and reports, not the GPU's figure
    export CUDA_VISIBLE_DEVICES=""
    gpu_name=""
else
    echo "GPU_CHECK_DEVICE=$device: use gpu (default) or cpu" >&2
    exit 2
fi
target=${GPU_CHECK_TARGET:-$target}

unpack() {  # unpack <archive> <folder it holds>: into $work, once
    if [ ! -d "$work/$2" ]; then
        tar -xzf "$data/$1" -C "$work"
    fi
    echo "$work"
}
mnist=${MNIST_DIR:-$data}
imdb=${IMDB_DIR:-$([ -d "$data/aclImdb" ] && echo "$data" || unpack aclImdb_labeled.tar.gz aclImdb)}
speech=${SPEECH_DIR:-$([ -d "$data/SpeechCommands" ] && echo "$data" || unpack speech_commands_fsdd.tar.gz SpeechCommands)}
read -r -a mnist_extra <<< "${MNIST_OVERRIDES:-}"
read -r -a imdb_extra <<< "${IMDB_OVERRIDES:-}"
read -r -a speech_extra <<< "${SPEECH_OVERRIDES:-}"
mnist_args=(paths.data_dir="$mnist" "${mnist_extra[@]}")

step() {  # step <name> <command...>: run it, log it, record it; stop at the first failure
    local name=$1; shift
    local log=$logs/$name.log start end rc=0
    echo "== $name: $*"
    start=$(date +%s.%N)
    "$@" > "$log" 2>&1 || rc=$?
    end=$(date +%s.%N)
    "$python" - "$name" "$rc" "$start" "$end" "$log" "$@" >> "$steps" <<'EOF'
import json, sys
name, rc, start, end, log, *cmd = sys.argv[1:]
print(json.dumps({"step": name, "command": cmd, "exit_code": int(rc), "seconds": round(float(end) - float(start), 1),
                  "log": log}))
EOF
    finish
    if [ "$rc" != 0 ]; then
        tail -n 20 "$log" >&2
        echo "gpu_check: step $name failed (exit code $rc); its log: $log" >&2
        exit 1
    fi
}

finish() {  # the steps so far, with each run's metrics, into one JSON file (written whole, then renamed)
    "$python" - "$steps" "$out" "$device" "$gpu_name" <<'EOF'
import json, os, sys
from pathlib import Path
steps_file, out, device, gpu = sys.argv[1:]
steps = [json.loads(line) for line in Path(steps_file).read_text().splitlines()]
for s in steps:
    run_dir = next((a.split("=", 1)[1] for a in s["command"] if a.startswith("hydra.run.dir=")), None)
    if run_dir and (Path(run_dir) / "metrics.json").is_file():
        m = json.loads((Path(run_dir) / "metrics.json").read_text())
        s["metrics"] = {k: m[k] for k in ("test/acc", "test/loss", "train/samples_per_s", "epochs", "wall_time_s")
                        if k in m}
    log = Path(s["log"]).read_text(errors="replace") if Path(s["log"]).is_file() else ""
    if s["step"].startswith("benchmark"):
        s["table"] = [line for line in log.splitlines() if line.startswith("|")]
        s["time_to_accuracy"] = [line for line in log.splitlines() if line.startswith("| `")]
    if s["step"] == "sweep_trials":
        import csv
        s["trials"] = list(csv.DictReader(open(s["command"][-1])))
    if s["step"].startswith("predict") or s["step"] in ("cpu_bf16", "versions"):
        s["output"] = log.splitlines()[-60 if s["step"] == "versions" else -6:]
    s["log_tail"] = log.splitlines()[-15:]
result = {"device": device, "gpu": gpu or None, "passed": all(s["exit_code"] == 0 for s in steps), "steps": steps}
Path(out + ".partial").write_text(json.dumps(result, indent=2))
os.replace(out + ".partial", out)
EOF
}

if [ -n "$wheelhouse" ]; then
    step install "$python" -m pip install --no-index --no-deps --no-cache-dir --disable-pip-version-check \
        "$wheelhouse"/*.whl
    step versions "$python" -c "$(cat <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement

same, differ = 0, []
for line in open(sys.argv[1]).read().split():
    req = Requirement(line)
    tested = next(iter(req.specifier)).version
    try:
        found = version(req.name)
    except PackageNotFoundError:
        found = None
    if found == tested:
        same += 1
    else:
        differ.append(f"{req.name}: {found or 'not installed'} here, {tested} tested")
print("\n".join(differ))
print(f"{same} of {same + len(differ)} packages as tested; {len(differ)} differ (named above)")
EOF
)" "$wheelhouse/tested.txt"
fi

runs=$logs/runs
rm -rf "$runs"
train() {  # train <name> <overrides...>
    local name=$1; shift
    step "$name" "$python" train.py "$@" hydra.run.dir="$runs/$name"
}
train mlp model=mlp "${trainer[@]}" "${short[@]}" "${mnist_args[@]}"
train cnn model=cnn "${trainer[@]}" "${short[@]}" "${mnist_args[@]}"
train lstm model=lstm "${trainer[@]}" "${short[@]}" paths.data_dir="$imdb" paths.cache_dir="$work/cache" \
    "${imdb_extra[@]}"
train speech_rnn model=speech_rnn "${trainer[@]}" "${short[@]}" paths.data_dir="$speech" paths.cache_dir="$work/cache" \
    "${speech_extra[@]}"
step benchmark "$python" scripts/benchmark.py --models mlp cnn --data-dir "$mnist" --target "$target" "${bench[@]}" \
    "${mnist_extra[@]}"
step benchmark_sequences "$python" scripts/benchmark.py --models lstm --no-time-to-acc "${bench_seq[@]}" \
    paths.data_dir="$imdb" paths.cache_dir="$work/cache" "${imdb_extra[@]}"
step benchmark_speech "$python" scripts/benchmark.py --models speech_rnn --no-time-to-acc "${bench_seq[@]}" \
    paths.data_dir="$speech" paths.cache_dir="$work/cache" "${speech_extra[@]}"
step predict_text env CUDA_VISIBLE_DEVICES= "$python" -m nnlab.predict "$runs/lstm/checkpoints/best.ckpt" \
    "A gripping, beautifully acted film." "Two hours I will never get back."
step predict_audio env CUDA_VISIBLE_DEVICES= "$python" -m nnlab.predict "$runs/speech_rnn/checkpoints/best.ckpt" \
    "$(find "$speech" -name '*.wav' -path '*nohash*' | sort | head -n 1)"
inference_checkpoints=()
for name in "${inference[@]}"; do
    inference_checkpoints+=("$runs/$name/checkpoints/best.ckpt")
done
step benchmark_inference "$python" scripts/benchmark.py --inference "${inference_checkpoints[@]}" "${inference_args[@]}"
train ddp model=cnn "${ddp[@]}" "${short[@]}" "${mnist_args[@]}"
step sweep "$python" train.py -m hydra/launcher=parallel model=mlp "${trainer[@]}" "${short[@]}" "${mnist_args[@]}" \
    model.lr=1e-3,3e-3 paths.log_dir="$runs/sweep" hydra.sweeper.study_name=gpu_check
step sweep_trials "$python" -c "import csv, sys; rows = list(csv.DictReader(open(sys.argv[1])))
sys.exit(None if [r['state'] for r in rows] == ['complete'] * 2 else f'trials: {rows}')" \
    "$runs/sweep/sweeps/gpu_check/summary.csv"
step benchmark_compile "$python" scripts/benchmark.py --data-dir "$mnist" "${compiled[@]}" "${mnist_extra[@]}" \
    --compare model.compile=false model.compile=true
step cpu_bf16 "$python" -c "from nnlab.cpu import cpu_has_bf16, cpu_name; print(cpu_name(), 'bf16:', cpu_has_bf16())"
step benchmark_cpu_bf16 env CUDA_VISIBLE_DEVICES= "$python" scripts/benchmark.py --data-dir "$mnist" "${cpu_bench[@]}" \
    "${mnist_extra[@]}" --compare trainer=cpu trainer=cpu_bf16
echo "results: $out"
echo "gpu_check: every step passed ($device)"

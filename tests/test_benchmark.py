"""scripts/benchmark.py runs end to end on the tests' small data (the figures are the docs/performance.md's, measured
with nothing else running; here only that the script works and prints its tables). The LSTM's and the keyword
spotter's benchmark run in the GPU check's rehearsal (tests/test_gpu_check.py), on the same data."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def benchmark(data_dir, model: str, *args: str, time_to_acc: bool = False) -> str:
    """`python scripts/benchmark.py --data-dir <data_dir> --models <model> --rounds 1 [--no-time-to-acc] args...`
    (after the option that takes several values); its output."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "benchmark.py"),
            "--data-dir",
            str(data_dir),
            "--models",
            model,
            "--rounds",
            "1",
            *([] if time_to_acc else ["--no-time-to-acc"]),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WANDB_MODE": "offline"},
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_benchmark_script_runs(mnist_dir):
    recipe = "model=mlp trainer.max_epochs=4"
    out = benchmark(
        mnist_dir,
        "mlp",
        "data.val_size=100",
        "--bare",
        "--time-to-acc",
        recipe,
        "--seeds",
        "1",
        "--target",
        "0.5",
        time_to_acc=True,
    )
    assert "| mlp | 128 |" in out and "mlp: bare Lightning against the plain loop, median of the rounds" in out
    # Training FLOPs per sample of the default MLP, 784-1024-1024-10: forward 2 x (784 + 1024 + 10) x 1024 FLOPs,
    # the weights' gradients as many, the inputs' gradients of the second and third layer 2 x (1024 + 10) x 1024:
    # 9.56 MFLOP; then its share of the matmul peak measured in the same run.
    usage = next(line for line in out.splitlines() if line.startswith("| mlp |") and "(fp32)" in line)
    cells = [c.strip() for c in usage.split("|")[1:-1]]
    assert cells[1] == "9.6" and cells[-1].endswith("%") and "matmul peak: fp32" in out
    # The recipe's time to the target, measured in `python train.py` (nnlab.callbacks.StopAtTestAccuracy)
    row = next(line for line in out.splitlines() if line.startswith(f"| `{recipe}` |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1:3] == ["1-1", "1 of 1"] and cells[3].endswith(" s"), row


def test_benchmark_breaks_a_sweep_trials_fixed_cost_into_its_phases(mnist_dir):
    out = benchmark(mnist_dir, "mlp", "--trial-overhead", "2", "data.val_size=100")
    assert "2 trials of one training batch" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "phase" not in line]
    seconds = {what.strip().strip("*"): float(value.strip().strip("*")) for what, value in rows}
    startup = seconds.pop("start-up: the sweeper's launch to the end of the first training step")
    wind_down = seconds.pop("wind-down: the end of the last training step to the sweeper holding the result")
    assert all(v >= 0 for v in seconds.values()) and startup > 0 and wind_down > 0
    # two trials: each median is a mean, so the phases add up to the totals (to the printed rounding)
    phases = list(seconds.values())
    assert abs(sum(phases[:7]) - startup) < 0.05 and abs(sum(phases[7:10]) - wind_down) < 0.05


def test_start_time_measures_the_launch_to_the_first_training_step(mnist_dir, tmp_path):
    command = (f"python train.py model=mlp trainer.max_epochs=1 trainer.limit_train_batches=2 logger=csv "
               f"paths.data_dir={mnist_dir} hydra.run.dir={tmp_path / 'run'} data.val_size=100")  # fmt: skip
    on_path = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # `python`
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "start_time.py"), "--runs", "1", "--threads", "1", command],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=on_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| `python train.py"))
    median = float(row.split("|")[2].strip().removesuffix(" s"))
    assert 0 < median < 300


def test_benchmark_times_a_checkpoints_inference_in_onnx_runtime_eager_and_compiled_pytorch():
    """--inference: the export (ONNX Runtime), the checkpoint's model eager and under torch.compile, at batch 1 and
    64, in one table."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--inference",
         str(ROOT / "tests" / "fixtures" / "mlp-0.1.0.ckpt"), "--seconds", "0.2"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| mlp-0.1.0.ckpt |")]
    engines = [row[2] for row in rows]
    assert engines == ["onnxruntime (CPU)", "eager PyTorch (cpu)", "torch.compile (cpu)"], proc.stdout
    for row in rows:
        assert float(row[4]) > 0 and float(row[6].replace(",", "")) > 0 and row[5].endswith("x")

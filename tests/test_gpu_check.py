"""scripts/gpu_check.sh in its CPU mode, on the tests' small data: every step it runs on a GPU runs and reports."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.test_train import TINY, TINY_SPEECH, TINY_TEXT

pytestmark = pytest.mark.slow


def test_the_gpu_check_runs_every_step_on_the_cpu(tmp_path, mnist_dir, imdb_dir, speech_dir):
    out = tmp_path / "check" / "results.json"
    env = {
        **os.environ,
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_OUT": str(out),
        "PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT),
        "MNIST_DIR": str(mnist_dir),
        "IMDB_DIR": str(imdb_dir),
        "SPEECH_DIR": str(speech_dir),
        "MNIST_OVERRIDES": " ".join(TINY),
        "IMDB_OVERRIDES": " ".join(TINY_TEXT),
        "SPEECH_OVERRIDES": " ".join(TINY_SPEECH),
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gpu_check: every step passed (cpu)" in proc.stdout
    result = json.loads(out.read_text())
    steps = {s["step"]: s for s in result["steps"]}
    assert result["passed"] and list(steps) == [
        "mlp",
        "cnn",
        "lstm",
        "speech_rnn",
        "ddp",
        "sweep",
        "sweep_trials",
        "benchmark",
        "benchmark_sequences",
        "benchmark_speech",
        "predict_text",
        "predict_audio",
        "benchmark_compile",
        "cpu_bf16",
        "benchmark_cpu_bf16",
    ]
    assert any("`model.compile=true`" in row for row in steps["benchmark_compile"]["table"])
    assert any("`trainer=cpu_bf16`" in row for row in steps["benchmark_cpu_bf16"]["table"])
    assert "bf16:" in steps["cpu_bf16"]["output"][-1]
    for name in ("mlp", "cnn", "lstm", "speech_rnn", "ddp"):
        assert steps[name]["metrics"]["epochs"] == 1 and 0 <= steps[name]["metrics"]["test/acc"] <= 1
    assert [t["state"] for t in steps["sweep_trials"]["trials"]] == ["complete", "complete"]
    # the throughput table, then training GFLOP/s against the matmul peak, for each model
    models = [row.split("|")[1].strip() for row in steps["benchmark"]["table"] if not row.startswith("| `")]
    assert [m for m in models if m in ("mlp", "cnn")] == ["mlp", "cnn", "mlp", "cnn"]
    recipes = [row.split("|")[1].strip() for row in steps["benchmark"]["time_to_accuracy"]]
    assert recipes == ["`model=cnn`", "`experiment=mnist_speedrun`"]
    for name in ("benchmark_sequences", "benchmark_speech"):
        assert any("(fp32)" in row for row in steps[name]["table"])
    assert len(steps["predict_text"]["output"]) == 2 and steps["predict_audio"]["output"][0].endswith(".wav")


def test_the_gpu_check_stops_at_the_first_failing_step_and_names_it(tmp_path):
    out = tmp_path / "check" / "results.json"
    env = {
        **os.environ,
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_OUT": str(out),
        "PYTHON": sys.executable,
        "MNIST_DIR": str(tmp_path / "nothing"),
        "IMDB_DIR": str(tmp_path),
        "SPEECH_DIR": str(tmp_path),
        "MNIST_OVERRIDES": "data.download=false",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert (
        proc.returncode == 1
        and f"gpu_check: step mlp failed (exit code 1); its log: {out.parent}/mlp.log" in proc.stderr
    )
    result = json.loads(out.read_text())
    assert not result["passed"] and [s["step"] for s in result["steps"]] == ["mlp"]
    assert Path(result["steps"][0]["log"]).is_file()

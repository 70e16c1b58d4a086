"""scripts/gpu_check.sh in its CPU mode, on the tests' small data: every step it runs on a GPU runs and reports. The
whole check is rehearsed as on a GPU machine: a fresh Python 3.12 environment of the GPU image's packages, nnlab and
the rest installed from the wheelhouse with no index (scripts/gpu_rehearsal.sh)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, TINY, TINY_SPEECH, TINY_TEXT

pytestmark = pytest.mark.slow

WHEELHOUSE = ROOT / "wheelhouse"


def test_the_gpu_check_rehearsed_in_the_gpu_image_runs_every_step_on_the_cpu(tmp_path, mnist_dir, imdb_dir, speech_dir):
    """The image's packages come from uv's cache (UV_OFFLINE: every process a test starts stays on this machine);
    .ci/run builds the wheelhouse and fills that cache first (`scripts/gpu_rehearsal.sh --prepare`)."""
    required = os.environ.get("NNLAB_REQUIRE_GPU_REHEARSAL")  # .ci/run: a skip would be a failure
    if not (WHEELHOUSE / "image.txt").is_file():
        message = "no wheelhouse/: bash scripts/gpu_wheelhouse.sh && bash scripts/gpu_rehearsal.sh --prepare"
        pytest.fail(message) if required else pytest.skip(message)
    out = tmp_path / "check" / "results.json"
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
        "UV_OFFLINE": "1",
        "GPU_CHECK_OUT": str(out),
        "GPU_CHECK_WHEELHOUSE": str(WHEELHOUSE),
        "MNIST_DIR": str(mnist_dir),
        "IMDB_DIR": str(imdb_dir),
        "SPEECH_DIR": str(speech_dir),
        "MNIST_OVERRIDES": " ".join(TINY),
        "IMDB_OVERRIDES": " ".join(TINY_TEXT),
        "SPEECH_OVERRIDES": " ".join(TINY_SPEECH),
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_rehearsal.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode == 2 and "no Python 3.12 found" in proc.stderr and not required:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gpu_check: every step passed (cpu)" in proc.stdout
    result = json.loads(out.read_text())
    steps = {s["step"]: s for s in result["steps"]}
    assert result["passed"] and list(steps) == [
        "install",
        "versions",
        "mlp",
        "cnn",
        "lstm",
        "speech_rnn",
        "benchmark",
        "benchmark_sequences",
        "benchmark_speech",
        "predict_text",
        "predict_audio",
        "benchmark_inference",
        "ddp",
        "sweep",
        "sweep_trials",
        "benchmark_compile",
        "cpu_bf16",
        "benchmark_cpu_bf16",
    ]
    assert any("`model.compile=true`" in row for row in steps["benchmark_compile"]["table"])
    assert any("`trainer=cpu_bf16`" in row for row in steps["benchmark_cpu_bf16"]["table"])
    assert "bf16:" in steps["cpu_bf16"]["output"][-1]
    engines = [row.split(" | ")[2] for row in steps["benchmark_inference"]["table"] if row.startswith("| mlp |")]
    assert engines == ["onnxruntime (CPU)", "eager PyTorch (cpu)"], steps["benchmark_inference"]["log_tail"]
    # the image's versions where they differ from what the tests ran with, each named (scripts/gpu_image.txt)
    tested, image = ({n: v for n, _, v in (p.partition("==") for p in (WHEELHOUSE / f).read_text().split())}
                     for f in ("tested.txt", "image.txt"))  # fmt: skip
    differ = {f"{n}: {v} here, {tested[n]} tested" for n, v in image.items() if v != tested[n]}
    carried = {p.partition("==")[0] for p in (WHEELHOUSE / "carried.txt").read_text().split()}
    left = set(tested) - set(image) - carried  # not carried: what no step runs (optuna-dashboard, ONNX)
    assert "optuna-dashboard" in left
    differ |= {f"{n}: not installed here, {tested[n]} tested" for n in left}
    versions = steps["versions"]["output"]
    assert set(versions[:-1]) == differ and versions[-1] == (
        f"{len(tested) - len(differ)} of {len(tested)} packages as tested; {len(differ)} differ (named above)"
    )
    for name in ("mlp", "cnn", "lstm", "speech_rnn", "ddp"):
        assert steps[name]["metrics"]["epochs"] == 1 and 0 <= steps[name]["metrics"]["test/acc"] <= 1
    assert [t["state"] for t in steps["sweep_trials"]["trials"]] == ["complete", "complete"]
    # the throughput table, then training GFLOP/s against the matmul peak, for each model
    models = [row.split("|")[1].strip() for row in steps["benchmark"]["table"] if not row.startswith("| `")]
    assert [m for m in models if m in ("mlp", "cnn")] == ["mlp", "cnn", "mlp", "cnn"]
    recipes = [row.split("|")[1].strip() for row in steps["benchmark"]["time_to_accuracy"]]
    assert recipes == ["`model=cnn`", "`experiment=mnist_speedrun`"]
    # the LSTM's and the keyword spotter's throughput (tokens/s for text) and their GFLOP/s, on the tests' data
    sequences = (("benchmark_sequences", "lstm", "tokens/s"), ("benchmark_speech", "speech_rnn", "samples/s"))
    for name, model, unit in sequences:
        table = steps[name]["table"]
        rows = [row for row in table if row.startswith(f"| {model} |")]
        assert any(unit in row for row in table) and rows[0].count("|") == 9 and "(fp32)" in rows[1], table
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


def test_the_gpu_checks_data_keeps_whole_mnist_and_named_subsets_of_the_others(tmp_path):
    """scripts/gpu_data.sh on small data in the real datasets' formats and archive names."""
    import gzip
    import tarfile

    from tests.helpers import make_aclimdb, make_mnist, make_speech_commands

    source = tmp_path / "datasets"
    make_mnist(source)
    for name, folder in (("aclImdb_labeled.tar.gz", "aclImdb"), ("speech_commands_fsdd.tar.gz", "SpeechCommands")):
        made = tmp_path / folder
        make_aclimdb(made) if folder == "aclImdb" else make_speech_commands(made, speakers=2, takes=15)
        with tarfile.open(source / name, "w:gz") as tar:
            tar.add(made / folder, arcname=folder)
    out = tmp_path / "gpu_data"
    for _ in range(2):  # a second build replaces the first
        proc = subprocess.run(
            ["bash", str(ROOT / "scripts" / "gpu_data.sh"), str(out)],
            env={**os.environ, "GPU_CHECK_SOURCE": str(source)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
    raw = source / "MNIST" / "raw"
    for path in raw.iterdir():  # all of MNIST, compressed as downloaded
        assert gzip.decompress((out / "MNIST" / "raw" / f"{path.name}.gz").read_bytes()) == path.read_bytes()
    with tarfile.open(out / "aclImdb_labeled.tar.gz") as tar:  # the tiny set is under the limits: every review
        assert len([m for m in tar.getnames() if m.endswith(".txt")]) == 4 * 6
    with tarfile.open(out / "speech_commands_fsdd.tar.gz") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    speech = tmp_path / "unpacked" / "SpeechCommands" / "speech_commands_v0.02"
    kept = sorted(p.relative_to(speech).as_posix() for p in speech.glob("*/*_nohash_*.wav"))
    takes = {int(clip.rsplit("_", 1)[1][:-4]) for clip in kept}
    assert takes == {0, 5, 10, 11, 12, 13} and len(kept) == 5 * 2 * 6 + 1  # + the stereo clip, take 0
    assert "dog/spk9_nohash_1.wav" not in kept and (speech / "_background_noise_" / "white_noise.wav").is_file()
    made = tmp_path / "SpeechCommands" / "SpeechCommands" / "speech_commands_v0.02"
    for name in ("testing_list.txt", "validation_list.txt"):  # each list: the clips it named that were kept
        listed = (speech / name).read_text().split()
        assert listed and listed == [c for c in (made / name).read_text().split() if c in kept]
    assert (out / "overrides.env").read_text() == "IMDB_OVERRIDES=data.val_size=250\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("gpu_data")) == ["gpu_data"]
    (source / "speech_commands_fsdd.tar.gz").unlink()
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_data.sh"), str(out)], capture_output=True, text=True,
                          env={**os.environ, "GPU_CHECK_SOURCE": str(source)}, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr == (
        f"gpu_data: {source}/speech_commands_fsdd.tar.gz not found: GPU_CHECK_SOURCE names the folder of the real "
        "datasets\n"
    )
    assert (out / "overrides.env").is_file()  # the last complete build stays

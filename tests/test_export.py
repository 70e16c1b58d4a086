"""nnlab export: every model family and kind of data (MNIST with the MLP and the CNN, an image folder, IMDB with the
LSTM, a text table with the GRU, Speech Commands and an audio folder at another rate with the keyword spotter) to
ONNX and torch.export; the graph's logits against the checkpoint's in eager PyTorch on inputs in the real on-disk
formats (PNG, JPEG, grey, transparent and huge images; the shortest and the longest text; a clip shorter than a
second, a long one, another rate, stereo, FLAC), at batch 1 and mixed; predict on the export as on the checkpoint;
the faults an export meets (a damaged or foreign checkpoint, an unwritable --out, a network that cannot be exported,
a kill mid-export)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import ROOT, run_module, user_env, write_inputs

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("export")]  # one worker trains each model once


def export(*args, check=True):
    return run_module("nnlab", "export", *args, check=check, timeout=300)


def compare(ckpt: Path, out: Path, inputs: list[str]) -> float:
    """The largest difference in a logit between ONNX Runtime on the export and the checkpoint in eager PyTorch, over
    the inputs together (a mixed batch) and each alone (batch 1); the predicted classes must be the same."""
    import onnxruntime as ort

    from nnlab.kinds import kind
    from nnlab.predict import load
    from nnlab.served import Served

    model, preprocessing = load(ckpt)
    reader = kind(preprocessing["kind"])
    served = Served(model, preprocessing).eval()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    name = json.loads((out / "nnlab.json").read_text())["input"]["name"]
    rows = [row for item in inputs for row in reader.raw(preprocessing, item)[0]]
    worst = 0.0
    for batch in [reader.stack(rows), *([reader.stack([row]) for row in rows])]:
        with torch.inference_mode():
            eager_p, eager = (t.numpy() for t in served(torch.from_numpy(batch)))
        onnx_p, onnx = session.run(["probabilities", "logits"], {name: batch})
        assert onnx.shape == eager.shape and np.array_equal(onnx_p.argmax(1), eager_p.argmax(1))
        worst = max(worst, float(np.abs(onnx - eager).max()))
    return worst


CASES = {  # recipe: its kind of data, its inputs' sample rate
    "mnist-mlp": ("image", None),
    "mnist-cnn": ("image", None),
    "images-cnn": ("image", None),
    "imdb-lstm": ("text", None),
    "table-gru": ("text", None),
    "speech-rnn": ("audio", 16000),
    "audio-8k": ("audio", 8000),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_model_and_kind_exports_and_its_onnx_logits_match_the_checkpoint(checkpoint, tmp_path, name):
    kind_name, rate = CASES[name]
    ckpt = checkpoint(name)
    out = tmp_path / "export"
    said = export(ckpt, "--format", "onnx,torch", "--out", out).stdout
    assert f"to {out}/" in said and (out / "model.onnx").is_file() and (out / "model.pt2").is_file()
    manifest = json.loads((out / "nnlab.json").read_text())
    run = ckpt.parent.parent
    assert (
        manifest["kind"] == kind_name
        and manifest["classes"] == torch.load(ckpt, weights_only=True)["preprocessing"]["class_names"]
    )
    assert manifest["git"] == json.loads((run / "run.json").read_text())["git"]
    assert manifest["test_metrics"]["test/acc"] == json.loads((run / "metrics.json").read_text())["test/acc"]
    assert manifest["data_fingerprint"] and manifest["nnlab_version"] and manifest["onnx"]["opset"] >= 17
    assert manifest["onnx"]["exporter"] == ("torchscript" if kind_name == "text" else "dynamo")
    assert (out / "tokenizer.json").is_file() == (kind_name == "text")
    inputs = write_inputs(kind_name, tmp_path / "inputs", rate or 16000)
    assert compare(ckpt, out, inputs) <= 1e-4

    # torch.export: the same numbers, at any batch size (and text length)
    from nnlab.kinds import kind
    from nnlab.predict import load
    from nnlab.served import Served

    model, preprocessing = load(ckpt)
    reader = kind(preprocessing["kind"])
    program = torch.export.load(str(out / "model.pt2")).module()
    served = Served(model, preprocessing).eval()
    rows = [row for item in inputs for row in reader.raw(preprocessing, item)[0]]
    fixed = manifest["torch"]["input"]["shape"][1:]
    for batch in (reader.stack(rows), reader.stack(rows[:1])):
        if kind_name == "text":  # its program reads texts padded to the longest the model reads
            batch = np.pad(batch, ((0, 0), (0, fixed[0] - batch.shape[1])))
        with torch.inference_mode():
            expected = served(torch.from_numpy(batch))[1]
            torch.testing.assert_close(program(torch.from_numpy(batch))[1], expected, rtol=1e-5, atol=1e-5)

    # predict on the export prints what predict on the checkpoint prints
    by_checkpoint = run_module("nnlab", "predict", ckpt, *inputs, "--top", "2").stdout.splitlines()
    by_export = run_module("nnlab", "predict", out, *inputs, "--top", "2").stdout.splitlines()
    assert len(by_export) == len(by_checkpoint) >= len(inputs)
    for a, b in zip(by_checkpoint, by_export):
        (guess_a, shown_a), (guess_b, shown_b) = a.split("\t"), b.split("\t")
        assert shown_a == shown_b and guess_a.split()[::2] == guess_b.split()[::2]  # the same classes, in order
        assert np.allclose(
            [float(v) for v in guess_a.split()[1::2]], [float(v) for v in guess_b.split()[1::2]], atol=0.0015
        )


def test_exporting_again_replaces_the_export_whole_and_a_kill_leaves_no_half(checkpoint, tmp_path):
    ckpt = checkpoint("mnist-cnn")
    out = tmp_path / "export"
    export(ckpt, "--out", out, "--format", "torch")
    assert sorted(p.name for p in out.iterdir()) == ["model.pt2", "nnlab.json"]
    export(ckpt, "--out", out)  # the default format, ONNX: the earlier files are gone, not mixed in
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "nnlab.json"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nnlab", "export", str(ckpt), "--out", str(out), "--format", "onnx,torch"],
        cwd=ROOT,
        env=user_env(),
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".export.partial*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # writing
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier export, whole
    export(ckpt, "--out", out)  # the next export clears what the killed one left
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_faults_are_one_line_naming_the_file_and_the_fix(checkpoint, tmp_path):
    ckpt = checkpoint("mnist-mlp")
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(ckpt.read_bytes()[:5000])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"lr": 0.1}}, foreign)
    (tmp_path / "a-file").write_text("")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    cases = [
        ((damaged,), f"checkpoint {damaged} is damaged or not a torch file"),
        ((foreign,), f"{foreign} is not a checkpoint of this project's models"),
        ((tmp_path / "missing.ckpt",), "does not exist"),
        ((ckpt, "--out", tmp_path / "a-file" / "export"), "a-file is a file, not a folder"),
        ((ckpt, "--out", tmp_path / "a-file"), "is a file; give a folder"),
        ((ckpt, "--out", tmp_path / "busy"), "holds other files; give a new or empty folder"),
        ((ckpt, "--out", "/proc/nnlab-export"), "cannot be"),
        ((ckpt, "--format", "tflite"), "give onnx, torch or onnx,torch"),
    ]
    for args, message in cases:
        proc = export(*args, check=False)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3, proc.stderr
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine" and not (tmp_path / "a-file").read_text()


def test_a_network_that_cannot_be_exported_is_one_line(checkpoint, tmp_path):
    ckpt = checkpoint("mnist-cnn")
    saved = torch.load(ckpt, weights_only=True)
    saved["hyper_parameters"]["net"] = "tests.unexportable.BranchingCNN"  # the CNN's weights, a branch on a value
    odd = tmp_path / "odd.ckpt"
    torch.save(saved, odd)
    proc = export(odd, "--out", tmp_path / "export", check=False)
    assert proc.returncode != 0 and "cannot be exported to ONNX" in proc.stderr, proc.stderr
    assert "model.net=tests.unexportable.BranchingCNN" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "export").exists() and not list(tmp_path.glob(".export*"))


def test_an_export_predicts_in_an_environment_without_torch(exported, tmp_path):
    """The wheel with the extra "runtime" alone (onnxruntime, numpy, tokenizers, soundfile, Pillow): no torch."""
    uv = str(Path(sys.executable).parent / "uv")

    def run(*args, cwd=tmp_path, env=None):
        proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        return proc

    exports = {name: exported(name) for name in ("mnist-cnn", "imdb-lstm", "speech-rnn")}
    run(uv, "build", "--offline", "--wheel", "--out-dir", tmp_path / "dist", ROOT)
    (wheel,) = (tmp_path / "dist").glob("nnlab-*.whl")
    run(uv, "venv", "--python", sys.executable, tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    lock = tmp_path / "pylock.toml"
    run(
        uv,
        "export",
        "--frozen",
        "--format",
        "pylock.toml",
        "--no-emit-project",
        "--no-dev",
        "--extra",
        "runtime",
        "-o",
        lock,
        cwd=ROOT,
    )
    run(uv, "pip", "install", "--offline", "--python", python, "-r", lock)
    run(uv, "pip", "install", "--offline", "--python", python, "--no-deps", wheel)
    listed = run(uv, "pip", "list", "--python", python).stdout.lower()
    assert "onnxruntime" in listed and "torch" not in listed and "lightning" not in listed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{python.parent}{os.pathsep}{env['PATH']}"
    image = write_inputs("image", tmp_path / "in")[0]
    clip = write_inputs("audio", tmp_path / "in")[0]
    for name, item in (("mnist-cnn", image), ("imdb-lstm", "a wonderful moving film"), ("speech-rnn", clip)):
        alone = run("nnlab", "predict", exports[name], item, cwd=tmp_path, env=env).stdout
        with_torch = run_module("nnlab", "predict", exports[name], item).stdout
        assert alone == with_torch and alone.count("\t") == 1
    proc = subprocess.run(
        ["nnlab", "predict", ROOT / "tests" / "fixtures" / "mlp-0.1.0.ckpt", image],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "nnlab[train]" in proc.stderr and "Traceback" not in proc.stderr

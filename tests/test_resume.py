"""Exact resume: a run stopped mid-epoch (SIGTERM, Ctrl-C) or killed (SIGKILL) and resumed ends bit for bit where an
uninterrupted run ends, with every default's randomness on (augmentation, dropout, word dropout, SpecAugment, time
shifts and noise mixing)."""

import json
import signal

import pytest
import torch

from tests.helpers import train
from tests.test_train import TINY, TINY_SPEECH, TINY_TEXT, stop_in_second_epoch

pytestmark = pytest.mark.slow
SLOW = ["+callbacks.slow._target_=tests.helpers.SlowSteps", "+callbacks.slow.seconds=0.15"]
# Each default recipe, shortened to epochs the tiny data sets allow (one-cycle needs a few warm-up steps).
# The stop comes at a step inside the second epoch (8 steps an epoch for the images, 4 for the reviews, 6 for clips).
DEFAULTS = {
    "cnn": ("mnist_dir", ["model=cnn", "trainer.max_epochs=2", *TINY], 11),
    "mlp": ("mnist_dir", ["model=mlp", "trainer.max_epochs=2", *TINY], 10),
    "lstm": ("imdb_dir", ["model=lstm", "trainer.max_epochs=3", *TINY_TEXT], 6),
    "speech_rnn": ("speech_dir", ["model=speech_rnn", "trainer.max_epochs=3", *TINY_SPEECH], 8),
}
COMPARED = ("test/loss", "test/acc", "val/acc_best", "val/loss", "train/loss", "train/acc", "epochs")


def metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def straight(tmp_path_factory, request):
    """The uninterrupted runs, one per model, computed when first asked for."""
    done = {}

    def get(model, data_dir):
        if model not in done:
            run_dir = tmp_path_factory.mktemp(f"straight-{model}")
            train(*DEFAULTS[model][1], "logger=csv", f"hydra.run.dir={run_dir}", f"paths.data_dir={data_dir}")
            done[model] = metrics(run_dir)
        return done[model]

    return get


@pytest.mark.parametrize("model,sig", [(m, "SIGTERM") for m in DEFAULTS] + [("mlp", "SIGINT")])
def test_a_stop_mid_epoch_then_resume_is_exact(model, sig, straight, tmp_path, request):
    fixture, overrides, step = DEFAULTS[model]
    data_dir = request.getfixturevalue(fixture)
    args = [*overrides, "logger=csv", f"hydra.run.dir={tmp_path}", f"paths.data_dir={data_dir}",
            "+callbacks.signal._target_=tests.helpers.SignalAt", f"+callbacks.signal.step={step}",
            f"+callbacks.signal.signal={sig}"]
    proc = train(*args, check=False)
    assert proc.returncode == 128 + getattr(signal, sig), proc.stderr[-3000:]
    name = "Ctrl-C" if sig == "SIGINT" else sig
    assert f"{name} received: training stopped at epoch 1, step {step}" in proc.stdout
    assert f"continue with: python train.py model={model}" in proc.stdout and "Traceback" not in proc.stderr
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == step and len(checkpoint["rng_states"]) == 1
    train(*args, "resume=true")
    resumed, expected = metrics(tmp_path), straight(model, data_dir)
    assert {k: resumed[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}


def test_sigkill_then_resume_from_the_epoch_checkpoint_is_exact(straight, tmp_path, mnist_dir):
    args = [*DEFAULTS["cnn"][1], *SLOW, "logger=csv", f"hydra.run.dir={tmp_path}", f"paths.data_dir={mnist_dir}"]
    stop_in_second_epoch(args, tmp_path, signal.SIGKILL)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    proc = train(*args, "resume=true")
    assert "which ended without releasing it (killed?): taking it over" in proc.stdout + proc.stderr
    resumed, expected = metrics(tmp_path), straight("cnn", mnist_dir)
    assert {k: resumed[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}

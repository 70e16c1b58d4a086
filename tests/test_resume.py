"""Exact resume: a run stopped mid-epoch (SIGTERM, Ctrl-C) or killed (SIGKILL) and resumed ends bit for bit where an
uninterrupted run ends, with every default's randomness on (augmentation, dropout, word dropout, SpecAugment, time
shifts and noise mixing)."""

import json
import signal

import pytest
import torch

from tests.helpers import ROOT, TINY, TINY_SPEECH, TINY_TEXT, stop_in_second_epoch, train

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
COMPARED = ("test/loss", "test/acc", "val/acc_best", "val/loss", "train/loss", "train/acc", "epochs", "history")
# "history": the learning curves, one continuous record of every epoch (curves.png draws it)


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
    args = [
        *overrides,
        "logger=csv",
        f"hydra.run.dir={tmp_path}",
        f"paths.data_dir={data_dir}",
        "+callbacks.signal._target_=tests.helpers.SignalAt",
        f"+callbacks.signal.step={step}",
        f"+callbacks.signal.signal={sig}",
    ]
    proc = train(*args, check=False)
    assert proc.returncode == 128 + getattr(signal, sig), proc.stderr[-3000:]
    name = "Ctrl-C" if sig == "SIGINT" else sig
    assert f"{name} received: training stopped at epoch 1, step {step}" in proc.stdout
    assert f"continue with: python {ROOT / 'train.py'} model={model}" in proc.stdout and "Traceback" not in proc.stderr
    assert "Interrupted before training started" not in proc.stderr
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == step and len(checkpoint["rng_states"]) == 1
    train(*args, "resume=true")
    resumed, expected = metrics(tmp_path), straight(model, data_dir)
    assert {k: resumed[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}
    assert [row["epoch"] for row in resumed["history"]] == list(range(1, expected["epochs"] + 1))


def test_sigkill_then_resume_from_the_epoch_checkpoint_is_exact(straight, tmp_path, mnist_dir):
    args = [*DEFAULTS["cnn"][1], *SLOW, "logger=csv", f"hydra.run.dir={tmp_path}", f"paths.data_dir={mnist_dir}"]
    stop_in_second_epoch(args, tmp_path, signal.SIGKILL)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    proc = train(*args, "resume=true")
    assert "which ended without releasing it (killed?): taking it over" in proc.stdout + proc.stderr
    resumed, expected = metrics(tmp_path), straight("cnn", mnist_dir)
    assert {k: resumed[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}
    assert [row["epoch"] for row in resumed["history"]] == list(range(1, expected["epochs"] + 1))


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(tmp_path, mnist_dir):
    args = [
        *DEFAULTS["mlp"][1],
        "logger=csv",
        f"hydra.run.dir={tmp_path}",
        f"paths.data_dir={mnist_dir}",
        "+callbacks.signal._target_=tests.helpers.SignalTwice",
        "+callbacks.signal.step=10",
    ]
    proc = train(*args, check=False)
    assert proc.returncode == 130 and "Second Ctrl-C: stopping now, without a checkpoint" in proc.stderr
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8  # epoch 1's


def test_ctrl_c_before_training_stops_at_once(tmp_path, mnist_dir):
    proc = train(
        *DEFAULTS["mlp"][1],
        f"hydra.run.dir={tmp_path}",
        f"paths.data_dir={mnist_dir}",
        "+callbacks.signal._target_=tests.helpers.SignalAtFitStart",
        check=False,
    )
    assert proc.returncode == 130 and "Interrupted before training started: nothing to resume" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "wandb").exists()


def test_torchrun_restarts_a_lost_worker_which_resumes_exactly(tmp_path, mnist_dir):
    """torchrun --max-restarts=1 starts the worker again after it was lost mid-epoch (at step 10 of 24): the restart
    resumes from the epoch checkpoint in the same directory and ends where an uninterrupted run ends."""
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    def torchrun(run_dir, *more):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=1",
            "--max-restarts=1",
            str(ROOT / "train.py"),
            *DEFAULTS["mlp"][1],
            "trainer.max_epochs=3",
            "logger=csv",
            f"hydra.run.dir={run_dir}",
            f"paths.data_dir={mnist_dir}",
            *more,
        ]
        proc = subprocess.run(
            cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return proc

    torchrun(tmp_path / "straight")
    proc = torchrun(
        tmp_path / "restarted", "+callbacks.crash._target_=tests.helpers.CrashOnce", "+callbacks.crash.step=10"
    )
    assert "torchrun restarted the workers (restart 1): resuming" in proc.stdout + proc.stderr
    resumed, expected = metrics(tmp_path / "restarted"), metrics(tmp_path / "straight")
    assert resumed["resumed_from"].endswith("last.ckpt")
    assert {k: resumed[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}
    assert [row["epoch"] for row in resumed["history"]] == list(range(1, expected["epochs"] + 1))


def test_ddp_ranks_each_resume_their_own_random_state(tmp_path, mnist_dir):
    """2 DDP processes (gloo), both lost at step 6 of 12: every rank's generators were gathered into the epoch
    checkpoint, each rank gets its own back, and the resumed run ends where an uninterrupted one ends."""
    args = ["model=mlp", "trainer=ddp_cpu", "trainer.max_epochs=3", *TINY, "logger=csv", f"paths.data_dir={mnist_dir}"]
    train(*args, f"hydra.run.dir={tmp_path / 'straight'}", timeout=400)
    crashed = [
        *args,
        f"hydra.run.dir={tmp_path / 'crashed'}",
        "+callbacks.crash._target_=tests.helpers.CrashOnce",
        "+callbacks.crash.step=6",
        f"+callbacks.crash.once={tmp_path / 'crashed-once'}",
    ]
    assert train(*crashed, check=False, timeout=400).returncode != 0
    checkpoint = torch.load(tmp_path / "crashed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4 and len(checkpoint["rng_states"]) == 2
    train(*crashed, "resume=true", timeout=400)
    resumed, expected = metrics(tmp_path / "crashed"), metrics(tmp_path / "straight")
    assert {k: resumed[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}
    assert [row["epoch"] for row in resumed["history"]] == list(range(1, expected["epochs"] + 1))


def test_sigterm_to_one_ddp_rank_stops_both_at_one_step_and_resumes_exactly(tmp_path, mnist_dir):
    """SIGTERM to rank 0 of a DDP run whose ranks Lightning started: both ranks stop at the same step (they agree
    every 10th batch) with a checkpoint, and the resumed run ends where an uninterrupted one ends."""
    args = ["model=mlp", "trainer=ddp_cpu", "trainer.max_epochs=6", *TINY, "logger=csv", f"paths.data_dir={mnist_dir}"]
    train(*args, f"hydra.run.dir={tmp_path / 'straight'}", timeout=400)
    stopped = [
        *args,
        f"hydra.run.dir={tmp_path / 'stopped'}",
        "+callbacks.signal._target_=tests.helpers.SignalAt",
        "+callbacks.signal.step=2",
        "+callbacks.signal.rank=0",
    ]
    proc = train(*stopped, check=False, timeout=400)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stdout[-2000:] + proc.stderr[-3000:]
    checkpoint = torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 13  # the 10th batch that is not the last of its epoch
    assert len(checkpoint["rng_states"]) == 2
    train(*stopped, "resume=true", timeout=400)
    resumed, expected = metrics(tmp_path / "stopped"), metrics(tmp_path / "straight")
    assert {k: resumed[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}
    assert [row["epoch"] for row in resumed["history"]] == list(range(1, expected["epochs"] + 1))

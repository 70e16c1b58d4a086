"""Checkpoints written by earlier versions of nnlab keep working (tests/fixtures/README.md says how each was made):
loaded with `torch.load(weights_only=True)` and without Hydra, evaluated by train.py to the accuracy they recorded,
and read by nnlab.predict."""

import json
import shutil

import pytest
import torch
from PIL import Image

from nnlab.earlier import model_settings
from nnlab.errors import ConfigError
from nnlab.module import Classifier
from tests.helpers import ROOT, TINY_TEXT, digit_images, predict, run_args, train

MLP_0_1_0 = ROOT / "tests" / "fixtures" / "mlp-0.1.0.ckpt"
STOPPED_0_1_0 = ROOT / "tests" / "fixtures" / "mlp-0.1.0-stopped"  # the same run, stopped by SIGTERM at step 10


def test_a_0_1_0_checkpoint_loads_safely_and_without_hydra():
    ckpt = torch.load(MLP_0_1_0, weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["hyper_parameters"]["arch"]["hidden"] == [16]
    model = Classifier.load_from_checkpoint(MLP_0_1_0, map_location="cpu").eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_settings_recorded_by_name_read_as_the_groups_they_meant_and_todays_pass_unchanged():
    sgd = {"lr": 0.1, "optimizer": "sgd", "weight_decay": 1e-4, "momentum": 0.8, "scheduler": "cosine",
           "anneal_to": 0.1, "warmup_pct": 0.3, "adversarial": 5.0, "adversarial_length": 256}  # fmt: skip
    assert model_settings(sgd) == {
        "lr": 0.1,
        "optim": {"_target_": "torch.optim.SGD", "weight_decay": 1e-4, "fused": True, "momentum": 0.8},
        "sched": {"_target_": "nnlab.schedules.Cosine", "warmup_pct": 0.3, "anneal_to": 0.1},
        "objective": {"name": "adversarial", "norm": 5.0, "length": 256, "share": 1.0},
    }
    assert model_settings({"lr": 0.1}) == {  # the defaults of those versions: AdamW, no schedule
        "lr": 0.1,
        "optim": {"_target_": "torch.optim.AdamW", "weight_decay": 0.0, "fused": True},
        "sched": None,
    }
    today = {"lr": 0.1, "optim": {"_target_": "torch.optim.Adam"}, "sched": None, "objective": None}
    assert model_settings(today) == today
    with pytest.raises(ConfigError, match="model.optimizer=rmsprop: one of sgd, adam, adamw"):
        model_settings({"optimizer": "rmsprop"})


@pytest.mark.slow
def test_a_0_1_0_checkpoint_evaluates_to_its_recorded_accuracy_and_predicts(tmp_path, mnist_dir):
    train("model=mlp", "train=false", f"ckpt_path={MLP_0_1_0}", "logger=csv", *run_args(tmp_path / "eval", mnist_dir))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["test/acc"] == pytest.approx(0.9449999928474426, abs=1e-7)  # as 0.1.0 recorded it
    images, labels = digit_images(3, seed=7)
    Image.fromarray(images[0]).save(tmp_path / "digit.png")
    proc = predict(MLP_0_1_0, tmp_path / "digit.png")
    first, *_ = proc.stdout.split()
    assert first == str(labels[0]) and proc.stdout.rstrip().endswith("digit.png")


@pytest.mark.slow
def test_a_run_stopped_by_0_1_0_resumes_elsewhere_to_the_uninterrupted_result(tmp_path, mnist_dir):
    """Its directory moved, its data elsewhere: resume=true finishes it, and it tests as the whole run did."""
    run_dir = tmp_path / "moved"
    shutil.copytree(STOPPED_0_1_0, run_dir)
    last = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    train("model=mlp", "model.arch.hidden=[16]", "trainer.max_epochs=2", "logger=csv", "resume=true",
          *run_args(run_dir, mnist_dir))  # fmt: skip
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["resumed_from"] and metrics["test/acc"] == 0.9449999928474426
    assert (STOPPED_0_1_0 / "checkpoints" / "last.ckpt").read_bytes() == last  # the fixture is only read


LSTM_0_1_0 = ROOT / "tests" / "fixtures" / "lstm-0.1.0.ckpt"  # with adversarial training (model.adversarial=5.0)
LSTM_STOPPED_0_1_0 = ROOT / "tests" / "fixtures" / "lstm-0.1.0-stopped"  # the same run, stopped by SIGTERM at step 20
LSTM_RUN = ["model=lstm", "model.arch.embed_dim=16", "model.arch.hidden=8", "model.lr=0.01", "trainer.max_epochs=12",
            "logger=csv", *TINY_TEXT]  # fmt: skip
LSTM_TEST_LOSS = 0.6739226579666138  # its best checkpoint's (epoch 2 of 12; test/acc 1.0), as 0.1.0 recorded it
# on an Intel Xeon; an AMD EPYC's vector kernels give 0.6739227175712585 (the last bits of a float32 sum)
SAME_LOSS = pytest.approx(LSTM_TEST_LOSS, rel=1e-6)


def test_a_0_1_0_lstm_checkpoint_loads_safely_and_without_hydra():
    ckpt = torch.load(LSTM_0_1_0, weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["hyper_parameters"]["adversarial"] == 5.0
    model = Classifier.load_from_checkpoint(LSTM_0_1_0, map_location="cpu").eval()
    with torch.no_grad():
        assert model((torch.randint(1, 200, (2, 7)), torch.tensor([7, 4]))).shape == (2, 2)


@pytest.mark.slow
def test_a_0_1_0_lstm_checkpoint_evaluates_to_its_recorded_loss_and_predicts(tmp_path, imdb_dir):
    run_dir = tmp_path / "eval"
    train("train=false", f"ckpt_path={LSTM_0_1_0}", "logger=csv", f"hydra.run.dir={run_dir}",
          f"paths.data_dir={imdb_dir}", f"paths.cache_dir={tmp_path / 'cache'}")  # fmt: skip
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/loss"] == SAME_LOSS and metrics["test/acc"] == 1.0
    proc = predict(LSTM_0_1_0, "a wonderful moving film, great acting")
    assert proc.stdout.split()[0] == "positive", proc.stdout


@pytest.mark.slow
def test_a_0_1_0_lstm_run_stopped_and_moved_resumes_to_the_uninterrupted_result(tmp_path, imdb_dir):
    """Moved to another folder, the resumed run still knows its best checkpoint (epoch 2): a later epoch of lower
    or equal validation accuracy does not replace it, and the test reads the moved folder's file."""
    run_dir = tmp_path / "moved"
    shutil.copytree(LSTM_STOPPED_0_1_0, run_dir)
    train(*LSTM_RUN, "resume=true", f"hydra.run.dir={run_dir}", f"paths.data_dir={imdb_dir}",
          f"paths.cache_dir={tmp_path / 'cache'}")  # fmt: skip
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 12 and metrics["checkpoint"] == str(run_dir / "checkpoints" / "best.ckpt")
    assert metrics["test/loss"] == SAME_LOSS
    assert torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["epoch"] == 1

"""The Classifier: every optimizer and schedule the config offers trains; bad names are refused."""

import itertools
import os
import subprocess
import sys

import lightning as L
import pytest

from nnlab.module import Classifier
from tests.helpers import ROOT
from tests.test_data import datamodule

ARCH = dict(in_channels=1, image_size=28, num_classes=10, hidden=[32], batch_norm=True, dropout=0.1)


def classifier(optimizer="adamw", scheduler="onecycle"):
    return Classifier(input="image", net="mlp", arch=ARCH, optimizer=optimizer, lr=1e-3, weight_decay=1e-4,
                      momentum=0.9, scheduler=scheduler, warmup_pct=0.2)


@pytest.mark.parametrize("optimizer,scheduler", list(itertools.product(["sgd", "adam", "adamw"],
                                                                        ["none", "cosine", "onecycle"])))
def test_every_optimizer_and_schedule_trains(optimizer, scheduler, mnist_dir, tmp_path):
    trainer = L.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    model = classifier(optimizer, scheduler)
    trainer.fit(model, datamodule=datamodule(mnist_dir))
    assert trainer.global_step == 6 and 0.0 <= model.val_acc_best <= 1.0


@pytest.mark.parametrize("field,value", [("optimizer", "rmsprop"), ("scheduler", "step")])
def test_unknown_optimizer_or_schedule_is_named(field, value, mnist_dir, tmp_path):
    trainer = L.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match=f"model.{field}={value!r}"):
        trainer.fit(classifier(**{field: value}), datamodule=datamodule(mnist_dir))


def test_unknown_network_is_named():
    with pytest.raises(ValueError, match="model.net='rnn' is not a network"):
        Classifier(input="image", net="rnn", arch={}, optimizer="adam", lr=1e-3, weight_decay=0.0, momentum=0.0,
                   scheduler="none", warmup_pct=0.0)


@pytest.mark.slow
def test_benchmark_script_runs(mnist_dir):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--data-dir", str(mnist_dir),
                          "--models", "mlp", "--rounds", "1", "--no-time-to-acc", "data.val_size=100"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_MODE": "offline"},
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| mlp | 128 |" in out.stdout

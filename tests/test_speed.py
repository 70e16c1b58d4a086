"""The speed recipe and the settings it is made of: experiment=mnist_speedrun trains (its figures are
docs/performance.md's, measured on real MNIST with nothing else running; here only that it composes, trains and
reports its time), channels-last convolutions keep the plain state dict, label smoothing is cross-entropy's; the
environment holds its bytecode, so no run compiles it."""

import importlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nnlab.errors import ConfigError
from nnlab.module import Classifier
from nnlab.nets import CNN
from tests.helpers import train


def test_the_environment_holds_its_bytecode_so_no_run_compiles_it_at_its_start():
    """`uv sync --compile-bytecode` (the set-up in README.md and docs/getting-started.md, .ci/run) compiles it once
    (pip does by default): a run where
    PYTHONDONTWRITEBYTECODE is set would otherwise compile torch at every start (docs/performance.md's figures)."""
    for name in ("torch", "torch.nn.modules.module", "lightning", "lightning.pytorch.trainer.trainer", "wandb"):
        source = importlib.import_module(name).__file__
        assert Path(importlib.util.cache_from_source(source)).is_file(), f"no bytecode for {source}"


def test_a_trainer_off_cuda_lifts_lightnings_nvml_guard_and_one_on_cuda_would_keep_it(monkeypatch):
    """Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK on import; with it, Adam and AdamW load NVML at every step on a
    machine without a GPU (docs/performance.md). A CPU trainer's run lifts it; a loop of one's own (no trainer) too."""
    import os

    import lightning as L

    from nnlab.app import cuda_check_unguarded

    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # as Lightning's import sets it; restored after the test
    cuda_check_unguarded(L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False))
    assert "PYTORCH_NVML_BASED_CUDA_CHECK" not in os.environ
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    cuda_check_unguarded()
    assert "PYTORCH_NVML_BASED_CUDA_CHECK" not in os.environ


ARCH = dict(in_channels=1, image_size=28, num_classes=10, conv=[8, "M", 16, "M"], kernel_size=3, padding=1)


@pytest.mark.slow
def test_the_speedrun_recipe_trains_one_epoch_and_reports_its_training_time(tmp_path, mnist_dir):
    proc = train(
        "experiment=mnist_speedrun",
        f"hydra.run.dir={tmp_path}",
        f"paths.data_dir={mnist_dir}",
        "data.val_size=100",
        "logger=csv",
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and 0 < metrics["train/seconds"] < metrics["wall_time_s"]
    assert f"training {metrics['train/seconds']:.1f} s" in proc.stdout + proc.stderr
    checkpoint = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    hp = checkpoint["hyper_parameters"]
    assert hp["arch"]["channels_last"] is True and hp["label_smoothing"] == 0.1 and hp["arch"]["conv"][-2] == 128
    plain = CNN(**{**hp["arch"], "channels_last": False})  # the weights load into the NCHW network too
    plain.load_state_dict({k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items()})


@pytest.mark.parametrize("trained", [True, False])
def test_a_channels_last_cnn_computes_and_saves_what_the_plain_one_does(trained):
    torch.manual_seed(0)
    nhwc = CNN(**ARCH, batch_norm=True, hidden=[32], dropout=0.0, channels_last=True)
    nchw = CNN(**ARCH, batch_norm=True, hidden=[32], dropout=0.0, channels_last=False)
    (nchw if trained else nhwc).load_state_dict((nhwc if trained else nchw).state_dict())
    assert nhwc.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert nchw.features[0].weight.is_contiguous()
    assert nhwc.state_dict().keys() == nchw.state_dict().keys()
    x = torch.randn(4, 1, 28, 28)
    nhwc.eval(), nchw.eval()
    torch.testing.assert_close(nhwc(x), nchw(x), rtol=1e-4, atol=1e-5)


def test_pooling_first_pools_where_a_convolution_is_followed_by_a_pool_and_keeps_its_function_without_batchnorm():
    torch.manual_seed(0)
    arch = {**ARCH, "conv": [8, "M", 16, 16, "M"], "hidden": [], "dropout": 0.0}
    first = CNN(**arch, batch_norm=True, pool_first=True)
    kinds = " ".join(type(m).__name__ for m in first.features)
    assert kinds == "Conv2d MaxPool2d BatchNorm2d ReLU Conv2d BatchNorm2d ReLU Conv2d MaxPool2d BatchNorm2d ReLU"
    assert first(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    # without BatchNorm, max-pooling then ReLU is ReLU then max-pooling: the same network, the same state dict
    plain, pooled = CNN(**arch, batch_norm=False), CNN(**arch, batch_norm=False, pool_first=True)
    pooled.load_state_dict(plain.state_dict())
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(pooled(x), plain(x))


def classifier(num_classes: int, smoothing: float) -> Classifier:
    arch = dict(in_channels=1, image_size=4, num_classes=num_classes, hidden=[8], batch_norm=False, dropout=0.0)
    optim = {"_target_": "torch.optim.AdamW", "weight_decay": 0.0}
    return Classifier("mlp", arch, 1e-3, optim, None, label_smoothing=smoothing)


def test_label_smoothing_is_cross_entropys_in_training_only():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 10), torch.randint(0, 10, (6,))
    model = classifier(10, 0.1)
    torch.testing.assert_close(model.loss(logits, y, 0.1), F.cross_entropy(logits, y, label_smoothing=0.1))
    torch.testing.assert_close(model.loss(logits, y), F.cross_entropy(logits, y))  # validation and test: plain
    binary, one = classifier(1, 0.2), torch.randn(6, 1)
    target = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    expected = F.binary_cross_entropy_with_logits(one.squeeze(-1), target * 0.8 + 0.1)
    torch.testing.assert_close(binary.loss(one, target.long(), 0.2), expected)


@pytest.mark.parametrize("smoothing", [1.0, -0.1])
def test_a_label_smoothing_out_of_range_is_named(smoothing):
    with pytest.raises(ConfigError, match=f"model.label_smoothing={smoothing}"):
        classifier(10, smoothing)

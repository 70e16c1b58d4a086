"""The config's schema (nnlab.schema): every shipped config passes it, and a wrong type or a value out of range is
refused with one line naming the key, the value and what is allowed. tests/test_bad_input.py runs such commands
through train.py; here the composed configs are checked in the test process."""

import typing

import pytest
from hydra import compose, initialize_config_dir

from nnlab import schema
from nnlab.errors import ConfigError
from tests.helpers import ROOT

CONF = ROOT / "conf"


def composed(*overrides, hydra=False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)


def refusal(*overrides) -> str:
    with pytest.raises(ConfigError) as e:
        schema.check_run(composed(*overrides))
    return str(e.value)


@pytest.mark.parametrize(
    "override,message",
    [
        ("trainer.max_epochs=abc", "trainer.max_epochs=abc: a whole number of epochs, at least 1 (-1: no limit; to "
                                   "test a checkpoint without training: train=false ckpt_path=<checkpoint>)"),
        ("trainer.max_epochs=1.5", "trainer.max_epochs=1.5: a whole number of epochs"),
        ("trainer.max_epochs=-2", "trainer.max_epochs=-2: a whole number of epochs"),
        ("+trainer.max_steps=0", "trainer.max_steps=0: a whole number of optimizer steps, at least 1 (-1: no limit)"),
        ("seed=abc", "seed=abc: a whole number from 0 to 4294967295"),
        ("seed=-1", "seed=-1: a whole number from 0 to 4294967295"),
        ("seed=true", "seed=true: a whole number"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0: a whole number of batches per "
                                              "optimizer step, at least 1 (1: a step per batch)"),
        ("trainer.limit_train_batches=abc", "trainer.limit_train_batches=abc: a number of batches, at least 1, or a "
                                            "share of them above 0.0 and up to 1.0 (0 would train nothing)"),
        ("trainer.limit_train_batches=0.0", "trainer.limit_train_batches=0.0: a number of batches"),
        ("trainer.limit_val_batches=1.5", "trainer.limit_val_batches=1.5: a number of batches, 0 or more (0: none), "
                                          "or a share of them from 0.0 to 1.0"),
        ("trainer.limit_test_batches=-1", "trainer.limit_test_batches=-1: a number of batches"),
        ("trainer.precision=17", "trainer.precision=17: one of 64, 32, 16, 64, 32, 16, bf16, 64-true"),
        ("trainer.precision=bf16_mixed", "trainer.precision=bf16_mixed: one of"),
        ("trainer.devices=0", "trainer.devices=0: a number of devices, at least 1 (-1: all), a list of device "
                              'indices, or a string ("auto", "0,1")'),
        ("trainer.num_nodes=0", "trainer.num_nodes=0: a whole number of machines, at least 1"),
        ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1: a number, 0 or more (null or 0: no clipping)"),
        ("trainer.deterministic=maybe", "trainer.deterministic=maybe: true, false or warn"),
        ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps=0: a whole number of steps, at least 1"),
        ("trainer.check_val_every_n_epoch=0", "trainer.check_val_every_n_epoch=0: a whole number of epochs"),
        ("trainer.fast_dev_run=-1", "trainer.fast_dev_run=-1: true, false, or a whole number of batches, 1 or more"),
        ("train=abc", "train=abc: true or false (false: only test the checkpoint named by ckpt_path)"),
        ("budget.min_steps=-1", "budget.min_steps=-1: a whole number of optimizer steps, 0 or more"),
        ("model.lr=abc", "model.lr=abc: the learning rate, a number above 0"),
        ("model.lr=-1e-3", "model.lr=-0.001: the learning rate, a number above 0"),
        ("model.optim.weight_decay=-1", "model.optim.weight_decay=-1: weight decay, a number, 0 or more"),
        ("model.sched.warmup_pct=1.0", "model.sched.warmup_pct=1.0: one-cycle's warm-up share of the training"),
        ("model.label_smoothing=1", "model.label_smoothing=1: the share of smoothing, at least 0 and below 1"),
        ("model.arch.dropout=abc", "model.arch.dropout=abc: a dropout rate, at least 0 and below 1"),
        ("data.batch_size=abc", "data.batch_size=abc: a batch size, a whole number of samples, at least 1"),
        ("data.batch_size=2.5", "data.batch_size=2.5: a batch size"),
        ("data.eval_batch_size=0", "data.eval_batch_size=0: a batch size"),
        ("slurm.requeue=maybe", "slurm.requeue=maybe: true or false"),
        ("+trainer.overfit_batches=-1", "trainer.overfit_batches=-1: a number of batches, 0 or more (0: off)"),
        ("+trainer.val_check_interval=0", "trainer.val_check_interval=0: a number of batches, at least 1"),
    ],
)  # fmt: skip
def test_a_wrong_type_or_range_is_one_line_naming_key_value_and_what_is_allowed(override, message):
    assert refusal(override).startswith(message)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model=mlp", "trainer.limit_train_batches=1", "trainer.limit_val_batches=0", "trainer.limit_test_batches=0.5"],
        ["trainer.limit_train_batches=0.25", "trainer.max_epochs=-1", "+trainer.max_steps=100"],
        ["trainer.devices=[0,1]", "trainer.precision=bf16-mixed", "trainer.deterministic=warn", "seed=0"],
        ["trainer.devices=auto", "trainer.precision=16", "trainer.fast_dev_run=3", "trainer.gradient_clip_val=null"],
        ["trainer.devices=-1", "trainer.precision=32-true", "trainer.fast_dev_run=true", "seed=4294967295"],
        ["+trainer.val_check_interval=0.5", "+trainer.max_time=00:00:10:00", "trainer.check_val_every_n_epoch=null"],
        ["model=lstm", "optim=sgd", "model.optim.momentum=0.9", "sched=cosine", "model.sched.anneal_to=0.3"],
        ["model=speech_rnn", "data.workers=2", "data.eval_batch_size=null"],
        ["sched=none", "model.sched.warmup_pct=0.0"],  # read by one-cycle alone (0.0 in older checkpoints)
        ["sched=cosine", "model.sched.warmup_pct=0.0"],
        ["trainer.max_epochs=1", "+trainer.my_own_setting=anything", "+model.arch.my_own_width=3"],  # unknown: passed
    ],
)
def test_the_values_lightning_and_nnlab_take_pass(overrides):
    schema.check_run(composed(*overrides))


def test_every_sweeper_setting_shipped_passes_and_a_wrong_one_is_named():
    for sweeper in ("grid", "optuna"):
        cfg = composed(f"hydra/sweeper={sweeper}", hydra=True)
        schema.check_sweeper(cfg.hydra.sweeper)
    for override, message in [
        ("hydra.sweeper.n_trials=abc", "hydra.sweeper.n_trials=abc: a whole number of trials, at least 1"),
        ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials=0: a whole number of trials, at least 1"),
        ("hydra.sweeper.replicates=0", "hydra.sweeper.replicates=0: a whole number of runs per trial, at least 1"),
        ("hydra.sweeper.direction=up", "hydra.sweeper.direction=up: maximize or minimize"),
        ("hydra.sweeper.heartbeat_s=0", "hydra.sweeper.heartbeat_s=0: a number of seconds, above 0"),
    ]:
        cfg = composed("hydra/sweeper=optuna", override, hydra=True)
        with pytest.raises(ConfigError) as e:
            schema.check_sweeper(cfg.hydra.sweeper)
        assert str(e.value).startswith(message), str(e.value)


def test_the_precisions_are_lightnings():
    from lightning.fabric.connector import _PRECISION_INPUT

    lightnings = {v for group in typing.get_args(_PRECISION_INPUT) for v in typing.get_args(group)}
    assert set(schema.PRECISIONS) == lightnings and len(schema.PRECISIONS) == len(lightnings)


def test_a_value_left_unset_is_left_to_the_code_that_reads_it():
    """data.path of one's own data is ??? until given: the schema does not resolve it (the run names it)."""
    schema.check_run(composed("data=image_folder", "model=cnn"))


def test_a_model_built_from_its_arguments_checks_them_too():
    """load_from_checkpoint and a Classifier made in a notebook go through the same schema."""
    with pytest.raises(ConfigError, match=r"^model.optim.momentum=1.5: SGD's momentum, a number from 0 to 1$"):
        schema.check_model({"net": "mlp", "lr": 1e-3, "optim": {"_target_": "torch.optim.SGD", "momentum": 1.5}})

"""Every config composes and instantiates; bad keys and bad pairings fail before training."""

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import nnlab.config  # noqa: F401
from nnlab import app, schema
from nnlab.kinds import reads_from
from tests.helpers import ROOT, train

CONF = ROOT / "conf"
OPTIONS = sorted(  # conf/local.example/ is copied to conf/local/, not chosen (tests/test_controls.py)
    (p.parent.relative_to(CONF).as_posix(), p.stem)
    for p in CONF.glob("*/**/*.yaml")
    if p.parent.name != "local.example"
)
# Instantiated on this CPU-only machine: GPU trainers are checked with the accelerator swapped for the CPU.
ON_CPU = {"gpu": ["trainer.accelerator=cpu"], "ddp": ["trainer.accelerator=cpu", "trainer.devices=2"]}
# A dataset is composed with a model that reads its kind of data. Speech Commands finds its classes
# in the data (train.py fills in data.num_classes); here a number is given.
SPEECH = ["data.num_classes=10"]
EXTRA = {
    ("data", "imdb"): ["model=lstm"],
    ("data", "speech_commands"): ["model=speech_rnn", *SPEECH],
    ("model", "speech_rnn"): SPEECH,
    ("experiment", "seed_speech_rnn"): SPEECH,
    ("data", "image_folder"): ["data.path=/nowhere", "data.num_classes=3"],
    ("data", "text_table"): ["model=lstm", "data.path=/nowhere.csv", "data.num_classes=3"],
    ("data", "numeric_table"): ["model=mlp", "data.path=/nowhere.csv", "data.features=4", "data.num_classes=3"],
    ("recipe", "lstm_imdb"): ["model=lstm"],
    ("objective", "adversarial"): ["model=lstm"],
    ("recipe", "speech_rnn_speech_commands"): ["model=speech_rnn", *SPEECH],
}


def compose_train(overrides, tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path}", *overrides])


def test_every_group_has_configs():
    groups = {g for g, _ in OPTIONS}
    assert {"model", "data", "trainer", "logger", "callbacks", "experiment", "paths"} <= groups


@pytest.mark.parametrize("group,name", OPTIONS, ids=[f"{g}={n}" for g, n in OPTIONS])
def test_config_composes_and_instantiates(group, name, tmp_path, mnist_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    extra = ON_CPU.get(name, []) if group == "trainer" else EXTRA.get((group, name), [])
    cfg = compose_train([f"{group}={name}", f"paths.data_dir={mnist_dir}", *extra], tmp_path)
    schema.check_run(cfg)  # every shipped config passes the schema
    datamodule, model = app.data(cfg), app.network(cfg)
    assert reads_from(model.reads.name, datamodule.kind)  # the network reads what the data module provides
    trainer = app.trainer(cfg, app.callbacks(cfg), app.loggers(cfg))
    assert trainer.max_epochs == (1 if cfg.trainer.fast_dev_run else cfg.trainer.max_epochs)  # debug=fdr: one


def test_model_config_picks_its_data_and_data_still_overrides(tmp_path):
    cfg = compose_train(["model=mlp"], tmp_path)
    assert cfg.data._target_.endswith("MNISTDataModule")
    assert compose_train(["model=mlp", "data=mnist", "data.batch_size=7"], tmp_path).data.batch_size == 7


def test_a_model_on_another_dataset_gets_that_datasets_settings_and_none_of_its_default_recipe(tmp_path):
    mnist = compose_train(["model=cnn"], tmp_path)
    assert dict(mnist.data.augment) == {"rotate": 10.0, "scale": 0.1, "translate": 2.0}  # recipe/cnn_mnist.yaml
    assert (mnist.trainer.max_epochs, mnist.budget.min_steps) == (6, 2500)
    folder = compose_train(["model=cnn", "data=image_folder", "data.path=/x"], tmp_path)
    own = OmegaConf.load(CONF / "data" / "image_folder.yaml").augment  # its own settings
    assert folder.data.augment == own
    assert folder.trainer.max_epochs == OmegaConf.load(CONF / "trainer" / "default.yaml").max_epochs
    assert folder.budget.min_steps == OmegaConf.load(CONF / "model" / "cnn.yaml").budget.min_steps  # 6000
    assert "flip" in folder.data.augment and folder.data._target_.endswith("ImageFolderDataModule")


def test_experiment_reproduces_the_seed_networks(tmp_path):
    cnn = compose_train(["experiment=seed_cnn"], tmp_path)
    assert list(cnn.model.arch.conv) == [32, "M", 64, "M", 64] and list(cnn.model.arch.hidden) == [64]
    assert (cnn.model.optim._target_, cnn.trainer.max_epochs) == ("torch.optim.Adam", 5)
    assert "_target_" not in cnn.model.sched  # sched=none
    mlp = compose_train(["experiment=seed_mlp"], tmp_path)
    assert list(mlp.model.arch.hidden) == [100, 100]
    assert (mlp.model.optim._target_, mlp.model.optim.momentum, mlp.model.lr) == ("torch.optim.SGD", 0.0, 0.01)


def test_unknown_key_fails_with_hydras_message(tmp_path):
    with pytest.raises(ConfigCompositionException, match="model.lrr"):
        compose_train(["model.lrr=0.1"], tmp_path)


@pytest.mark.slow
def test_cli_rejects_unknown_key_and_bad_pairing(tmp_path, mnist_dir):
    proc = train("model.lrr=0.1", check=False)
    assert proc.returncode != 0 and "Key 'lrr' is not in struct" in proc.stderr
    proc = train(
        "model=mlp", "data=imdb", f"paths.data_dir={mnist_dir}", f"hydra.run.dir={tmp_path}", "logger=csv", check=False
    )
    assert proc.returncode != 0
    said = "model=mlp reads one tensor per sample (images, audio, rows of numbers) but data=imdb provides 'text' data"
    assert said in proc.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_run_ids_differ_within_a_second_and_stay_fixed_within_a_run(tmp_path):
    first, second = compose_train([], tmp_path), compose_train([], tmp_path)
    assert first.run_id != second.run_id and len(first.run_id) == 8
    assert first.run_id == first.run_id and first.run_name.endswith(first.run_id)


@pytest.mark.slow
def test_a_bad_requeue_signal_name_fails_before_training(tmp_path):
    proc = train("model=mlp", "slurm.signal=USR9", f"hydra.run.dir={tmp_path}", "logger=csv", check=False)
    assert proc.returncode != 0 and "slurm.signal='USR9' is not a signal name" in proc.stderr
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_an_explicit_number_of_epochs_turns_the_training_budget_off_on_the_command_line_or_in_a_file(tmp_path):
    def budget(*overrides):
        cfg = yaml.safe_load(train(*overrides, "--cfg", "job", "--resolve").stdout)
        assert cfg["callbacks"]["training_budget"]["exact"] == cfg["budget"]["exact"]
        return cfg["trainer"]["max_epochs"], cfg["budget"]["exact"]

    assert budget("model=cnn") == (6, False)
    assert budget("model=cnn", "trainer.max_epochs=3") == (3, True)
    mine = tmp_path / "conf" / "experiment" / "three.yaml"  # the same length set in a file
    mine.parent.mkdir(parents=True)
    mine.write_text("# @package _global_\ntrainer:\n  max_epochs: 3\nbudget:\n  exact: true\n")
    assert budget("model=cnn", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "experiment=three") == (3, True)

"""The controls users bring from the lightning-hydra-template and LightningCLI: debug runs, callbacks chosen by config,
weight averaging, gradient accumulation, torch.compile, bf16 on CPUs, the config at start, local settings, and the
command on every config's first line."""

import json
import shlex
import shutil

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import nnlab.config  # noqa: F401
from nnlab.cpu import cpu_has_bf16
from nnlab.module import Classifier
from nnlab.run.settle import without_regularisation
from tests.helpers import ROOT, TINY, datamodule, train
from tests.helpers import run_args as tiny_run

CONF = ROOT / "conf"
TREE = "├── model"  # a line of the config tree printed at the start


def run_args(run_dir, data_dir, *more):
    """A tiny run that logs to CSV alone."""
    return tiny_run(run_dir, data_dir, "logger=csv", *more)


def metrics(run_dir) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def compose_train(overrides, search_path=None):
    extra = [f"hydra.searchpath=[file://{search_path}]"] if search_path else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*extra, *overrides], return_hydra_config=True)


# ----------------------------------------------------------------------------------------------------- first lines
def first_line_commands():
    """(config, overrides) for every config whose comments start with `# python train.py ...`."""
    found = []
    for path in sorted(CONF.glob("**/*.yaml")):
        line = next((ln for ln in path.read_text().splitlines() if ln.startswith("# python train.py")), None)
        if line is None:
            continue
        command = line.removeprefix("# python train.py").split("  (")[0]  # a note in parentheses follows two spaces
        found.append((path.relative_to(CONF).as_posix(), [a for a in shlex.split(command) if a not in ("-m", "...")]))
    return found


def test_every_config_a_user_picks_names_its_command():
    commented = {name for name, _ in first_line_commands()}
    chosen_by_themselves = ("recipe/", "hydra/job_logging/", "local.example/")
    for path in CONF.glob("**/*.yaml"):
        name = path.relative_to(CONF).as_posix()
        assert name in commented or name.startswith(chosen_by_themselves), f"{name} has no `# python train.py` line"


@pytest.mark.parametrize("name,overrides", first_line_commands(), ids=[n for n, _ in first_line_commands()])
def test_the_command_on_a_configs_first_line_composes(name, overrides):
    """Each config's own example runs as written: its overrides compose, and a sweep's searched keys exist."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    cfg = compose_train(fixed)
    for o in parsed:
        if o.is_sweep_override():
            key = o.key_or_group
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            assert node is not None and leaf in node, f"{name}: the searched key {key} is not in the config"


# ---------------------------------------------------------------------------------------------------------- debug
def test_debug_runs_log_to_csv_in_outputs_debug_unless_wandb_is_asked_for():
    for option in ("default", "fdr", "limit", "overfit", "profiler", "anomaly"):
        cfg = compose_train([f"debug={option}"])
        assert list(cfg.logger) == ["csv"], option
        assert "/debug/" in cfg.hydra.run.dir and "/debug/sweeps/" in cfg.hydra.sweep.dir, option
    assert list(compose_train(["debug=fdr", "logger=wandb"]).logger) == ["wandb"]


@pytest.mark.slow
def test_debug_runs(tmp_path, mnist_dir):
    """debug=fdr, limit, profiler and anomaly each run in outputs/debug/ with CSV logs and do what they say."""
    out = tmp_path / "outputs"
    runs = {}
    for option in ("fdr", "limit", "profiler", "anomaly"):
        before = set(out.glob("debug/*/*"))
        proc = train(
            f"debug={option}", "model=mlp", f"paths.log_dir={out}", f"paths.data_dir={mnist_dir}", *TINY, "logger=csv"
        )
        (run_dir,) = set(out.glob("debug/*/*")) - before
        assert not (run_dir / "wandb").exists(), option
        assert (run_dir / "csv").is_dir() or option == "fdr", option  # fast_dev_run logs nothing (Lightning's rule)
        runs[option] = (run_dir, proc.stdout + proc.stderr)
    run_dir, output = runs["fdr"]
    assert not (run_dir / "checkpoints").exists() and 0 <= metrics(run_dir)["test/acc"] <= 1
    run_dir, _ = runs["limit"]
    assert metrics(run_dir)["epochs"] == 1 and (run_dir / "checkpoints" / "best.ckpt").is_file()
    run_dir, output = runs["profiler"]
    reports = metrics(run_dir)["profiler_reports"]
    assert [p.rsplit("/", 1)[1] for p in reports] == ["fit-profile.txt", "test-profile.txt"]
    assert (
        f"profiler report: {reports[0]}" in output and "run_training_batch" in (run_dir / "fit-profile.txt").read_text()
    )
    run_dir, output = runs["anomaly"]
    log = (run_dir / "train.log").read_text()
    assert "[DEBUG] - epoch 1, first training batch: ((64, 1, 28, 28) float32 in [" in log
    assert "detect_anomaly=True" in output


@pytest.mark.parametrize(
    "model,expected",
    [
        ("cnn", ["data.augment.rotate=0", "data.augment.scale=0", "data.augment.translate=0", "model.arch.dropout=0"]),
        ("mlp", ["data.augment.rotate=0", "data.augment.scale=0", "data.augment.translate=0", "model.arch.dropout=0"]),
        ("lstm", ["model.arch.dropout=0", "model.arch.word_dropout=0", "model.objective=null"]),
        (
            "speech_rnn",
            ["data.time_shift_ms=0", "data.noise_prob=0", "model.arch.spec_masks=0", "model.arch.dropout=0"],
        ),
    ],
)
def test_overfitting_turns_off_every_regulariser_of_each_model(model, expected):
    """The data module's augmentation, the network's own (SpecAugment), dropout and the objective (adversarial)."""
    cfg = compose_train(
        [f"model={model}", "debug=overfit", *(["data.num_classes=10"] if model == "speech_rnn" else [])]
    )
    assert without_regularisation(cfg) == expected
    assert without_regularisation(cfg) == []  # nothing left on


@pytest.mark.slow
def test_overfit_debug_run_learns_its_batch_with_augmentation_and_dropout_off(tmp_path, mnist_dir):
    """debug=overfit with the default CNN (augmentation and dropout on by default) learns its batch: a real check."""
    out = tmp_path / "outputs"
    proc = train("debug=overfit", f"paths.log_dir={out}", f"paths.data_dir={mnist_dir}", *TINY, "logger=csv")
    (run_dir,) = out.glob("debug/*/*")
    result = metrics(run_dir)
    assert result["overfit_check"]["passed"] and result["train/acc"] >= 0.99 and result["epochs"] == 60
    assert "augmentation, dropout and the training objective off (data.augment.rotate=0" in proc.stdout
    assert "model.arch.dropout=0" in proc.stdout and "overfit check: training accuracy 1.0000" in proc.stdout
    config = OmegaConf.load(run_dir / "config.yaml")
    assert config.model.arch.dropout == 0 and config.data.augment.rotate == 0


# ------------------------------------------------------------------------------------------------------ callbacks
@pytest.mark.slow
def test_early_stopping_stops_and_metrics_say_when_with_rich_bar_and_config_tree(tmp_path, mnist_dir):
    # min_delta=100: no validation counts as an improvement after the first, so patience 1 stops after epoch 2
    proc = train(
        "model=mlp",
        "callbacks/early_stopping=val_loss",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=100",
        "trainer.max_epochs=5",
        "callbacks/progress_bar=rich",
        *run_args(tmp_path, mnist_dir),
    )
    result = metrics(tmp_path)
    assert result["epochs"] == 2
    assert result["early_stopping"]["stopped"] and result["early_stopping"]["epoch"] == 2
    assert "did not improve in the last 1 records" in result["early_stopping"]["reason"]
    assert "early stopping: stopped after epoch 2 of 5" in proc.stdout
    assert proc.stdout.count(TREE) == 1 and "━" in proc.stdout  # the config tree once; Rich's bar


def averaged_and_raw_test_loss(checkpoint_path, data_dir) -> tuple[float, float]:
    """The test loss of a checkpoint's `state_dict` (the averaged weights) and of its `current_model_state` (raw)."""
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    model = Classifier.load_from_checkpoint(checkpoint_path).eval()
    dm = datamodule(data_dir, eval_batch_size=100)
    dm.setup("test")

    @torch.no_grad()
    def test_loss():
        total = n = 0
        for batch in dm.test_dataloader():
            x, y = dm.on_after_batch_transfer(batch, 0)
            total += model.loss(model(x), y).item() * len(y)
            n += len(y)
        return total / n

    averaged = test_loss()
    model.load_state_dict(checkpoint["current_model_state"])
    return averaged, test_loss()


@pytest.mark.slow
def test_ema_validates_checkpoints_and_tests_the_averaged_weights(tmp_path, mnist_dir):
    proc = train(
        "model=mlp",
        "callbacks/weight_averaging=ema",
        "callbacks.weight_averaging.decay=0.9",
        "trainer.max_epochs=3",
        "callbacks/progress_bar=none",
        "print_config=false",
        *run_args(tmp_path, mnist_dir),
    )
    assert TREE not in proc.stdout and "it/s" not in proc.stdout + proc.stderr  # no tree, no bar
    result = metrics(tmp_path)
    averaged, raw = averaged_and_raw_test_loss(tmp_path / "checkpoints" / "best.ckpt", mnist_dir)
    assert result["test/loss"] == pytest.approx(averaged, rel=1e-5)  # the test ran on the averaged weights
    assert abs(raw - averaged) > 1e-4  # which are not the raw ones


@pytest.mark.slow
def test_swa_averages_from_its_start_epoch(tmp_path, mnist_dir):
    train(
        "model=mlp",
        "callbacks/weight_averaging=swa",
        "callbacks.weight_averaging.start_epoch=1",
        "trainer.max_epochs=3",
        *run_args(tmp_path, mnist_dir),
    )
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert int(last["averaging_state"]["n_averaged"]) == 2  # the ends of epochs 2 and 3 (0-based 1 and 2)
    averaged, raw = last["state_dict"], last["current_model_state"]
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw)
    assert metrics(tmp_path)["test/acc"] > 0.5


@pytest.mark.slow
def test_accumulated_gradients_train_as_the_larger_batch(tmp_path, mnist_dir):
    """Two batches of 50 with accumulate_grad_batches=2 are one step on the batch of 100 they make up (the same
    shuffled order is sliced), for a network without BatchNorm or dropout: the same losses to float tolerance."""
    common = [
        "model=mlp",
        "model.arch.batch_norm=false",
        "model.arch.dropout=0",
        "sched=none",
        "data.augment.rotate=0",
        "data.augment.scale=0",
        "data.augment.translate=0",
        "trainer.max_epochs=2",
    ]
    results = []
    for batch, accumulate in ((100, 1), (50, 2)):
        run_dir = tmp_path / f"b{batch}"
        train(*common, *run_args(run_dir, mnist_dir), f"data.batch_size={batch}",
              f"trainer.accumulate_grad_batches={accumulate}")  # fmt: skip
        results.append(metrics(run_dir))
    for key in ("train/loss", "val/loss", "test/loss"):
        assert results[1][key] == pytest.approx(results[0][key], rel=1e-4), key


# -------------------------------------------------------------------------------------------------- compile, bf16
@pytest.mark.slow
def test_compiled_runs_checkpoint_the_plain_networks_keys(tmp_path, mnist_dir):
    train("model=mlp", "model.compile=true", "trainer.max_epochs=1", *run_args(tmp_path, mnist_dir))
    best = tmp_path / "checkpoints" / "best.ckpt"
    state = torch.load(best, weights_only=True)["state_dict"]
    plain = Classifier.load_from_checkpoint(best)  # compiled in training, loaded into an uncompiled model
    assert set(state) == set(plain.state_dict()) and not any("_orig_mod" in k for k in state)
    compiled = Classifier.load_from_checkpoint(best)
    compiled.net.compile()
    compiled.load_state_dict(plain.state_dict())  # and back into a compiled one
    assert metrics(tmp_path)["test/acc"] > 0


@pytest.mark.slow
def test_bf16_on_a_cpu_runs_where_the_cpu_has_it_and_is_refused_where_not(tmp_path, mnist_dir):
    proc = train("model=mlp", "trainer=cpu_bf16", "trainer.max_epochs=1", *run_args(tmp_path, mnist_dir), check=False)
    if cpu_has_bf16():
        assert proc.returncode == 0 and metrics(tmp_path)["test/acc"] > 0
    else:
        assert proc.returncode == 1 and "trainer.precision=bf16-mixed on a CPU without bf16 instructions" in proc.stderr
        assert "Traceback" not in proc.stderr and not (tmp_path / "checkpoints").exists()


# ---------------------------------------------------------------------------------------------------------- local
def test_local_settings_are_included_when_present(tmp_path):
    """conf/local/ (git-ignored) as conf/local.example/ shows it: found here through hydra.searchpath."""
    shutil.copytree(CONF / "local.example", tmp_path / "local")
    cfg = compose_train(["hydra/launcher=slurm"], search_path=tmp_path)
    assert cfg.paths.data_dir == "/data/nnlab" and cfg.logger.wandb.entity == "my-team"
    assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.account == "my-project"
    assert compose_train(["paths.data_dir=/mine"], search_path=tmp_path).paths.data_dir == "/mine"  # command line wins
    assert "wandb" not in compose_train(["logger=csv"], search_path=tmp_path).logger  # settings of a logger not used
    assert compose_train([]).logger.wandb.entity is None  # without conf/local/


def test_curves_of_a_few_epochs_tick_every_epoch_and_no_fraction():
    import matplotlib.pyplot as plt

    from nnlab.callbacks import curves_figure

    for epochs in (1, 3, 30):
        history = [{"epoch": e, "train/loss": 1 / e, "val/acc": 0.5 + e / 100} for e in range(1, epochs + 1)]
        fig = curves_figure(history, [(1, 1e-3), (2, 2e-3)], best=epochs)
        ticks = [t for t in fig.axes[0].get_xticks() if fig.axes[0].get_xlim()[0] <= t <= fig.axes[0].get_xlim()[1]]
        assert all(float(t).is_integer() for t in ticks) and (epochs > 12 or ticks == list(range(1, epochs + 1)))
        plt.close(fig)

"""The schema of a run's config: the type and range of each setting nnlab reads, declared once.

A run checks its composed config against it before anything is built (nnlab.run.lifecycle.Run.open), a sweep checks
its base config and its own settings before it launches a trial (the nnlab sweeper), and a model checks its settings
when it is built, from a config or from a checkpoint (nnlab.module.Classifier). A wrong type or a value out of range
is one line that names the key, the value and what is allowed:

    Error: trainer.max_epochs=1.5: a whole number of epochs, at least 1 (-1: no limit)

Keys the schema does not name pass through untouched: any other argument of Lightning's Trainer, a data module's or
a network's own settings (those check themselves when they are built).

Why pydantic and not Hydra's structured configs: OmegaConf types a key but knows no ranges (a dataclass's
__post_init__ is not run on a merge), and it refuses the unions Lightning takes (trainer.limit_train_batches is a
count or a share, trainer.devices a count, a list or "auto", trainer.deterministic a flag or "warn"). The schema
therefore checks the composed config, the one that runs; W&B already depends on pydantic.
"""

import math
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from nnlab import commands
from nnlab.errors import ConfigError

# Lightning 2.6's precision names (lightning.fabric.connector._PRECISION_INPUT; tests/test_schema.py compares them)
PRECISIONS = (64, 32, 16, "64", "32", "16", "bf16", "64-true", "32-true", "16-true", "16-mixed", "bf16-true",
              "bf16-mixed", "transformer-engine", "transformer-engine-float16")  # fmt: skip


# ---------------------------------------------------------------------------------------------------- the tests
def whole(low: int | None = None, high: int | None = None):
    """A whole number (not a flag, not 2.0) in [low, high]."""
    return lambda v: type(v) is int and (low is None or v >= low) and (high is None or v <= high)


def real(low: float | None = None, high: float | None = None, *, above: bool = False, below: bool = False):
    """A finite number (whole or not, not a flag) from `low` (or `above` it) to `high` (or `below` it)."""

    def test(v):
        if type(v) not in (int, float) or not math.isfinite(v):
            return False
        over = low is None or (v > low if above else v >= low)
        return over and (high is None or (v < high if below else v <= high))

    return test


def share(*, zero: bool):
    """A share written as a fraction (0.25, 1.0): above 0, or from 0 with `zero`, up to 1."""
    return lambda v: type(v) is float and (v >= 0 if zero else v > 0) and v <= 1


def equals(*values):
    return lambda v: any(type(v) is type(x) and v == x for x in values)


def flag(v) -> bool:
    return type(v) is bool


def text(v) -> bool:
    return type(v) is str


def mapping(v) -> bool:
    return isinstance(v, dict)


def whole_list(v) -> bool:
    return isinstance(v, list) and bool(v) and all(whole(0)(x) for x in v)


def setting(allowed: str, *tests, null: bool = True) -> Any:
    """A key whose value passes one of `tests` (or is null, with `null`); `allowed` says what passes, in the error.
    A key left out is not checked."""

    def check(value):
        if (value is None and null) or any(t(value) for t in tests):
            return value
        raise ValueError(allowed)

    return Annotated[Any, Field(default=None, description=allowed), AfterValidator(check)]


class Section(BaseModel):
    model_config = ConfigDict(extra="allow")  # keys not named here pass through: they are checked where they are used


# -------------------------------------------------------------------------------------------------- the sections
BATCHES = "a number of batches, 0 or more (0: none), or a share of them from 0.0 to 1.0"


class Trainer(Section):
    """The keys of lightning.pytorch.Trainer that nnlab's configs set, with the values Lightning accepts."""

    max_epochs: setting(
        "a whole number of epochs, at least 1 (-1: no limit; to test a checkpoint without training: "
        "train=false ckpt_path=<checkpoint>)",
        whole(1),
        equals(-1),
    )
    min_epochs: setting("a whole number of epochs, 0 or more", whole(0))
    max_steps: setting("a whole number of optimizer steps, at least 1 (-1: no limit)", whole(1), equals(-1))
    min_steps: setting("a whole number of optimizer steps, 0 or more", whole(0))
    max_time: setting('a duration, "DD:HH:MM:SS" or {days: .., hours: .., minutes: ..}', text, mapping)
    limit_train_batches: setting(
        "a number of batches, at least 1, or a share of them above 0.0 and up to 1.0 (0 would train nothing)",
        whole(1),
        share(zero=False),
    )
    limit_val_batches: setting(BATCHES, whole(0), share(zero=True))
    limit_test_batches: setting(BATCHES, whole(0), share(zero=True))
    limit_predict_batches: setting(BATCHES, whole(0), share(zero=True))
    overfit_batches: setting(
        "a number of batches, 0 or more (0: off), or a share of them from 0.0 to 1.0", whole(0), share(zero=True)
    )
    val_check_interval: setting(
        'a number of batches, at least 1, a share of an epoch above 0.0 and up to 1.0, or a duration ("00:00:10:00")',
        whole(1),
        share(zero=False),
        text,
        mapping,
    )
    check_val_every_n_epoch: setting("a whole number of epochs, at least 1 (null: by val_check_interval)", whole(1))
    log_every_n_steps: setting("a whole number of steps, at least 1", whole(1))
    accumulate_grad_batches: setting(
        "a whole number of batches per optimizer step, at least 1 (1: a step per batch)", whole(1), null=False
    )
    gradient_clip_val: setting("a number, 0 or more (null or 0: no clipping)", real(0))
    gradient_clip_algorithm: setting("norm or value", equals("norm", "value"))
    num_sanity_val_steps: setting("a whole number of batches, 0 or more (-1: all of them)", whole(-1))
    fast_dev_run: setting("true, false, or a whole number of batches, 1 or more", flag, whole(1), null=False)
    deterministic: setting("true, false or warn", flag, equals("warn"))
    benchmark: setting("true or false (null: Lightning's default)", flag)
    precision: setting(f"one of {', '.join(map(str, PRECISIONS))}", equals(*PRECISIONS))
    accelerator: setting("a name: auto, cpu, gpu, cuda, mps, ...", text, null=False)
    devices: setting(
        'a number of devices, at least 1 (-1: all), a list of device indices, or a string ("auto", "0,1")',
        whole(1),
        equals(-1),
        whole_list,
        text,
        null=False,
    )
    num_nodes: setting("a whole number of machines, at least 1", whole(1), null=False)
    reload_dataloaders_every_n_epochs: setting("a whole number of epochs, 0 or more (0: never)", whole(0))
    enable_progress_bar: setting("true or false", flag)
    enable_checkpointing: setting("true or false", flag)
    enable_model_summary: setting("true or false", flag)
    inference_mode: setting("true or false", flag)
    detect_anomaly: setting("true or false", flag)
    sync_batchnorm: setting("true or false", flag)
    use_distributed_sampler: setting("true or false", flag)
    barebones: setting("true or false", flag)
    default_root_dir: setting("a folder", text)


class Arch(Section):
    """A network's constructor arguments: the rates every network shares are checked here, the rest by the network."""

    dropout: setting("a dropout rate, at least 0 and below 1", real(0, 1, below=True))
    word_dropout: setting("a dropout rate, at least 0 and below 1", real(0, 1, below=True))
    num_classes: setting("a whole number of classes, at least 1 (1: one sigmoid output)", whole(1))


class Optim(Section):
    """model.optim: the optimizer (conf/optim/); its other settings are checked by the optimizer when it is built."""

    weight_decay: setting("weight decay, a number, 0 or more", real(0))
    momentum: setting("SGD's momentum, a number from 0 to 1", real(0, 1))
    fused: setting("true or false", flag)


class Sched(Section):
    """model.sched: the learning-rate schedule (conf/sched/)."""

    warmup_pct: setting(
        "one-cycle's warm-up share of the training, above 0 and below 1", real(0, 1, above=True, below=True)
    )
    anneal_to: setting("the share of model.lr the schedule ends at, at least 0 and below 1", real(0, 1, below=True))

    @model_validator(mode="before")
    @classmethod
    def warm_up_with_one_cycle_only(cls, values):
        """warmup_pct is read by one-cycle alone: another schedule ignores it, whatever it holds."""
        if isinstance(values, dict) and not str(values.get("_target_", "")).endswith("OneCycle"):
            return {k: v for k, v in values.items() if k != "warmup_pct"}
        return values


class Model(Section):
    """The model's settings: nnlab.module.Classifier's arguments."""

    net: setting("the name of a network (nnlab.nets, or a module path: mypackage.nets.MyNet)", text, null=False)
    arch: Arch | None = None
    lr: setting("the learning rate, a number above 0", real(0, above=True), null=False)
    optim: Optim | None = None
    sched: Sched | None = None
    label_smoothing: setting("the share of smoothing, at least 0 and below 1", real(0, 1, below=True))
    compile: setting("true or false", flag)


class Data(Section):
    """What every data module shares; each checks its own other settings when it is built."""

    batch_size: setting("a batch size, a whole number of samples, at least 1", whole(1), null=False)
    eval_batch_size: setting("a batch size, a whole number of samples, at least 1 (null: data.batch_size)", whole(1))
    workers: setting("a whole number of threads, at least 1 (null: one per CPU)", whole(1))


class Budget(Section):
    min_steps: setting("a whole number of optimizer steps, 0 or more", whole(0), null=False)
    exact: setting("true (trainer.max_epochs epochs exactly) or false (at least budget.min_steps steps)", flag)


class Slurm(Section):
    signal: setting("a signal name, as sbatch --signal takes it (USR2, TERM, ...)", text, null=False)
    requeue: setting("true or false", flag, null=False)


class Sweep(Section):
    name: setting("a study name", text)
    storage: setting("an Optuna storage URL or a journal file", text)
    trial: setting("a whole number, 0 or more", whole(0))
    replicate: setting("a whole number, 0 or more", whole(0))


class Run(Section):
    """The top of conf/train.yaml."""

    seed: setting("a whole number from 0 to 4294967295", whole(0, 2**32 - 1), null=False)
    train: setting("true or false (false: only test the checkpoint named by ckpt_path)", flag, null=False)
    resume: setting("true, false or latest", flag, equals("latest"), null=False)
    ckpt_path: setting("the path of a checkpoint (.ckpt)", text)
    optimized_metric: setting("the name of a logged metric (val/acc_best, test/acc, ...)", text, null=False)
    print_config: setting("true or false", flag, null=False)
    run_id: setting("a name", text, null=False)
    budget: Budget | None = None
    slurm: Slurm | None = None
    sweep: Sweep | None = None
    trainer: Trainer | None = None
    model: Model | None = None
    data: Data | None = None


class Sweeper(Section):
    """hydra.sweeper: the nnlab sweeper's own settings (conf/hydra/sweeper/grid.yaml, optuna.yaml)."""

    study_name: setting("a study name (null: <model>-<hash of the overrides>)", text)
    storage: setting("an Optuna storage URL or a journal file *.log (null: study.db in the sweep directory)", text)
    direction: setting("maximize or minimize", equals("maximize", "minimize"), null=False)
    n_trials: setting("a whole number of trials, at least 1 (null: every combination of a grid)", whole(1))
    prune_monitor: setting("the name of a metric logged at each validation (val/acc, val/loss)", text)
    replicates: setting("a whole number of runs per trial, at least 1", whole(1), null=False)
    heartbeat_s: setting("a number of seconds, above 0", real(0, above=True), null=False)
    stale_after_s: setting("a number of seconds, above 0", real(0, above=True), null=False)
    max_batch_size: setting("a whole number of trials, at least 1 (null: as the launcher decides)", whole(1))
    params: setting("a mapping of keys to sweep values ({model.lr: '1e-3,3e-3'})", mapping)


# ------------------------------------------------------------------------------------------------------ checking
# Keys of earlier versions that moved when the optimizer and the schedule became config groups (optim/, sched/).
RENAMED = {
    "model.optimizer": "optim=<name> (adamw, adam, sgd)",
    "model.scheduler": "sched=<name> (onecycle, cosine, none)",
    "model.weight_decay": "model.optim.weight_decay",
    "model.momentum": "model.optim.momentum (with optim=sgd)",
    "model.warmup_pct": "model.sched.warmup_pct",
    "model.anneal_to": "model.sched.anneal_to",
}


def renamed(overrides: list[str]) -> str | None:
    """The first command-line override that names a key of an earlier version, with its new name."""
    for o in overrides:
        key = commands.key(o)
        if key in RENAMED:
            value = o.split("=", 1)[1] if "=" in o else ""
            new = RENAMED[key]
            if "<name>" in new and value:
                new = new.split(" (")[0].replace("<name>", value)  # sched=cosine
            return f"{key} is now {new}: the optimizer and the schedule are config groups (docs/configuration.md)"
    return None


def check(schema: type[BaseModel], values: dict, prefix: str = "") -> None:
    """Raise ConfigError naming the first key of `values` (under `prefix`: "model.") that `schema` refuses."""
    try:
        schema.model_validate(values)
    except ValidationError as e:
        error = e.errors(include_url=False)[0]
        loc = [str(p) for p in error["loc"]]
        key = prefix + ".".join(loc)
        allowed = error.get("ctx", {}).get("error")
        why = str(allowed) if allowed is not None else error["msg"]
        raise ConfigError(f"{key}={shown(error['input'])}: {why}") from None


def shown(value) -> str:
    """A value as one writes it on the command line: abc, 1.5, true, null, [0, 1]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value and value.strip() == value else repr(value)
    return str(value)


def check_run(cfg) -> None:
    """The composed config (a DictConfig) against the schema, before anything is built."""
    check(Run, plain(cfg, ("budget", "slurm", "sweep", "trainer", "model", "data")))


def plain(node, sections=None):
    """`node` (a DictConfig) as plain values, interpolations resolved, for the keys the schema reads: the top's
    scalars and `sections` (the logger's are never resolved here: ${nnlab.wandb_offline:} would import W&B). A key
    whose value is ??? or refers to one is left out, for the code that reads it to name."""
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    out = {}
    for key in node:
        try:
            value = node[key]
            if isinstance(value, DictConfig):
                if sections is None or key in sections:
                    out[key] = plain(value)
            elif isinstance(value, ListConfig):
                out[key] = OmegaConf.to_container(value, resolve=True)
            else:
                out[key] = value
        except (MissingMandatoryValue, InterpolationResolutionError):
            continue
    return out


def check_sweeper(sweeper) -> None:
    """hydra.sweeper (a DictConfig) against the sweeper's schema."""
    check(Sweeper, plain(sweeper), "hydra.sweeper.")


def check_model(settings: dict) -> None:
    """A model's settings (the Classifier's arguments), as model.<key>."""
    check(Model, settings, "model.")

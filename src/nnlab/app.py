"""Where a run is assembled and carried out: the one build path.

`build(cfg, run)` makes the data module, the model, the loggers, the callbacks and the trainer from a composed config;
`fit_and_test(built, run)` trains and tests what it built; `train(cfg, run)` is both, and writes metrics.json.
train.py runs `train` inside the run's lifecycle (nnlab.run.lifecycle.Run: its directory, checks, signals and errors);
scripts/benchmark.py and scripts/gpu_check.sh measure `python train.py` itself, and build their plain loop's data
and network with `data` and `network`; the tests assemble trainers from `callbacks`, `loggers` and `trainer`.
"""

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from nnlab import timeline

log = logging.getLogger("nnlab")


def data(cfg: DictConfig):
    """The config's data module (not yet prepared or set up)."""
    return instantiate(cfg.data, _convert_="all")


def network(cfg: DictConfig):
    """The config's model: a fresh Classifier around the network cfg.model names."""
    return instantiate(cfg.model, _convert_="all", _recursive_=False)  # model.optim and model.sched stay settings


def callbacks(cfg: DictConfig) -> list:
    """The callbacks cfg.callbacks lists, in their order."""
    return [instantiate(c) for c in cfg.callbacks.values()]


def loggers(cfg: DictConfig) -> list:
    """The loggers cfg.logger lists (W&B by default)."""
    return [instantiate(c) for c in cfg.get("logger", {}).values()]


def trainer(cfg: DictConfig, callbacks: list, loggers: list = (), plugins: list = ()):
    """A Lightning Trainer as cfg.trainer configures it, with these callbacks, logging to these loggers (none: no
    logger)."""
    return instantiate(cfg.trainer, logger=list(loggers) or False, callbacks=callbacks, plugins=list(plugins))


@dataclass
class Built:
    """What `build` made, for `fit_and_test`."""

    cfg: DictConfig  # the run's config, with what is computed once set in (Run.settled): what config.yaml records
    model: Any
    datamodule: Any
    trainer: Any
    record: Any  # nnlab.run.callbacks.RunRecord
    pruning: Any = None  # a sweep trial's nnlab.pruning.PruneTrial
    ckpt_path: str | None = None  # the checkpoint fit starts from
    callbacks: list = field(default_factory=list)


def cuda_check_unguarded(trainer=None):
    """Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 when it is imported, so that asking whether there is CUDA does
    not initialise it (a process forked afterwards could not use it). torch then answers torch.cuda.is_available()
    through NVML, anew at each call while CUDA is not initialised, and Adam and AdamW ask at every step (their CUDA
    graph check): on a machine without a GPU that loads the NVML library at every step, 0.5 ms, 6-8% of the MLP's step
    (docs/performance.md). A trainer that does not train on CUDA has no use for the guard, and it is lifted for this
    process (processes it starts import Lightning and set it again); on a GPU, CUDA is initialised and torch keeps its
    answer. Without a trainer (a loop of one's own in a process that imported Lightning), always."""
    import os

    from lightning.pytorch.accelerators import CUDAAccelerator

    if trainer is None or not isinstance(trainer.accelerator, CUDAAccelerator):
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)


def build(cfg: DictConfig, run) -> Built:
    """Data module, model, loggers, callbacks and trainer for this run, in the order the run's checks need: the
    config settled, the checkpoint to resume from read and checked against the model, the data found and prepared
    (preflight), then the loggers (W&B) and the trainer."""
    import lightning as L
    import torch
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from nnlab.checkpoint import check_fits
    from nnlab.memory import keep_freed_memory
    from nnlab.run.callbacks import EpochLog, PhaseMarks, RandomState, RunRecord, StopAtBatchEnd, WeightsDigest
    from nnlab.run.cluster import join_restarted_group
    from nnlab.run.resume import resume_from

    timeline.mark("imports")
    keep_freed_memory()  # before the first training step: see nnlab/memory.py
    cfg, evaluated = run.settled(cfg)  # what is computed once: run id, classes, W&B tags, the evaluated model
    ckpt_path, start = resume_from(cfg, run.resuming, run.out, run.last_ckpt) if cfg.train else (None, None)
    L.seed_everything(cfg.seed, workers=True)
    model = network(cfg) if cfg.train else evaluated
    if start is not None:
        check_fits(model, start, ckpt_path)
        del start  # fit reads the file again itself
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    datamodule = data(cfg)
    run.preflight(datamodule)  # the data found and prepared, a tested checkpoint fitting it: before the long tree
    if cfg.print_config:
        from nnlab.run.callbacks import show_config

        show_config(cfg)

    pruning = sweep_trial(cfg) if cfg.train else None
    run.loggers = loggers(cfg)
    record = RunRecord(
        dict(HydraConfig.get().runtime.choices),
        OmegaConf.to_container(cfg, resolve=True),
        record_split=run.record_split,
        trained_on=run.trained_on(),
    )
    ours = [RandomState(), record, EpochLog(), WeightsDigest(), PhaseMarks(), StopAtBatchEnd(run.stop)]
    everyone = callbacks(cfg) + ([pruning] if pruning else []) + ours
    built = trainer(cfg, everyone, run.loggers, run.plugins())
    cuda_check_unguarded(built)
    timeline.mark("built")
    run.describe(cfg, ckpt_path if run.resuming else None)
    join_restarted_group(built, run.restarts)
    return Built(cfg, model, datamodule, built, record, pruning, ckpt_path, everyone)


def fit_and_test(built: Built, run) -> dict:
    """Fit (cfg.train), then test the best checkpoint (or the one given); a pruned sweep trial is not tested. Returns
    the metrics of both, with what the callbacks measured."""
    from nnlab.callbacks import LearningCurves, Throughput, controls_report, profiler_reports, steady_rate

    cfg, trainer, model, datamodule, pruning = built.cfg, built.trainer, built.model, built.datamodule, built.pruning
    with run.stopping(trainer):  # a signal's stop: its checkpoint written, W&B closed as preempted, the exit code
        test_ckpt, fitted = None, {}
        if cfg.train:
            trainer.fit(model, datamodule=datamodule, ckpt_path=built.ckpt_path)
            fitted = {k: v.item() for k, v in trainer.callback_metrics.items()}
            fitted |= controls_report(trainer, built.callbacks, fitted)  # parameter counts, early stopping, overfit
            test_ckpt = (trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else "") or None
        pruned = pruning is not None and pruning.pruned_at is not None
        test = [{}] if pruned else trainer.test(model, datamodule=datamodule, ckpt_path=test_ckpt)
        if pruned:
            end_pruned_trial(pruning, run.loggers)
    run.finish_wandb(0)
    timeline.mark("loggers_closed")

    throughput = next((c for c in built.callbacks if isinstance(c, Throughput)), None)
    curves = next((c for c in built.callbacks if isinstance(c, LearningCurves)), None)
    return {
        **fitted,
        **test[0],
        **({"trial_state": "pruned" if pruned else "complete"} if pruning is not None else {}),
        "epochs": trainer.current_epoch if cfg.train else None,
        "train/samples_per_s": steady_rate(throughput.samples_per_s if throughput else []),
        "train/tokens_per_s": steady_rate(throughput.tokens_per_s if throughput else []),
        # training time of this process's epochs: from each one's first step to its last, validation excluded
        "train/seconds": sum(throughput.seconds) if throughput and cfg.train else None,
        "train/epoch_seconds": throughput.seconds if throughput and cfg.train else None,
        "wall_time_s": run.elapsed(),
        "checkpoint": test_ckpt or cfg.ckpt_path,
        "resumed_from": built.ckpt_path if run.resuming else None,
        "test_overlap": built.record.overlap,  # test samples that are training samples (this run's or the checkpoint's)
        "history": curves.fitted if curves else None,  # per epoch, as curves.png draws it
        **profiler_reports(trainer),
        # seconds from the launch (a sweep's start of this trial, or this process's start) to each phase's end
        "timeline": timeline.timeline(),
        "launched_at": timeline.launched_at(),
    }


def train(cfg: DictConfig, run) -> float | None:
    """Build, fit, test, and write metrics.json (rank 0); returns the metric a sweeper optimizes (None when pruned)."""
    from nnlab.atomic import write_atomic
    from nnlab.run.cluster import leave_process_group

    built = build(cfg, run)
    metrics = fit_and_test(built, run)
    leave_process_group()
    if built.trainer.is_global_zero:
        write_atomic(run.out / "metrics.json", json.dumps(metrics, indent=2))
        tests = {k: v for k, v in metrics.items() if k.startswith("test/")}
        trained = f"  training {metrics['train/seconds']:.1f} s" if metrics["train/seconds"] is not None else ""
        log.info(f"metrics: {json.dumps(tests)}{trained}  run directory: {run.out}")
    pruned = metrics.get("trial_state") == "pruned"
    return None if pruned else metrics.get(built.cfg.optimized_metric)


def sweep_trial(cfg: DictConfig):
    """In a sweep's trial, the pruning callback; None in a single run."""
    if cfg.get("sweep") is None or cfg.sweep.trial is None:
        return None
    from nnlab.pruning import PruneTrial

    return PruneTrial(cfg.sweep.storage, cfg.sweep.name, cfg.sweep.trial, cfg.sweep.get("replicate"))


def end_pruned_trial(pruning, loggers):
    """The pruner stopped this trial: the study records it as pruned, W&B gets a `pruned` tag; no test is run."""
    from lightning.pytorch.loggers import WandbLogger
    from lightning.pytorch.utilities import rank_zero_only

    @rank_zero_only
    def record():
        pruning.record_pruned()
        for lg in loggers:
            if isinstance(lg, WandbLogger):
                lg.experiment.tags = (*lg.experiment.tags, "pruned")
                lg.experiment.summary["trial_state"] = "pruned"
        log.info(f"trial {pruning.number} pruned after epoch {pruning.pruned_at}")

    record()

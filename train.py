"""Train and test one model: `python train.py model=cnn` (README.md lists every option).

Compose the config, seed, build data, model, loggers and trainer, fit, test, write metrics.json,
and return the metric a sweeper optimizes. `train=false ckpt_path=...` only tests a checkpoint.
The run's directory, checks, signals and errors are nnlab.lifecycle.Run's.
"""

import json
import logging
import os
import sys
from pathlib import Path

from nnlab import timeline  # first: its clock starts before the heavy imports

# isort: split
import hydra
from omegaconf import DictConfig

import nnlab.config  # noqa: F401  (registers the resolvers conf/ uses)

log = logging.getLogger("nnlab")
if os.environ.get("NNLAB_CPUS"):  # hydra/launcher=parallel pins each trial (and its DDP ranks) to its own cores
    os.sched_setaffinity(0, {int(c) for c in os.environ["NNLAB_CPUS"].split(",")})


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    # torch, Lightning and W&B load only now: --help, --cfg and a mistyped key answer without them.
    timeline.mark("config")
    from nnlab.lifecycle import Run

    return Run(cfg).execute(train)


def train(cfg: DictConfig, run) -> float | None:
    import lightning as L
    import torch
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from nnlab.callbacks import LearningCurves, Throughput, controls_report, profiler_reports, steady_rate
    from nnlab.checkpoint import check_fits
    from nnlab.lifecycle import leave_process_group, write_atomic
    from nnlab.memory import keep_freed_memory
    from nnlab.run_callbacks import (
        EpochLog,
        PhaseMarks,
        RandomState,
        RunRecord,
        StopAtBatchEnd,
        WeightsDigest,
        show_config,
    )

    timeline.mark("imports")
    keep_freed_memory()  # before the first training step: see nnlab/memory.py
    cfg, evaluated = run.settled(cfg)  # what is computed once: run id, classes, W&B tags, the evaluated model
    ckpt_path, start = run.resume_from() if cfg.train else (None, None)
    L.seed_everything(cfg.seed, workers=True)
    model = instantiate(cfg.model, _convert_="all") if cfg.train else evaluated
    if start is not None:
        check_fits(model, start, ckpt_path)
        del start  # fit reads the file again itself
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    datamodule = instantiate(cfg.data, _convert_="all")
    run.preflight(datamodule)  # the data found and prepared, a tested checkpoint fitting it: before the long tree
    if cfg.print_config:
        show_config(cfg)

    pruning = sweep_trial(cfg) if cfg.train else None
    run.loggers = [instantiate(c) for c in cfg.get("logger", {}).values()]
    record = RunRecord(
        dict(HydraConfig.get().runtime.choices),
        OmegaConf.to_container(cfg, resolve=True),
        record_split=run.record_split,
        trained_on=run.trained_on(),
    )
    callbacks = (
        [instantiate(c) for c in cfg.callbacks.values()]
        + ([pruning] if pruning else [])
        + [RandomState(), record, EpochLog(), WeightsDigest(), PhaseMarks(), StopAtBatchEnd(run.stop)]
    )
    trainer: L.Trainer = instantiate(
        cfg.trainer, logger=run.loggers or False, callbacks=callbacks, plugins=run.plugins()
    )
    timeline.mark("built")
    run.describe(cfg, ckpt_path if run.resuming else None)
    run.join_restarted_group(trainer)

    with run.stopping(trainer):  # a signal's stop: its checkpoint written, W&B closed as preempted, the exit code
        test_ckpt = None
        if cfg.train:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
            fitted = {k: v.item() for k, v in trainer.callback_metrics.items()}
            fitted |= controls_report(trainer, callbacks, fitted)  # parameter counts, early stopping, overfit check
            test_ckpt = (trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else "") or None
        pruned = pruning is not None and pruning.pruned_at is not None
        test = [{}] if pruned else trainer.test(model, datamodule=datamodule, ckpt_path=test_ckpt)
        if pruned:
            end_pruned_trial(pruning, run.loggers)
    run.finish_wandb(0)
    timeline.mark("loggers_closed")

    throughput = next((c for c in callbacks if isinstance(c, Throughput)), None)
    curves = next((c for c in callbacks if isinstance(c, LearningCurves)), None)
    metrics = {
        **(fitted if cfg.train else {}),
        **test[0],
        **({"trial_state": "pruned" if pruned else "complete"} if pruning is not None else {}),
        "epochs": trainer.current_epoch if cfg.train else None,
        "train/samples_per_s": steady_rate(throughput.samples_per_s if throughput else []),
        "train/tokens_per_s": steady_rate(throughput.tokens_per_s if throughput else []),
        # training time of this process's epochs: from each one's first step to its last, validation excluded
        "train/seconds": sum(throughput.seconds) if throughput and cfg.train else None,
        "wall_time_s": run.elapsed(),
        "checkpoint": test_ckpt or cfg.ckpt_path,
        "resumed_from": ckpt_path if run.resuming else None,
        "test_overlap": record.overlap,  # test samples that are training samples (of this run, or the checkpoint's)
        "history": curves.fitted if curves else None,  # per epoch, as curves.png draws it
        **profiler_reports(trainer),
        # seconds from the launch (a sweep's start of this trial, or this process's start) to each phase's end
        "timeline": timeline.timeline(),
        "launched_at": timeline.launched_at(),
    }
    leave_process_group()
    if trainer.is_global_zero:
        write_atomic(run.out / "metrics.json", json.dumps(metrics, indent=2))
        tests = {k: v for k, v in metrics.items() if k.startswith("test/")}
        trained = f"  training {metrics['train/seconds']:.1f} s" if metrics["train/seconds"] is not None else ""
        log.info(f"metrics: {json.dumps(tests)}{trained}  run directory: {run.out}")
    return None if pruned else metrics.get(cfg.optimized_metric)


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


def evaluated_model(argv: list[str]) -> list[str]:
    """`train=false ckpt_path=X` without model=...: evaluate the model the checkpoint holds, with its default data
    (the config groups it was trained with are recorded in it), so config.yaml and W&B name what was evaluated."""
    args = [a.lstrip("+") for a in argv[1:]]
    if (
        "-m" in args
        or "--multirun" in args
        or not any(a.lower() == "train=false" for a in args)
        or any(a.startswith(("model=", "experiment=")) for a in args)
    ):
        return argv
    path = next((a.split("=", 1)[1] for a in args if a.startswith("ckpt_path=")), None)
    if not path:
        return argv
    from nnlab.checkpoint import read_checkpoint
    from nnlab.errors import CheckpointError

    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError as e:
        sys.exit(f"Error: {e}")
    conf = Path(__file__).resolve().parent / "conf"
    choices = checkpoint.get("nnlab", {}).get("choices", {})
    model = choices.get("model") or checkpoint["hyper_parameters"].get("net")
    extra = [f"model={model}"] if model and (conf / "model" / f"{model}.yaml").is_file() else []
    if (experiment := choices.get("experiment")) and (conf / "experiment" / f"{experiment}.yaml").is_file():
        extra.append(f"experiment={experiment}")
    data = choices.get("data")
    if data and (conf / "data" / f"{data}.yaml").is_file() and not any(a.startswith("data=") for a in args):
        extra.append(f"data={data}")  # an image model trained on your folder is tested on it, not on MNIST
    return argv + extra


def resume_latest(argv: list[str]) -> list[str]:
    """`resume=latest`: continue the most recent stopped or killed run of this same command (the other overrides
    equal) under paths.log_dir, as `resume=true hydra.run.dir=<its directory>` would."""
    args = argv[1:]
    if not any(a.lower() == "resume=latest" for a in args) or "-m" in args or "--multirun" in args:
        return argv
    others = [a for a in args if a.lower() != "resume=latest"]
    root = Path(next((a.split("=", 1)[1] for a in others if a.startswith("paths.log_dir=")), "outputs"))
    from nnlab import commands
    from nnlab.runs import latest_to_resume

    found = latest_to_resume(root, others)
    if found is None:
        sys.exit(
            f"Error: resume=latest: no stopped or killed run of this command under {root} (python -m nnlab.runs "
            f"--root {commands.path(root)} lists runs and their states); leave out resume=latest to start a new run"
        )
    print(f"resume=latest: continuing the {found.state} run in {found.dir} (started {found.when})", file=sys.stderr)
    return [argv[0], *others, "resume=true", f"hydra.run.dir={found.dir}"]


def leave():
    """End a run that returned normally without tearing the interpreter down: the exit handlers run (log files
    flushed, W&B's service stopped, temporary folders removed, worker processes joined), but not the destruction of
    every module object, which takes 2-3 s with torch and Lightning loaded, at the end of every run and sweep trial."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.argv = evaluated_model(resume_latest(sys.argv))
    main()  # errors and signal stops leave through SystemExit, with their exit codes
    leave()

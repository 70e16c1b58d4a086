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

import hydra
from omegaconf import DictConfig, open_dict

import nnlab.config  # noqa: F401  (registers the resolvers conf/ uses)

log = logging.getLogger("nnlab")
if os.environ.get("NNLAB_CPUS"):  # hydra/launcher=parallel pins each trial (and its DDP ranks) to its own cores
    os.sched_setaffinity(0, {int(c) for c in os.environ["NNLAB_CPUS"].split(",")})


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    # torch, Lightning and W&B load only now: --help, --cfg and a mistyped key answer without them.
    from nnlab.lifecycle import Run

    return Run(cfg).execute(train)


def train(cfg: DictConfig, run) -> float | None:
    import lightning as L
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from nnlab.callbacks import Throughput, steady_rate
    from nnlab.checkpoint import RandomState, check_fits, model_from_checkpoint, read_checkpoint
    from nnlab.lifecycle import EpochLog, RunRecord, WeightsDigest, check_pairing, leave_process_group, write_atomic
    from nnlab.memory import keep_freed_memory

    keep_freed_memory()  # before the first training step: see nnlab/memory.py
    ckpt_path, start = run.resume_from() if cfg.train else (None, None)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.train:
        check_pairing(cfg, cfg.model.net)
        if cfg.data.get("num_classes", 0) is None:
            # A data set that finds its classes (Speech Commands' word folders) says how many before the model is built.
            with open_dict(cfg):
                cfg.data.num_classes = len(instantiate(cfg.data, _convert_="all").class_names_found())
        model = instantiate(cfg.model, _convert_="all")
        if start is not None:
            check_fits(model, start, ckpt_path)
            del start  # fit reads the file again itself
    else:  # evaluate what the checkpoint holds; the config records it
        checkpoint = read_checkpoint(cfg.ckpt_path)
        model = model_from_checkpoint(checkpoint, cfg.ckpt_path)
        with open_dict(cfg):
            cfg.model = {"_target_": "nnlab.module.Classifier", **checkpoint["hyper_parameters"]}
            given = {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
            recorded = checkpoint.get("nnlab", {}).get("data") or {}
            if "data" not in given:  # the data settings it was trained with (a tokenizer's vocabulary, say)
                for key, value in recorded.items():
                    if key in cfg.data and key not in WHERE_DATA_IS and f"data.{key}" not in given:
                        cfg.data[key] = value
        check_pairing(cfg, model.hparams.net)
    import torch

    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    datamodule = instantiate(cfg.data, _convert_="all")

    pruning = sweep_trial(cfg) if cfg.train else None
    resolved = OmegaConf.to_container(cfg, resolve=True)
    run.loggers = [instantiate(c) for c in cfg.get("logger", {}).values()]
    record = RunRecord(dict(HydraConfig.get().runtime.choices), resolved)
    callbacks = [instantiate(c) for c in cfg.callbacks.values()] + ([pruning] if pruning else []) + [
        RandomState(), record, EpochLog(), WeightsDigest(), run.stop]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=run.loggers or False, callbacks=callbacks,
                                     plugins=run.plugins())
    run.describe(cfg, ckpt_path if run.resuming else None)
    run.join_restarted_group(trainer)

    try:
        metrics = {}
        if cfg.train:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
            metrics.update({k: v.item() for k, v in trainer.callback_metrics.items()})
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            test_ckpt = best or None
        else:
            test_ckpt = None
        pruned = pruning is not None and pruning.pruned_at is not None
        test = [{}] if pruned else trainer.test(model, datamodule=datamodule, ckpt_path=test_ckpt)
        if pruned:
            end_pruned_trial(pruning, run.loggers)
    except BaseException as e:
        if run.stopped(e):
            run.end_stopped(trainer)
        raise
    run.finish_wandb(0)

    metrics.update(test[0])
    if pruning is not None:
        metrics["trial_state"] = "pruned" if pruned else "complete"
    throughput = next((c for c in callbacks if isinstance(c, Throughput)), None)
    metrics.update(
        {
            "epochs": trainer.current_epoch if cfg.train else None,
            "train/samples_per_s": steady_rate(throughput.samples_per_s if throughput else []),
            "train/tokens_per_s": steady_rate(throughput.tokens_per_s if throughput else []),
            "wall_time_s": run.elapsed(),
            "checkpoint": test_ckpt or cfg.ckpt_path,
            "resumed_from": ckpt_path if run.resuming else None,
        }
    )
    leave_process_group()
    if trainer.is_global_zero:
        write_atomic(run.out / "metrics.json", json.dumps(metrics, indent=2))
        tests = {k: v for k, v in metrics.items() if k.startswith("test/")}
        log.info(f"metrics: {json.dumps(tests)}  run directory: {run.out}")
    return None if pruned else metrics.get(cfg.optimized_metric)


# Data settings that say where the data is on this machine, not what it is: never taken from a checkpoint.
WHERE_DATA_IS = ("data_dir", "cache_dir", "download", "workers")


def sweep_trial(cfg: DictConfig):
    """In a sweep's trial: the pruning callback, and the trial's overrides as W&B tags. None in a single run."""
    if cfg.get("sweep") is None or cfg.sweep.trial is None:
        return None
    from hydra.core.hydra_config import HydraConfig

    from nnlab.pruning import PruneTrial

    if "wandb" in cfg.get("logger", {}):
        skip = ("sweep.", "hydra.", "run_id=", "run_name=", "resume=", "paths.")
        tags = [o.lstrip("+~")[:64] for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(skip)]
        cfg.logger.wandb.tags = [*cfg.logger.wandb.tags, *tags]
    return PruneTrial(cfg.sweep.storage, cfg.sweep.name, cfg.sweep.trial)


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
    if "-m" in args or "--multirun" in args or not any(a.lower() == "train=false" for a in args) \
            or any(a.startswith(("model=", "experiment=")) for a in args):
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
    return argv + extra


if __name__ == "__main__":
    sys.argv = evaluated_model(sys.argv)
    main()

"""Train and test one model: `python train.py model=cnn` (README.md lists every option).

Compose the config, seed, build data, model, loggers and trainer, fit, test, write metrics.json,
and return the metric a sweeper optimizes. `train=false ckpt_path=...` only tests a checkpoint.
"""

import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

import nnlab.config  # noqa: F401  (registers the resolvers conf/ uses)
from nnlab.atomic import atomic_open
from nnlab.callbacks import AtomicCheckpointIO, Throughput, steady_rate
from nnlab.memory import keep_freed_memory
from nnlab.module import Classifier
from nnlab.preemption import SignalStop, Stopped, in_slurm_batch_job, job_id, requeue_job, requeue_signal

keep_freed_memory()  # before the first training step: see nnlab/memory.py
if os.environ.get("NNLAB_CPUS"):  # hydra/launcher=parallel pins each trial (and its DDP ranks) to its own cores
    os.sched_setaffinity(0, {int(c) for c in os.environ["NNLAB_CPUS"].split(",")})

log = logging.getLogger("nnlab")


def write_atomic(path: Path, text: str):
    with atomic_open(path) as f:
        f.write(text.encode())


def git_state() -> dict:
    here = Path(__file__).resolve().parent
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=here, capture_output=True, text=True, check=True).stdout  # noqa: E731
        return {"commit": run("rev-parse", "HEAD").strip(), "dirty": bool(run("status", "--porcelain").strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


SLURM_FACTS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_NTASKS", "SLURM_NNODES",
               "SLURM_JOB_NODELIST", "SLURM_RESTART_COUNT")


@rank_zero_only
def describe_run(out: Path, cfg: DictConfig):
    """The run directory holds what reproduces it: resolved config, commit, versions, command."""
    write_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    info = {
        "run_id": cfg.run_id,
        "command": [sys.executable, *sys.argv],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "cpus": sorted(os.sched_getaffinity(0)),
        "slurm": {k[6:].lower(): os.environ[k] for k in SLURM_FACTS if k in os.environ},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "git": git_state(),
        "packages": {d.metadata["Name"]: d.version for d in sorted(metadata.distributions(), key=lambda d: d.metadata["Name"].lower())},
    }
    write_atomic(out / "run.json", json.dumps(info, indent=2))


def check_pairing(cfg: DictConfig, model_input: str):
    if model_input != cfg.data.kind:
        choices = HydraConfig.get().runtime.choices
        raise ValueError(
            f"model={choices.get('model')} reads {model_input!r} data but data={choices.get('data')} provides "
            f"{cfg.data.kind!r} data. Drop the data=... override (each model picks its own dataset) or pick a "
            "dataset of the kind the model reads."
        )


@rank_zero_only
def end_pruned_trial(pruning, loggers):
    """The pruner stopped this trial: the study records it as pruned, W&B gets a `pruned` tag; no test is run."""
    pruning.record_pruned()
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.tags = (*lg.experiment.tags, "pruned")
            lg.experiment.summary["trial_state"] = "pruned"
    log.info(f"trial {pruning.number} pruned after epoch {pruning.pruned_at}")


@rank_zero_only
def finish_wandb(loggers, exit_code: int, preempted: bool = False):
    """Close the W&B run (marked failed on a non-zero exit code, preempted when it will be resumed) so the next run
    in this process is a new one."""
    for lg in loggers:
        if isinstance(lg, WandbLogger) and lg._experiment is not None:
            run_dir = Path(lg.experiment.dir).parent
            offline = lg._offline
            if preempted:
                lg.experiment.mark_preempting()
            lg.experiment.finish(exit_code=exit_code)
            if offline:
                print(f"W&B is offline (no credentials found); upload this run with: wandb sync {run_dir}")


def sweep_trial(cfg: DictConfig):
    """In a sweep's trial: the pruning callback, and the trial's overrides as W&B tags. None in a single run."""
    if cfg.get("sweep") is None or cfg.sweep.trial is None:
        return None
    from nnlab.sweep import PruneTrial

    if "wandb" in cfg.get("logger", {}):
        skip = ("sweep.", "hydra.", "run_id=", "run_name=", "resume=", "paths.")
        tags = [o.lstrip("+~")[:64] for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(skip)]
        cfg.logger.wandb.tags = [*cfg.logger.wandb.tags, *tags]
    return PruneTrial(cfg.sweep.storage, cfg.sweep.name, cfg.sweep.trial)


def check_launch(cfg: DictConfig):
    """DDP that Lightning starts itself re-runs this process's command line: inside an in-process multirun that is
    the whole sweep again (Lightning issue 11300). The default trial launcher gives each trial its own command."""
    from hydra.types import RunMode

    devices = cfg.trainer.get("devices", 1)
    many = devices in (-1, "auto") or (isinstance(devices, int) and devices > 1) or isinstance(devices, (list, str))
    started_outside = any(k in os.environ for k in ("LOCAL_RANK", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID"))
    if HydraConfig.get().mode == RunMode.MULTIRUN and "ddp" in str(cfg.trainer.get("strategy")) and many \
            and not started_outside:
        launcher = HydraConfig.get().runtime.choices.get("hydra/launcher")
        raise ValueError(f"trainer.strategy={cfg.trainer.strategy} with devices={devices} inside a multirun that runs "
                         f"trials in this process (hydra/launcher={launcher}): "
                         "DDP would re-run the whole sweep in every rank. Use the default hydra/launcher=trials "
                         "(each trial its own process) or hydra/launcher=parallel.")


def check_slurm(cfg: DictConfig):
    """Under SLURM, srun starts one process per task and Lightning takes rank and world size from SLURM's environment.
    A job whose tasks do not match the trainer would hang in the rendezvous or spawn processes of its own: say so
    before anything is built."""
    env = os.environ
    interactive = env.get("SLURM_JOB_NAME") in ("bash", "interactive")  # Lightning starts its own processes there
    if "SLURM_NTASKS" not in env or interactive or int(env["SLURM_NTASKS"]) == 1:
        return
    ntasks, nodes = int(env["SLURM_NTASKS"]), int(env.get("SLURM_NNODES", "1"))
    if "SLURM_STEP_ID" not in env:
        raise ValueError(f"this SLURM job has {ntasks} tasks, but train.py runs in the batch script itself: start it "
                         "with `srun python train.py ...`, which starts one process per task (scripts/slurm/)")
    devices, num_nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1) or 1
    if isinstance(devices, int) and devices > 0 and (devices * num_nodes != ntasks or num_nodes != nodes):
        raise ValueError(f"the SLURM job has {nodes} node(s) x {ntasks // nodes} task(s) per node, but the trainer "
                         f"asks for trainer.num_nodes={num_nodes} x trainer.devices={devices}: Lightning runs one "
                         f"process per device, each a SLURM task. Submit with --nodes={num_nodes} "
                         f"--ntasks-per-node={devices} (and as many GPUs per node), or set trainer.num_nodes={nodes} "
                         f"trainer.devices={ntasks // nodes}.")


def leave_process_group():
    """Under DDP, destroy the process group while the interpreter is still whole: left to interpreter shutdown, gloo's
    threads can abort the process ("terminate called without an active exception", PyTorch issue 190489; seen on a
    2-task SLURM job). Only on orderly ends, where every rank gets here."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def end_stopped_run(stop: SignalStop, trainer: L.Trainer, loggers, cfg: DictConfig):
    """Training stopped on a signal with its checkpoint written: close the W&B run as preempted, requeue the SLURM
    job if the signal asked for it, and exit (0 when requeued, 128 + the signal otherwise)."""
    requeue = stop.requeue_requested and cfg.slurm.requeue
    log.warning(f"{stop.received.name} received: training stopped at epoch {trainer.current_epoch}, step "
                f"{trainer.global_step}; checkpoint {stop.checkpoint if stop.saved else 'not needed (fit was over)'}"
                + ("" if requeue else "; rerun with resume=true and the same hydra.run.dir to continue"))
    try:
        finish_wandb(loggers, 0 if requeue else 1, preempted=True)
    except Exception as e:  # noqa: BLE001  SLURM signals every process of the job: W&B's service may be gone already
        log.warning(f"could not close the W&B run ({e}); the resumed run continues it")
    requeued = requeue and (not trainer.is_global_zero or requeue_job())
    leave_process_group()
    raise SystemExit(0 if requeued else 128 + stop.received)


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    start = time.perf_counter()
    out = Path(HydraConfig.get().runtime.output_dir)
    last_ckpt = Path(cfg.callbacks.last_checkpoint.dirpath) / "last.ckpt"
    slurm_job, requeue_on = in_slurm_batch_job(), requeue_signal(cfg.slurm.signal)  # a bad name fails anywhere
    # Installed first: SIGTERM or the requeue signal while data loads must not kill the run before its checkpoint.
    stop = SignalStop(last_ckpt, requeue_on if slurm_job else None).install()
    try:
        return run(cfg, out, last_ckpt, stop, slurm_job, start)
    finally:
        stop.uninstall()


def run(cfg: DictConfig, out: Path, last_ckpt: Path, stop: SignalStop, slurm_job: bool, start: float):
    ckpt_path = cfg.ckpt_path
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0")) if slurm_job else 0
    if restarts:  # a requeued job (ours, or SLURM's after a preemption or node failure) continues where it stopped
        log.info(f"SLURM restarted job {job_id()} (restart {restarts}): resuming")
    if cfg.resume or restarts:
        if (out / "run.json").is_file():  # keep the run's id, so W&B continues the same run instead of a second one
            cfg.run_id = json.loads((out / "run.json").read_text())["run_id"]
        if last_ckpt.is_file():
            ckpt_path = str(last_ckpt)
        else:
            log.warning(f"{'resume=true' if cfg.resume else 'restarted'} but {last_ckpt} does not exist: "
                        f"starting from scratch in {out}")

    check_launch(cfg)
    check_slurm(cfg)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    L.seed_everything(cfg.seed, workers=True)

    if cfg.train:
        check_pairing(cfg, cfg.model.input)
        if cfg.data.get("num_classes", 0) is None:
            # A data set that finds its classes (Speech Commands' word folders) says how many before the model is built.
            cfg.data.num_classes = len(instantiate(cfg.data, _convert_="all").class_names_found())
        model = instantiate(cfg.model, _convert_="all")
    else:
        if not cfg.ckpt_path:
            raise ValueError("train=false tests a checkpoint: add ckpt_path=<path to a .ckpt file>")
        model = Classifier.load_from_checkpoint(cfg.ckpt_path, map_location="cpu")
        check_pairing(cfg, model.hparams.input)
    datamodule = instantiate(cfg.data, _convert_="all")

    pruning = sweep_trial(cfg) if cfg.train else None
    loggers = [instantiate(c) for c in cfg.get("logger", {}).values()]
    callbacks = [instantiate(c) for c in cfg.callbacks.values()] + ([pruning] if pruning else []) + [stop]
    plugins = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():  # ranks from SLURM; requeueing is SignalStop's alone (nnlab/preemption.py)
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, plugins=plugins)
    describe_run(out, cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for lg in loggers:
        lg.log_hyperparams(resolved)

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
            end_pruned_trial(pruning, loggers)
    except (Stopped, SIGTERMException):
        if stop.received is None:
            raise
        end_stopped_run(stop, trainer, loggers, cfg)
    except BaseException:
        log.exception(f"run failed; its directory: {out}")  # into train.log, and W&B's copy of the console
        finish_wandb(loggers, 1)
        raise
    finish_wandb(loggers, 0)

    metrics.update(test[0])
    if pruning is not None:
        metrics["trial_state"] = "pruned" if pruned else "complete"
    throughput = next((c for c in callbacks if isinstance(c, Throughput)), None)
    metrics.update(
        {
            "epochs": trainer.current_epoch if cfg.train else None,
            "train/samples_per_s": steady_rate(throughput.samples_per_s if throughput else []),
            "train/tokens_per_s": steady_rate(throughput.tokens_per_s if throughput else []),
            "wall_time_s": time.perf_counter() - start,
            "checkpoint": test_ckpt or cfg.ckpt_path,
            "resumed_from": ckpt_path if cfg.resume or restarts else None,
        }
    )
    leave_process_group()
    if trainer.is_global_zero:
        write_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
        log.info(f"metrics: {json.dumps({k: v for k, v in metrics.items() if k.startswith('test/')})}  run directory: {out}")
    return None if pruned else metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    main()

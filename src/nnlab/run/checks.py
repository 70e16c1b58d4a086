"""Settings that would fail deep inside torch or Lightning, or silently do nothing, refused with the key and the fix
before anything is built: what the schema (nnlab.schema, each key's type and range) cannot say, settings that do not
work together or not on this machine."""

import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nnlab import commands, objectives
from nnlab import optim as optimization
from nnlab.cpu import cpu_has_bf16, cpu_name
from nnlab.errors import ConfigError
from nnlab.run.directory import latest_run


def check_settings(cfg: DictConfig, explicit_run_dir: bool, restarted: bool):
    """The run's settings that do not work together, or not here, refused with the keys and the fix."""
    if cfg.resume and not explicit_run_dir and not restarted and cfg.sweep.trial is None:
        latest = latest_run(Path(cfg.paths.log_dir))
        hint = f" (the latest run here: {commands.path(commands.override('hydra.run.dir', latest))})" if latest else ""
        raise ConfigError(f"resume=true continues a run in its own directory: add hydra.run.dir=<run directory>{hint}")
    for key in ("data_dir", "cache_dir", "log_dir"):  # a file where a folder is meant fails deep inside otherwise
        where = Path(str(cfg.paths[key])).expanduser()
        if where.exists() and not where.is_dir():
            env = os.environ.get("NNLAB_DATA_DIR")
            named = f"NNLAB_DATA_DIR={env} (paths.data_dir)" if key == "data_dir" and env else f"paths.{key}={where}"
            fix = ": point it at the folder that holds MNIST/, aclImdb/, ..." if key == "data_dir" else ""
            raise ConfigError(f"{named} is a file, not a folder{fix}")
    if not cfg.train:
        if not cfg.ckpt_path:
            raise ConfigError("train=false tests a checkpoint: add ckpt_path=<path to a .ckpt file>")
        return
    t = cfg.trainer
    endless = t.get("max_epochs") == -1 and t.get("max_steps", -1) in (-1, None) and not t.get("max_time")
    if endless and optimization.scheduled(cfg.model.get("sched")):
        choice = HydraConfig.get().runtime.choices.get("sched") or cfg.model.sched._target_
        raise ConfigError(
            f"sched={choice} runs over the whole training, but trainer.max_epochs=-1 with no trainer.max_steps or "
            "trainer.max_time trains without end: give one of the three (the schedule then spans it), or sched=none"
        )
    if cfg.model.get("objective"):  # its settings, before torch is imported
        objectives.build(OmegaConf.to_container(cfg.model.objective, resolve=True))
    check_devices(str(t.get("accelerator")), str(t.get("precision")), t.get("devices"))


def check_devices(accelerator: str, precision: str, devices):
    """A GPU asked for where torch finds none (or fewer), and bf16 on a CPU without bf16 instructions. torch is
    imported only where the answer needs it: a GPU asked for, or bf16 on whatever device there is."""
    if accelerator not in ("gpu", "cuda") and not precision.startswith("bf16"):
        return
    if accelerator == "cpu":
        cuda = False
    else:
        import torch

        cuda = torch.cuda.is_available()
    if accelerator in ("gpu", "cuda") and not cuda:
        raise ConfigError(
            f"trainer.accelerator={accelerator} (trainer=gpu or trainer=ddp) but this machine has no "
            "CUDA GPU that torch can use: leave out trainer= (the default uses a GPU when there is one, "
            "else the CPU), or trainer=cpu / trainer=ddp_cpu"
        )
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not cuda)
    if precision.startswith("bf16") and on_cpu and not cpu_has_bf16():
        raise ConfigError(
            f"trainer.precision={precision} on a CPU without bf16 instructions ({cpu_name()}: no AVX512_BF16 or AMX "
            "on x86, no BF16 on Arm): autocast would emulate bf16, 8 to 20 times slower than 32-true on such a CPU "
            "(docs/configuration.md, Controls). Use trainer=cpu, or trainer=cpu_bf16 on a CPU that has them"
        )
    if accelerator in ("gpu", "cuda") and isinstance(devices, int) and devices > torch.cuda.device_count():
        raise ConfigError(
            f"trainer.devices={devices} but this machine has {torch.cuda.device_count()} GPU(s): "
            "give trainer.devices=-1 for all of them"
        )


def check_pairing(cfg: DictConfig, net: str):
    """The network reads the kind of data the data module provides (both declare it: nnlab.kinds)."""
    from hydra.utils import get_class

    from nnlab.kinds import reads_from
    from nnlab.nets import network

    reads, provides = network(net).reads, getattr(get_class(cfg.data._target_), "kind", None)
    if not reads_from(reads, provides):
        choices = HydraConfig.get().runtime.choices
        what = "one tensor per sample (images, audio, rows of numbers)" if reads == "tensor" else f"{reads!r} data"
        raise ConfigError(
            f"model={choices.get('model')} reads {what} but data={choices.get('data')} provides "
            f"{provides!r} data. Drop the data=... override (each model picks its own dataset) or pick a "
            "dataset of the kind the model reads."
        )

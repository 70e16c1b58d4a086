"""OmegaConf resolvers used by conf/, registered on import."""

import os
import secrets
from pathlib import Path

from omegaconf import OmegaConf

from nnlab import commands


def wandb_offline() -> bool:
    """Offline unless W&B credentials are found (WANDB_API_KEY or ~/.netrc) or WANDB_MODE says otherwise."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "dryrun", "disabled"):
        return True
    if mode == "online" or os.environ.get("WANDB_API_KEY"):
        return False
    from wandb.sdk.lib import wbauth

    try:
        return not wbauth.read_netrc_auth(host=os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    except Exception:  # noqa: BLE001  an unreadable ~/.netrc means no credentials
        return True


def parallel_slots() -> int:
    """Trials at once for hydra/launcher=parallel: one per GPU; without GPUs, two."""
    import torch

    return torch.cuda.device_count() or 2


def run_id() -> str:
    """A fresh id; under a W&B Sweeps agent, the id of the run the agent created for this command."""
    if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
        return os.environ["WANDB_RUN_ID"]
    return secrets.token_hex(4)


def overridden(key: str) -> bool:
    """Whether the command line sets `key` (trainer.max_epochs=20, say); False outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    return any(commands.key(o) == key for o in HydraConfig.get().overrides.task)


# use_cache: one id per config, however often the run directory is resolved.
# The folder a command keeps its data and runs in (paths.data_dir, paths.log_dir): set by nnlab.train.main, the
# working folder for `nnlab train`, the clone's for `python train.py` (wherever it is started from).
HOME: Path | None = None


def home(name: str) -> str:
    """`name` (data, outputs) in this command's folder (HOME): as given where that is the working folder, so a run
    started there records and prints the paths it always did."""
    if HOME is None or Path.cwd() == HOME:
        return name
    return str(HOME / name)


OmegaConf.register_new_resolver("nnlab.home", home, replace=True)
OmegaConf.register_new_resolver("nnlab.run_id", run_id, use_cache=True, replace=True)
OmegaConf.register_new_resolver("nnlab.wandb_offline", wandb_offline, replace=True)
OmegaConf.register_new_resolver("nnlab.parallel_slots", parallel_slots, replace=True)
OmegaConf.register_new_resolver("nnlab.overridden", overridden, replace=True)

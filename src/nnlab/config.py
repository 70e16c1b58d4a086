"""OmegaConf resolvers used by conf/, registered on import."""

import os
import secrets

from omegaconf import OmegaConf


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
    except Exception:  # an unreadable ~/.netrc means no credentials
        return True


# use_cache: one id per config, however often the run directory is resolved.
OmegaConf.register_new_resolver("nnlab.run_id", lambda: secrets.token_hex(4), use_cache=True, replace=True)
OmegaConf.register_new_resolver("nnlab.wandb_offline", wandb_offline, replace=True)

"""How a run speaks: Lightning's advertisements and internals kept off the screen, and the tracebacks behind warnings
sent to train.log only (the DETAILS logger). `quiet()` is called when a run starts, before Lightning is imported."""

import logging
import os
import warnings

DETAILS = "nnlab.details"  # a logger whose records (the tracebacks behind warnings) go to train.log, not the screen


# Lightning's lines that are advertisements or internals, not information about this run.
QUIET_LIGHTNING = (
    "💡 Tip:",
    "Loading `train_dataloader` to estimate",
    "TPU available:",
    "HPU available:",
    "\nDetected KeyboardInterrupt",
)


def quiet_lightning(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(QUIET_LIGHTNING)


def quiet():
    """Silence warnings that say nothing to this project's users (before Lightning is imported), and W&B's banner and
    history table (its warnings and errors remain)."""
    warnings.filterwarnings("ignore", message=".*srun. command is available on your system but is not used")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
    warnings.filterwarnings("ignore", message="The number of training batches .* is smaller than the logging interval")
    os.environ.setdefault("WANDB_QUIET", "true")

"""What a run's directory records about how it ran (run.json, config.yaml, .hydra/, end.json)."""

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

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nnlab.atomic import write_atomic
from nnlab.run.cluster import SLURM_FACTS

log = logging.getLogger("nnlab")


def git_state() -> dict:
    here = Path(__file__).resolve().parent
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=here, capture_output=True, text=True, check=True).stdout
        return {"commit": run("rev-parse", "HEAD").strip(), "dirty": bool(run("status", "--porcelain").strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def start_facts(threads: dict | None) -> dict:
    """When, how and where this start of the run runs (run.json; a resumed run keeps earlier starts' too)."""
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [sys.executable, *sys.argv],
        "host": socket.gethostname(),
        "cpus": sorted(os.sched_getaffinity(0)),
        "torch_threads": threads,
        "slurm": {k[6:].lower(): os.environ[k] for k in SLURM_FACTS if k in os.environ},
    }


def claim(out: Path, run_id: str, threads: dict | None):
    """Mark the directory as this run's before anything else is written there (train.log, a failure's end.json): a
    first run.json, which describe() completes once the run is built."""
    write_atomic(out / "run.json", json.dumps({"run_id": run_id, **start_facts(threads)}, indent=2))


def describe(out: Path, cfg: DictConfig, resumed_from: str | None, threads: dict | None):
    """The directory holds what reproduces the run: resolved config, commit, versions, command; the composed,
    unresolved config and the overrides in .hydra/ (Hydra's own copy is off: it would be written before the
    directory's lock and checks)."""
    import torch

    hc = HydraConfig.get()
    write_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    start = start_facts(threads)
    try:
        previous = json.loads((out / "run.json").read_text()) if resumed_from else {}
    except (OSError, ValueError):
        previous = {}
    earlier = [{k: previous[k] for k in start if k in previous}] if previous else []
    info = {
        "run_id": cfg.run_id,
        **start,  # this start; a resumed run lists the starts before it
        "resumed_from": resumed_from,
        "earlier_starts": previous.get("earlier_starts", []) + earlier,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "git": git_state(),
        "packages": {
            d.metadata["Name"]: d.version
            for d in sorted(metadata.distributions(), key=lambda d: d.metadata["Name"].lower())
        },
    }
    write_atomic(out / "run.json", json.dumps(info, indent=2))
    (out / "end.json").unlink(missing_ok=True)  # how an earlier start of this run ended
    write_atomic(out / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
    write_atomic(out / ".hydra" / "hydra.yaml", OmegaConf.to_yaml({"hydra": hc}))
    write_atomic(out / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(list(hc.overrides.task)))


def record_split(out: Path, split: dict):
    """run.json records how the data was split (nnlab.data.split_record): the counts and a digest."""
    try:
        info = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return
    if isinstance(info, dict):
        write_atomic(out / "run.json", json.dumps({**info, "split": split}, indent=2))


def recorded_run_id(out: Path) -> str | None:
    """The run id in run.json, so W&B continues the same run instead of starting a second one."""
    if not (out / "run.json").is_file():
        return None
    try:
        return json.loads((out / "run.json").read_text())["run_id"]
    except (ValueError, KeyError) as e:
        log.warning(
            f"cannot read the run id from {out / 'run.json'} ({type(e).__name__}): W&B records "
            "the resumed run under a new id"
        )
        return None


def write_end(out: Path, state: str, **facts):
    """end.json: how this start of the run ended when it did not finish (failed, stopped by a signal), for the run
    index (python -m nnlab.runs); a finished run has metrics.json, a killed one a .lock its process left."""
    try:
        write_atomic(out / "end.json", json.dumps({"state": state, "at": time.time(), **facts}))
    except OSError as w:  # a full disk: the run's own files matter more
        log.warning(f"could not record how the run ended ({w})")

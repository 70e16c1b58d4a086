"""One run, or with -m a sweep: `nnlab train model=cnn`, or `python train.py model=cnn` in a clone (the same
command line; the docs list every option).

Complete the command from what is on disk (nnlab.run.command: resume=latest's run, the model a checkpoint holds),
compose the config; nnlab.app.train builds data, model, loggers and trainer, fits, tests, writes metrics.json and
returns the metric a sweeper optimizes, inside the run's lifecycle (nnlab.run.lifecycle.Run: its directory, the
config settled once, checks, signals and errors). `train=false ckpt_path=...` only tests a checkpoint.
"""

import os
import sys
from pathlib import Path

from nnlab import timeline  # first: its clock starts before the heavy imports

# isort: split
from omegaconf import DictConfig

from nnlab import commands


def conf_dir() -> Path:
    """nnlab's config folder: inside the installed package (the wheel ships it as nnlab/conf), else the clone's
    top-level conf/ (a clone, or an editable install of one)."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return packaged if packaged.is_dir() else here.parent.parent / "conf"


def task(cfg: DictConfig) -> float | None:
    # torch, Lightning and W&B load only now: --help, --cfg and a mistyped key answer without them.
    timeline.mark("config")
    from nnlab.app import train
    from nnlab.run.lifecycle import Run

    return Run(cfg).execute(train)


def main() -> None:
    """Train with this process's command line (sys.argv: the program, its subcommand (nnlab.commands.SUBCOMMAND)
    and the overrides); exits when the run or sweep ends."""
    import nnlab.config  # registers the resolvers conf/ uses
    from nnlab.run.command import complete
    from nnlab.upstream import run_hydra

    if os.environ.get("NNLAB_CPUS"):  # hydra/launcher=parallel pins each trial (and its DDP ranks) to its own cores
        os.sched_setaffinity(0, {int(c) for c in os.environ["NNLAB_CPUS"].split(",")})
    conf = conf_dir()
    # data/ and outputs/: the working folder's for `nnlab train`, the clone's for `python train.py`
    nnlab.config.HOME = Path.cwd() if commands.SUBCOMMAND else Path(sys.argv[0]).resolve().parent
    head = sys.argv[: 1 + len(commands.SUBCOMMAND)]
    completed = complete([sys.argv[0], *commands.arguments()], conf)  # resume=latest, train=false's model
    sys.argv = [*head, *completed[1:]]  # what DDP ranks and a sweep's trials are started with
    run_hydra(task, str(conf), "train", completed[1:])  # errors and signal stops leave through SystemExit
    leave()


def leave():
    """End a run that returned normally without tearing the interpreter down: the exit handlers run (log files
    flushed, W&B's service stopped, temporary folders removed, worker processes joined), but not the destruction of
    every module object, which takes 2-3 s with torch and Lightning loaded, at the end of every run and sweep trial."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

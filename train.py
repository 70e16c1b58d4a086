"""Train and test one model: `python train.py model=cnn` (README.md lists every option).

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
import hydra
from omegaconf import DictConfig

import nnlab.config  # noqa: F401  (registers the resolvers conf/ uses)

if os.environ.get("NNLAB_CPUS"):  # hydra/launcher=parallel pins each trial (and its DDP ranks) to its own cores
    os.sched_setaffinity(0, {int(c) for c in os.environ["NNLAB_CPUS"].split(",")})


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    # torch, Lightning and W&B load only now: --help, --cfg and a mistyped key answer without them.
    timeline.mark("config")
    from nnlab.app import train
    from nnlab.run.lifecycle import Run

    return Run(cfg).execute(train)


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
    from nnlab.run.command import complete

    sys.argv = complete(sys.argv, Path(__file__).resolve().parent / "conf")  # resume=latest, train=false's model
    main()  # errors and signal stops leave through SystemExit, with their exit codes
    leave()

"""Train and test one model: `python train.py model=cnn` (README.md lists every option).

Compose the config; nnlab.app.train builds data, model, loggers and trainer, fits, tests, writes metrics.json and
returns the metric a sweeper optimizes, inside the run's lifecycle (nnlab.run.lifecycle.Run: its directory, checks,
signals and errors). `train=false ckpt_path=...` only tests a checkpoint.
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
    from nnlab.schema import renamed

    if moved := renamed(sys.argv[1:]):
        sys.exit(f"Error: {moved}")
    sys.argv = evaluated_model(resume_latest(sys.argv))
    main()  # errors and signal stops leave through SystemExit, with their exit codes
    leave()

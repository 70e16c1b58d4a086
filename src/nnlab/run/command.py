"""The command line completed from what is on disk, before Hydra composes it: the one step before composition.

What a run computes once after composition (sizes read from the data, a checkpoint's settings, a sweep trial's tags)
is nnlab.run.settle, the one step after it. These answers come first because they choose what is composed: which
model's config groups (the model a checkpoint holds) and which run directory (resume=latest's), and a key of an
earlier version must be named before Hydra refuses it. No torch unless a checkpoint is read.
"""

import sys
from pathlib import Path


def complete(argv: list[str], conf: Path) -> list[str]:
    """`argv` (train.py's) as Hydra is to compose it; `conf` is the config folder. Exits with one line where a key
    of an earlier version is given, or resume=latest finds no run to continue."""
    from nnlab.schema import renamed

    if moved := renamed(argv[1:]):
        sys.exit(f"Error: {moved}")
    return evaluated_model(resume_latest(argv), conf)


def evaluated_model(argv: list[str], conf: Path) -> list[str]:
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
    from nnlab import commands, config

    root = Path(next((a.split("=", 1)[1] for a in others if a.startswith("paths.log_dir=")), config.home("outputs")))
    from nnlab.runs import latest_to_resume

    found = latest_to_resume(root, others)
    if found is None:
        sys.exit(
            f"Error: resume=latest: no stopped or killed run of this command under {root} (python -m nnlab.runs "
            f"--root {commands.path(root)} lists runs and their states); leave out resume=latest to start a new run"
        )
    print(f"resume=latest: continuing the {found.state} run in {found.dir} (started {found.when})", file=sys.stderr)
    return [argv[0], *others, "resume=true", f"hydra.run.dir={found.dir}"]

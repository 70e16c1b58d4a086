"""The `nnlab` command: `nnlab train` (one run, or a sweep with -m: the command line of `python train.py`),
`nnlab predict`, `nnlab export`, `nnlab demo`, `nnlab runs`, `nnlab report`. `python -m nnlab ...` is the same
command."""

from nnlab import timeline  # noqa: F401  first: a run's clock starts before the heavy imports

# isort: split
import importlib
import os
import sys

COMMANDS = {
    "train": ("nnlab.train", "train and test a model, or sweep with -m (Hydra overrides: nnlab train model=cnn)"),
    "predict": ("nnlab.predict", "classify images, texts or audio files with a checkpoint or an export"),
    "export": ("nnlab.export", "export a checkpoint to ONNX and torch.export, for use without nnlab's training code"),
    "demo": ("nnlab.demo", "a web page to try a checkpoint or an export: draw, type or record an input (nnlab[demo])"),
    "runs": ("nnlab.runs", "list the runs under outputs/, or compare two (runs diff A B)"),
    "report": ("nnlab.report", "write a sweep's report.html and plots"),
}


# What `pip install "nnlab[train]"` adds to nnlab's own dependencies (`nnlab[runtime]` predicts with exports alone).
TRAINING = ("torch", "torchvision", "torchaudio", "lightning", "hydra", "omegaconf", "torchmetrics", "wandb", "optuna")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return (
        "usage: nnlab <command> [arguments]\n\ncommands:\n"
        + "\n".join(lines)
        + (
            "\n\nnnlab <command> --help says more; data go to ./data and runs to ./outputs of the working folder "
            "(paths.data_dir, paths.log_dir)."
        )
    )


def main() -> int | None:
    arguments = sys.argv[1:]
    if not arguments or arguments[0] in ("-h", "--help"):
        print(usage())
        return 0 if arguments else 2
    if arguments[0] == "--version":
        from importlib.metadata import version

        print(f"nnlab {version('nnlab')}")
        return 0
    name = arguments[0]
    if name not in COMMANDS:
        print(f"Error: nnlab has no command {name!r}: one of {', '.join(COMMANDS)} (nnlab --help)", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in TRAINING:
            print(f"Error: nnlab {name} needs the training packages ({e.name} is not installed): "
                  "pip install 'nnlab[train]'", file=sys.stderr)  # fmt: skip
            return 1
        raise
    if name == "train":
        from nnlab import commands

        commands.SUBCOMMAND = [name]
        # A network or data module of your own in the working folder imports by its name, as with python -m.
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        return module.main()
    return module.main(arguments[1:], prog=f"nnlab {name}")


if __name__ == "__main__":
    sys.exit(main())

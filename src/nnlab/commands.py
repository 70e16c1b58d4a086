"""Commands nnlab prints (how to continue a run, upload it, reproduce a sweep's best) and starts (a sweep's trials),
quoted so that they run as they are, pasted into a shell, for paths with spaces, quotes, non-ASCII characters, `=`,
`,`, brackets and `$`: once for Hydra's override grammar, once for the shell."""

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

# What Hydra's grammar reads unquoted in a value (ASCII letters and digits, and a few signs): anything else is quoted.
PLAIN = re.compile(r"[A-Za-z0-9_/\-+.:@%]+")
NOT_TEXT = re.compile(r"[-+]?[0-9_.]*([eE][-+]?[0-9]+)?|true|false|null|[-+]?(nan|inf)", re.IGNORECASE)


def hydra_value(value) -> str:
    """`value` as Hydra's override grammar reads it back unchanged: as it is where it can be, else in single quotes
    with a quote (and the backslashes before it, and at the end) escaped, and `${` escaped so that OmegaConf does not
    take it for an interpolation."""
    text = str(value)
    if PLAIN.fullmatch(text) and not NOT_TEXT.fullmatch(text):  # a number or a boolean would be read as one
        return text
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return "'" + escaped.replace("${", "\\${") + "'"


def key(override: str) -> str:
    """The key an override sets, without its + (add), ++ (force) or ~ (delete): `+model.anneal_to=0.1` ->
    `model.anneal_to`."""
    return override.split("=", 1)[0].lstrip("+~")


def override(key: str, value) -> str:
    """`key=value` as one command-line argument Hydra reads back as `value` (not yet quoted for a shell)."""
    return f"{key}={hydra_value(value)}"


def line(args) -> str:
    """Arguments as a shell reads them back: each quoted where it needs to be."""
    return shlex.join(str(a) for a in args)


def path(value: Path | str) -> str:
    """A path as one shell word."""
    return shlex.quote(str(value))


# The words after the program that say what it does: ["train"] when started as `nnlab train` (nnlab.cli), none for
# `python train.py`. Set by the entry point, before anything reads the command line.
SUBCOMMAND: list[str] = []


def arguments() -> list[str]:
    """This command's own arguments (the overrides and Hydra's flags), after the program and its subcommand."""
    return sys.argv[1 + len(SUBCOMMAND) :]


def program() -> list[str]:
    """The program as a user types it again: `python train.py` (as it was given), `nnlab train` (the command on
    PATH, else its full path), or `python -m nnlab train`."""
    started = sys.argv[0]
    if not SUBCOMMAND:
        return ["python", started]
    if Path(started).name == "__main__.py":
        return ["python", "-m", "nnlab", *SUBCOMMAND]
    on_path = shutil.which(Path(started).name)
    same = on_path is not None and os.path.realpath(on_path) == os.path.realpath(started)
    return [Path(started).name if same else started, *SUBCOMMAND]


def relaunch() -> list[str]:
    """The argv that starts this program again in a child process (a sweep's trial): the same Python, the same
    script or module, the same subcommand."""
    import __main__

    if getattr(__main__, "__spec__", None) is not None:  # python -m ...
        return [sys.executable, "-m", __main__.__spec__.name, *SUBCOMMAND]
    return [sys.executable, os.path.abspath(sys.argv[0]), *SUBCOMMAND]


def shell_command(extra: list[str] = (), drop: tuple[str, ...] = ()) -> str:
    """This command as the user would type it again, without the overrides that start with `drop`, plus `extra`
    (made with nnlab.commands.override): it runs when pasted into a shell in the folder it was started from."""
    args = [a for a in arguments() if not a.lstrip("+~").startswith(drop)]
    return line([*program(), *args, *extra])


def config_arguments() -> list[str]:
    """This command's config flags (--config-path/--config-name/--config-dir and their short forms), which a sweep's
    trials and the commands nnlab prints keep."""
    argv, flags = arguments(), ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
    kept, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a in flags and i + 1 < len(argv):
            kept += [a, argv[i + 1]]
            i += 1
        elif a.startswith(tuple(f + "=" for f in flags)):
            kept.append(a)
        i += 1
    return kept


def with_config_folder(folder: Path | str, *overrides: str) -> str:
    """This program with `folder` (a sweep's, holding experiment/best.yaml) on its config search path, and
    `overrides`: `-cd <folder>`, or where this command named a config folder of its own (-cd myconf), that one kept
    and `folder` added through hydra.searchpath."""
    own = config_arguments()
    if any(a in ("-cd", "--config-dir") or a.startswith(("-cd=", "--config-dir=")) for a in own):
        added = f"hydra.searchpath=[{hydra_value(f'file://{Path(folder).resolve()}')}]"
        return line([*program(), *own, added, *overrides])
    return line([*program(), *own, "-cd", folder, *overrides])

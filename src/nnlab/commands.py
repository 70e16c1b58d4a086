"""Commands nnlab prints (how to continue a run, upload it, reproduce a sweep's best) and starts (a sweep's trials),
quoted so that they run as they are, pasted into a shell, for paths with spaces, quotes, non-ASCII characters, `=`,
`,`, brackets and `$`: once for Hydra's override grammar, once for the shell."""

import re
import shlex
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


def override(key: str, value) -> str:
    """`key=value` as one command-line argument Hydra reads back as `value` (not yet quoted for a shell)."""
    return f"{key}={hydra_value(value)}"


def line(args) -> str:
    """Arguments as a shell reads them back: each quoted where it needs to be."""
    return shlex.join(str(a) for a in args)


def path(value: Path | str) -> str:
    """A path as one shell word."""
    return shlex.quote(str(value))


def shell_command(extra: list[str] = (), drop: tuple[str, ...] = ()) -> str:
    """This command as the user would type it again, without the overrides that start with `drop`, plus `extra`
    (made with nnlab.commands.override): it runs when pasted into a shell in the folder it was started from."""
    args = [a for a in sys.argv[1:] if not a.lstrip("+~").startswith(drop)]
    return line(["python", sys.argv[0], *args, *extra])

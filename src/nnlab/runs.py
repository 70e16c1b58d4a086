"""The run index: `python -m nnlab.runs` lists the runs under outputs/ (single runs and sweep trials), filters and
sorts them, prints JSON; `python -m nnlab.runs diff A B` compares two runs' configs and metrics.

Everything is read from the run directories: run.json (start, command), .hydra/ (config groups, overrides),
config.yaml, metrics.json (a finished run), end.json (a run that failed or was stopped), .lock (a running run, or one
killed outright: its process is gone). A file that is missing or damaged gives the run a state that says so; the
index itself never stops on one.
"""

import argparse
import datetime as dt
import json
import operator
import os
import re
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

# Overrides that say where things are or how a run was launched, not what it trains: left out of `overrides`.
MACHINE = ("paths.", "hydra.", "sweep.", "run_id=", "run_name=", "resume=", "print_config=", "logger.")
SKIP_DIRS = {"wandb", "checkpoints", ".hydra", ".submitit", "plots", "experiment", "csv", "tensorboard", "profiler"}
STATES = ("complete", "pruned", "running", "stopped", "killed", "failed", "incomplete", "damaged")


@dataclass
class RunEntry:
    dir: str
    when: str = ""  # ISO time of the run's first start
    model: str = ""
    data: str = ""
    overrides: list[str] = field(default_factory=list)
    state: str = ""
    test_acc: float | None = None
    val_acc_best: float | None = None
    epochs: int | None = None
    wall_time_s: float | None = None
    sweep: str = ""  # the study a sweep trial belongs to
    problems: list[str] = field(default_factory=list)  # files missing or damaged
    metrics: dict = field(default_factory=dict)
    command: list[str] = field(default_factory=list)

    def value(self, key: str):
        """A column (test/acc, val/acc_best, epochs, wall_time_s, ...) or any metric of metrics.json."""
        columns = {"test/acc": self.test_acc, "val/acc_best": self.val_acc_best}
        if key in columns:
            return columns[key]
        if key in self.metrics:
            return self.metrics[key]
        return getattr(self, key.replace("/", "_"), None)


def read_json(path: Path, problems: list[str]) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return data
    except (OSError, ValueError) as e:
        problems.append(f"{path.name} unreadable ({type(e).__name__})")
        return None


def read_yaml(path: Path, problems: list[str]):
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        problems.append(
            f"{path.relative_to(path.parents[1]) if '.hydra' in str(path) else path.name} unreadable "
            f"({type(e).__name__})"
        )
        return None


def lock_holder(run_dir: Path) -> tuple[bool, bool]:
    """(there is a lock file, its process is alive). A run that ends, however it ends short of SIGKILL, removes the
    file; a live holder on another host cannot be checked from here and counts as alive."""
    path = run_dir / ".lock"
    if not path.is_file():
        return False, False
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return True, False
    pid, host = holder.get("pid"), holder.get("host")
    if host and host != socket.gethostname():
        return True, True
    if not isinstance(pid, int):
        return True, False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True, False
    except PermissionError:
        return True, True
    return True, True


def is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in ("run.json", "train.log", ".lock", "metrics.json", "config.yaml"))


def find_runs(root: Path) -> list[Path]:
    found = []
    for here, dirs, _ in os.walk(root):
        path = Path(here)
        if is_run_dir(path):
            found.append(path)
            dirs.clear()  # a run holds no runs
            continue
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
    return found


def read_run(run_dir: Path) -> RunEntry:
    """The run in run_dir as the index shows it; whatever its files hold, an entry (a problem noted where one of
    them is not what train.py writes)."""
    entry = RunEntry(dir=str(run_dir))
    try:
        return _read_run(run_dir, entry)
    except (TypeError, KeyError, AttributeError, IndexError, ValueError, OSError) as e:
        entry.problems.append(f"files not as train.py writes them ({type(e).__name__}: {e})")
        entry.state = entry.state or "damaged"
        return entry


def number(value) -> float | int | None:
    """A metric as a number, or None (a value hand-edited into a string, say)."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _read_run(run_dir: Path, entry: RunEntry) -> RunEntry:
    problems = entry.problems
    run = read_json(run_dir / "run.json", problems) or {}
    metrics = read_json(run_dir / "metrics.json", problems)
    end = read_json(run_dir / "end.json", problems)
    hydra = read_yaml(run_dir / ".hydra" / "hydra.yaml", problems) or {}
    overrides = read_yaml(run_dir / ".hydra" / "overrides.yaml", problems)
    if not (run_dir / "run.json").is_file():
        problems.append("run.json missing")
    try:
        choices = hydra.get("hydra", {}).get("runtime", {}).get("choices", {}) or {}
    except AttributeError:
        choices = {}
    entry.model, entry.data = str(choices.get("model") or ""), str(choices.get("data") or "")
    if isinstance(overrides, list):
        entry.overrides = [str(o) for o in overrides if not str(o).lstrip("+~").startswith(MACHINE)]
        sweep = [str(o).split("=", 1)[1] for o in overrides if str(o).startswith("sweep.name=")]
        entry.sweep = sweep[0] if sweep else ""
        if not entry.model:
            entry.model = next((str(o).split("=", 1)[1] for o in overrides if str(o).startswith("model=")), "")
    entry.command = [str(c) for c in run.get("command", [])] if isinstance(run.get("command"), list) else []
    earlier = run.get("earlier_starts")
    first = earlier[0] if isinstance(earlier, list) and earlier and isinstance(earlier[0], dict) else run
    started = first.get("started")
    if not started:
        try:
            started = dt.datetime.fromtimestamp(run_dir.stat().st_mtime).astimezone().strftime("%Y-%m-%dT%H:%M:%S%z")
        except OSError:
            started = ""
    entry.when = str(started or "")
    locked, alive = lock_holder(run_dir)
    if metrics is not None:
        entry.metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
        entry.state = "pruned" if metrics.get("trial_state") == "pruned" else "complete"
        entry.test_acc, entry.val_acc_best = number(metrics.get("test/acc")), number(metrics.get("val/acc_best"))
        entry.epochs, entry.wall_time_s = number(metrics.get("epochs")), number(metrics.get("wall_time_s"))
    elif locked and alive:
        entry.state = "running"
    elif locked:
        entry.state = "killed"  # its process ended without removing the lock: SIGKILL, out of memory, a lost node
    elif end is not None and end.get("state") in ("failed", "stopped"):
        entry.state = end["state"]
        if end.get("error"):
            problems.append(str(end["error"]))
        entry.epochs = number(end.get("epoch"))
    elif any(p.startswith("metrics.json") for p in problems):
        entry.state = "damaged"
    else:
        entry.state = "incomplete"  # never got as far as training (or its files were removed)
    return entry


# --------------------------------------------------------------------------------------------------------- filters
OPS = {
    ">=": operator.ge,
    "<=": operator.le,
    "!=": operator.ne,
    "==": operator.eq,
    "=": operator.eq,
    ">": operator.gt,
    "<": operator.lt,
}


def parse_where(text: str):
    """A --where filter: KEY OP VALUE. A number compares as a number (99% is 0.99, as the table shows accuracies);
    an order (< <= > >=) needs a number, and an accuracy is a fraction, so `test/acc>99` is refused with the fix."""
    m = re.fullmatch(r"\s*([\w/.\-]+)\s*(>=|<=|!=|==|=|>|<)\s*([\w.+\-:%]+)\s*", text)
    if not m:
        raise ValueError(f'--where {text!r}: write KEY OP VALUE, e.g. "test/acc>0.99" (OP: > >= < <= == !=)')
    key, op, raw = m.groups()
    try:
        value: object = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        if op in ("<", "<=", ">", ">=") or raw.endswith("%"):
            raise ValueError(f"--where {text!r}: {raw!r} is not a number; {key} {op} compares numbers "
                             f'(e.g. "{key}{op}0.99", or 99%)') from None  # fmt: skip
        value = raw
    accuracy = "acc" in key.rsplit("/", 1)[-1]
    if accuracy and isinstance(value, float) and not raw.endswith("%") and value > 1:
        raise ValueError(
            f"--where {text!r}: {key} is a fraction (the table shows 0.9912 as 99.12%): write "
            f'"{key}{op}{value / 100:g}" or "{key}{op}{raw}%"'
        )

    def test(entry: RunEntry) -> bool:
        have = entry.value(key)
        if have is None:
            return False
        try:
            return OPS[op](float(have) if isinstance(value, float) else str(have), value)
        except (TypeError, ValueError):
            return False

    return test


def parse_since(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: give a date (2026-12-01) or a date and time (2026-12-01T14:00)") from None
    return when if when.tzinfo else when.astimezone()


def started_at(entry: RunEntry) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(entry.when, "%Y-%m-%dT%H:%M:%S%z")
    except ValueError:
        return None


def select(entries: list[RunEntry], args) -> list[RunEntry]:
    out = entries
    if args.model:
        out = [e for e in out if e.model == args.model]
    if args.data:
        out = [e for e in out if e.data == args.data]
    if args.state:
        out = [e for e in out if e.state == args.state]
    if args.sweep:
        out = [e for e in out if e.sweep == args.sweep]
    if args.since:
        since = parse_since(args.since)
        out = [e for e in out if (t := started_at(e)) is not None and t >= since]
    for where in args.where or []:
        test = parse_where(where)
        out = [e for e in out if test(e)]
    key = args.sort
    reverse = args.reverse

    def sort_key(e: RunEntry):
        v = e.value(key) if key != "when" else e.when
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return (0, v, "")
        return (1, 0, "") if v is None else (0, 0, str(v))  # runs without the key last

    out = sorted(out, key=sort_key, reverse=reverse)
    return out


# ------------------------------------------------------------------------------------------------------------ show
def fmt_seconds(s) -> str:
    if s is None:
        return ""
    s = float(s)
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def fmt_acc(v) -> str:
    return "" if v is None else f"{100 * float(v):.2f}%"


def show(entries: list[RunEntry], root: Path) -> str:
    columns = ["when", "model", "data", "state", "test/acc", "val/acc_best", "epochs", "wall", "overrides", "dir"]
    rows = []
    for e in entries:
        try:
            where = str(Path(e.dir).relative_to(root))
        except ValueError:
            where = e.dir
        rows.append([
            e.when.replace("T", " ")[:16], e.model, e.data, e.state + (" !" if e.problems else ""),
            fmt_acc(e.test_acc), fmt_acc(e.val_acc_best), "" if e.epochs is None else str(e.epochs),
            fmt_seconds(e.wall_time_s), " ".join(e.overrides), where,
        ])  # fmt: skip
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    damaged = [e for e in entries if e.problems]
    if damaged:
        lines.append("")
        lines += [f"! {Path(e.dir).name}: {'; '.join(e.problems)}" for e in damaged]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------ diff
def flatten(value, prefix="") -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


IGNORED_IN_DIFF = (
    "run_id",
    "run_name",
    "paths.",
    "hydra",
    "logger.",
    "sweep.",
    "callbacks.last_checkpoint.dirpath",
    "callbacks.best_checkpoint.dirpath",
    "trainer.default_root_dir",
)


def resolve_run(text: str, root: Path) -> Path:
    path = Path(text)
    for candidate in (path, root / text):
        if candidate.is_dir():
            return candidate
    matches = [p for p in find_runs(root) if p.name == text or p.name.endswith(text)]
    if len(matches) == 1:
        return matches[0]
    raise ValueError(f"{text}: no run directory {'of that name' if not matches else 'matches uniquely'} under {root}")


def diff(a: Path, b: Path) -> str:
    problems: list[str] = []
    ca = flatten(read_yaml(a / "config.yaml", problems) or {})
    cb = flatten(read_yaml(b / "config.yaml", problems) or {})
    ma = read_json(a / "metrics.json", problems) or {}
    mb = read_json(b / "metrics.json", problems) or {}
    lines = [f"A: {a}", f"B: {b}", "", "config (A -> B):"]
    # Paths inside each run's own directory (its checkpoints, its pictures) are where it lives, not how it differs.
    own = lambda config, run: str(config.get("paths.output_dir") or run.resolve())
    here = lambda v, config, run: v.replace(own(config, run), "<run>") if isinstance(v, str) else v
    keys = sorted(
        k
        for k in set(ca) | set(cb)
        if here(ca.get(k), ca, a) != here(cb.get(k), cb, b) and not k.startswith(IGNORED_IN_DIFF)
    )
    lines += [f"  {k}: {ca.get(k, '(absent)')!r} -> {cb.get(k, '(absent)')!r}" for k in keys] or ["  identical"]
    lines.append("metrics (A -> B):")
    scalar = lambda m: {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    sa, sb = scalar(ma), scalar(mb)
    skip = ("launched_at",)
    for k in sorted(set(sa) | set(sb)):
        if k in skip:
            continue
        va, vb = sa.get(k), sb.get(k)
        delta = f"  ({vb - va:+.4g})" if va is not None and vb is not None else ""
        lines.append(f"  {k}: {'' if va is None else f'{va:.6g}'} -> {'' if vb is None else f'{vb:.6g}'}{delta}")
    if problems:
        lines.append("problems: " + "; ".join(problems))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- resume=latest
def same_command(recorded: list[str], argv: list[str]) -> bool:
    """Whether a run's recorded command (python train.py overrides...) is `argv` (train.py's own arguments), the
    keys that only say where or how it runs (resume=, hydra.run.dir=, run_id=) aside."""
    drop = ("resume=", "hydra.run.dir=", "run_id=", "run_name=")
    keep = lambda args: sorted(a for a in args if not a.lstrip("+~").startswith(drop))
    script = next((i for i, c in enumerate(recorded) if c.endswith(".py")), None)
    if script is None:
        return False
    return keep(recorded[script + 1 :]) == keep(argv)


def latest_to_resume(root: Path, argv: list[str]) -> RunEntry | None:
    """The most recent run under root of the same command that was stopped or killed (or failed part way, with a
    checkpoint to go on from)."""
    candidates = []
    for path in find_runs(root):
        if not (path / "run.json").is_file():
            continue
        e = read_run(path)
        if e.state in ("stopped", "killed", "failed") and e.sweep == "" and same_command(e.command, argv):
            if e.state == "failed" and not (path / "checkpoints" / "last.ckpt").is_file():
                continue
            candidates.append(e)
    candidates.sort(key=lambda e: started_at(e) or dt.datetime.min.replace(tzinfo=dt.UTC))
    return candidates[-1] if candidates else None


# ------------------------------------------------------------------------------------------------------------ main
def main(argv=None, prog: str = "python -m nnlab.runs") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["diff"]:
        parser = argparse.ArgumentParser(
            prog=f"{prog} diff", description="The config and metric differences of two runs."
        )
        parser.add_argument("a")
        parser.add_argument("b")
        parser.add_argument("--root", type=Path, default=Path("outputs"))
        args = parser.parse_args(argv[1:])
        try:
            print(diff(resolve_run(args.a, args.root), resolve_run(args.b, args.root)))
        except ValueError as e:
            print(f"Error: {e}", file=sys.stderr)
            return 2
        return 0
    parser = argparse.ArgumentParser(
        prog=prog,
        description="List the runs under outputs/ (single runs and sweep trials); `diff A B` compares two.",
    )
    parser.add_argument("--root", type=Path, default=Path("outputs"), help="where runs are (paths.log_dir)")
    parser.add_argument("--model")
    parser.add_argument("--data")
    parser.add_argument("--state", choices=STATES)
    parser.add_argument("--sweep", help="only the trials of this study")
    parser.add_argument("--since", help="started at or after this date (2026-12-01) or time (2026-12-01T14:00)")
    parser.add_argument("--where", action="append", help='KEY OP VALUE on a metric, e.g. "test/acc>0.99" (repeatable)')
    parser.add_argument("--sort", default="when", help="when (default), test/acc, val/acc_best, epochs, wall_time_s...")
    parser.add_argument("--reverse", action="store_true")
    parser.add_argument("--json", action="store_true", help="one JSON list of the runs, every field")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"Error: {args.root} does not exist: give --root <paths.log_dir of your runs>", file=sys.stderr)
        return 2
    try:
        entries = select([read_run(p) for p in find_runs(args.root)], args)
    except ValueError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([asdict(e) for e in entries], indent=1))
    else:
        print(show(entries, args.root) if entries else f"no runs under {args.root} match")
    return 0


if __name__ == "__main__":
    sys.exit(main())

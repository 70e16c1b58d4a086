"""When a run's phases happened, for metrics.json's `timeline`: seconds from the run's launch to each phase's end.

The launch is the moment a sweep started the trial's process (`NNLAB_LAUNCHED_AT`, set by the trial launcher) or,
for a run started any other way, this process's start as the kernel recorded it. Imported first by train.py, before
anything heavy, so `python` measures the interpreter's start alone. Only the standard library here.
"""

import os
import time

LAUNCHED_AT = "NNLAB_LAUNCHED_AT"


def process_start() -> float:
    """This process's start as a Unix time (Linux: /proc/self/stat's start time, in clock ticks since boot); elsewhere
    now."""
    now = time.time()
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        started = now - (time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return now
    return started if 0 <= now - started < 3600 else now


def launch_time() -> float:
    try:
        return float(os.environ[LAUNCHED_AT])
    except (KeyError, ValueError):
        return process_start()


_launched = launch_time()
_marks: dict[str, float] = {"python": time.time()}


def mark(name: str, again: bool = True):
    """Record that phase `name` ended now. A phase marked again keeps the last time (the last training step), or with
    again=False the first (the first training step)."""
    if again or name not in _marks:
        _marks[name] = time.time()


def launched_at() -> float:
    """The launch, as a Unix time."""
    return round(_launched, 3)


def timeline() -> dict[str, float]:
    """Each phase's end, in seconds from the launch, in the order they happened."""
    return {name: round(t - _launched, 3) for name, t in sorted(_marks.items(), key=lambda kv: kv[1])}

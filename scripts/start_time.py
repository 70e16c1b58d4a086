"""Seconds from a command's launch to the end of its first training step, for any Lightning + Hydra project that
builds its callbacks from its config (nnlab's train.py, the lightning-hydra-template's src/train.py, ...): each command
is run with `+callbacks.first_step._target_=start_time.FirstStep` added (this file on its PYTHONPATH), the commands
alternating for --runs rounds; the median and range of each are printed.

    python scripts/start_time.py --threads 1 \\
        "python train.py model=mlp trainer.max_epochs=1 trainer.limit_train_batches=2 trainer.limit_val_batches=1" \\
        "cd ../lightning-hydra-template && python src/train.py trainer=cpu trainer.max_epochs=1 \\
         +trainer.limit_train_batches=2 +trainer.limit_val_batches=1 test=false"

Each command runs in a shell (`bash -c`), so it may start with `cd`; --threads N sets OMP_NUM_THREADS for both.
The clock starts just before the shell does: interpreter start, imports, config, data, loggers, the sanity check and
the first step all count.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ADDED = "+callbacks.first_step._target_=start_time.FirstStep"

if __name__ != "__main__":  # imported by the measured command (the measuring process needs no Lightning)
    import lightning as L

    class FirstStep(L.Callback):
        """Writes the time of the end of the first training step (time.time()) to $START_TIME_OUT."""

        def __init__(self):
            self.done = False

        def on_train_batch_end(self, *args):
            if not self.done:
                self.done = True
                Path(os.environ["START_TIME_OUT"]).write_text(repr(time.time()))


def measure(command: str, threads: int | None) -> float:
    """One run of `command` (with the callback added): seconds from its launch to the end of its first step."""
    with tempfile.TemporaryDirectory(prefix="start-time-") as tmp:
        out = Path(tmp) / "first_step"
        env = {**os.environ, "START_TIME_OUT": str(out)}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        launched = time.time()
        proc = subprocess.run(["bash", "-c", f"{command} {ADDED}"], env=env, capture_output=True, text=True)
        if not out.is_file():
            raise SystemExit(f"{command}: no training step (exit code {proc.returncode}):\n{proc.stderr[-3000:]}")
        return float(out.read_text()) - launched


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("commands", nargs="+", help="commands, each one quoted string")
    p.add_argument("--runs", type=int, default=5, help="rounds; every command runs once a round")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every command")
    args = p.parse_args()
    seconds: dict[str, list[float]] = {c: [] for c in args.commands}
    for r in range(args.runs):
        for c in args.commands:
            seconds[c].append(measure(c, args.threads))
            print(f"round {r + 1}: {seconds[c][-1]:.2f} s  {c}", flush=True)
    print(f"\nseconds from the launch to the end of the first training step, {args.runs} rounds:")
    print("| command | median | range |\n|---|---|---|")
    for c, s in seconds.items():
        print(f"| `{c}` | {statistics.median(s):.2f} s | {min(s):.2f}-{max(s):.2f} s |")


if __name__ == "__main__":
    sys.exit(main())

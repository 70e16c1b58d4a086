"""A run's directory: the lock only this run holds, a new run only in a new or empty folder, a finished run recognised,
folders other users may write to, and train.log opened without following a link."""

import fcntl
import json
import logging
import os
import socket
import stat
import time
from pathlib import Path

from nnlab.atomic import append_no_follow, open_no_follow
from nnlab.commands import shell_command
from nnlab.errors import ConfigError

log = logging.getLogger("nnlab")


class RunLock:
    """An exclusive lock on a run directory (flock on `<dir>/.lock`, which the kernel releases when the process
    ends however it ends, so a killed run never leaves it stuck). The file names the holder; a holder that ended
    without removing it (SIGKILL, a lost node) is reported when the next run takes the directory over."""

    def __init__(self, out: Path):
        self.path = Path(out) / ".lock"
        self.fd: int | None = None

    def acquire(self, wait: bool = False):
        """Take the lock, or a ConfigError naming its holder; with `wait`, wait for the holder to end instead (a
        sweep's trial taken over from a killed sweep, whose run may still be winding down)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = open_no_follow(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            if wait:
                log.warning(
                    f"run directory {self.path.parent} is still held by process {holder.get('pid')} on "
                    f"{holder.get('host')}: waiting for it to end"
                )
                fcntl.flock(fd, fcntl.LOCK_EX)
                if not self.still_the_file(fd):  # the holder removed the file as it ended: take the lock anew
                    os.close(fd)
                    return self.acquire(wait)
                return self.acquire_held(fd)
            os.close(fd)
            who = (
                (
                    f"process {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')}: "
                    f"{holder.get('command')})"
                )
                if holder
                else "another process"
            )
            raise ConfigError(
                f"run directory {self.path.parent} is in use by {who}. Wait for that run to end, or "
                "give this one its own directory (leave out hydra.run.dir for a new one)"
            ) from None
        self.acquire_held(fd)

    def acquire_held(self, fd: int):
        if holder := self._holder(fd):
            log.warning(
                f"run directory {self.path.parent} was held by process {holder.get('pid')} on "
                f"{holder.get('host')}, which ended without releasing it (killed?): taking it over"
            )
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": shell_command(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self.fd = fd

    def still_the_file(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.lstat(self.path).st_ino
        except FileNotFoundError:
            return False

    @staticmethod
    def _holder(fd) -> dict:
        try:
            return json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            return {"pid": "?", "host": "?"}

    def release(self):
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # still holding the lock: no one else can have it now
            os.close(self.fd)
            self.fd = None


# What a new run's directory may hold before the run writes anything: its lock, what the other ranks of a torchrun or
# srun start write as they start beside rank 0, and a sweep trial's console.log (the trial launcher's).
OWN_AT_START = (".lock", ".torchrun")


RUN_FILES = ("run.json", "metrics.json", "checkpoints")  # a folder holding one of these holds a run


def check_own_directory(out: Path, sweep_trial: bool):
    """A new run starts only in a new or empty folder: it never writes over another run's files, or the user's."""
    held = [
        name for name in RUN_FILES if (out / name).is_file() or ((out / name).is_dir() and any((out / name).iterdir()))
    ]
    if held:
        raise ConfigError(
            f"{out} already holds a run ({', '.join(held)}): continue it with resume=true, or give this "
            "run its own directory (leave out hydra.run.dir for a new one)"
        )
    mine = (*OWN_AT_START, "console.log") if sweep_trial else OWN_AT_START
    others = sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in out.iterdir()
        if p.name not in mine and not (p.name.startswith("train.rank") and p.name.endswith(".log"))
    )
    if others:
        raise ConfigError(
            f"{out} is not empty ({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}): a run starts only in "
            "a new or empty folder, so it never writes over files there. Give hydra.run.dir a new folder, or leave "
            "it out for a new one under paths.log_dir"
        )


def complete_run(out: Path) -> Path | None:
    """The metrics.json of a run that finished (it is written last), if the directory holds one."""
    metrics = out / "metrics.json"
    return metrics if metrics.is_file() and not metrics.is_symlink() else None


class Complete(Exception):
    """resume=true (or a restart) on a run that finished: nothing is done, and nothing is written."""


def shared_root(out: Path, log_dir: Path) -> Path | None:
    """The first folder from the run directory's parent up to paths.log_dir that users other than its owner may write
    to: another user could plant files or links under the predictable names of runs there."""
    here, top = out.resolve().parent, log_dir.resolve()
    while True:
        try:
            if here.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return here
        except OSError:
            return None
        if here == top or top not in here.parents:
            return None
        here = here.parent


def latest_run(log_dir: Path) -> Path | None:
    runs = sorted(log_dir.glob("*/*/run.json"), key=lambda p: p.stat().st_mtime)
    return runs[-1].parent if runs else None


class NoFollowFileHandler(logging.FileHandler):
    """logging's FileHandler, opening its file with O_NOFOLLOW: a link planted as train.log is refused, not written
    through."""

    def _open(self):
        return append_no_follow(self.baseFilename, self.encoding or "utf-8")


def open_log(out: Path, rank: int) -> logging.Handler:
    """train.log (rank 0; other ranks train.rank<N>.log), appended to across resumes, never through a link."""
    name = "train.log" if rank == 0 else f"train.rank{rank}.log"
    out.mkdir(parents=True, exist_ok=True)
    handler = NoFollowFileHandler(out / name)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler

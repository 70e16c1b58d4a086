"""Stopping a run cleanly on a signal, and requeueing it under SLURM.

SIGTERM (scancel, preemption, a sweep stopping its trials, the end of a time limit), Ctrl-C (SIGINT; a second one
stops at once, without a checkpoint) and, in a SLURM batch job, the
requeue signal (`sbatch --signal=USR2@120`: USR2 120 s before the time limit) stop training at the end of the current
batch: every rank stops at the same batch, `checkpoints/last.ckpt` is written (atomically, by the run's checkpoint
writer), and fit ends with `Stopped`. For the requeue signal train.py then requeues the job; SLURM starts it again with
the same job id, so it finds its run directory and resumes from last.ckpt into the same W&B run.

This is the only requeue owner: Lightning's own SLURM auto-requeue is switched off (`SLURMEnvironment(auto_requeue=
False)`), and under the submitit launcher the handler here replaces submitit's for the signal submitit asked SLURM for.

`SignalStop` notes the signals from the run's first moment, before Lightning is imported; the trainer's callback that
acts on them at a batch end is nnlab.run.callbacks.StopAtBatchEnd. Only the standard library here.
"""

import logging
import os
import signal
import subprocess
from pathlib import Path

from nnlab.errors import ConfigError

log = logging.getLogger("nnlab")


class Stopped(Exception):
    """Training stopped on a signal after writing its checkpoint (see the module's docstring)."""

    def __init__(self, signum: signal.Signals, checkpoint: Path | None):
        self.signum, self.checkpoint = signum, checkpoint
        where = f"checkpoint {checkpoint}" if checkpoint else "training had finished"
        super().__init__(f"stopped on {signum.name} ({where})")


def in_slurm_batch_job() -> bool:
    """A SLURM job's batch script or one of its srun steps (not `srun --pty bash`, where Lightning starts processes)."""
    return "SLURM_JOB_ID" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def requeue_signal(configured: str) -> signal.Signals:
    """The signal that asks for a requeue: submitit's under the submitit launcher (it submitted the job with
    `--signal=<its signal>@<signal_delay_s>`), else `slurm.signal`."""
    name = (
        os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
        if os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
        else configured
    )
    try:
        return signal.Signals[f"SIG{name.upper().removeprefix('SIG')}"]
    except KeyError:
        raise ConfigError(
            f"slurm.signal={name!r} is not a signal name: use USR1, USR2, ... as in sbatch --signal=USR2@120"
        ) from None


class SignalStop:
    """Notes SIGTERM and the requeue signal from the start of the run (a signal that arrives while data loads must
    not kill the process); training stops at the next batch end after saving `checkpoint` (StopAtBatchEnd, the
    trainer's callback, reads and sets what this records: `received`, `training`, `saved`)."""

    def __init__(self, checkpoint: Path, requeue: signal.Signals | None):
        self.checkpoint = Path(checkpoint)
        self.requeue = requeue
        self.received: signal.Signals | None = None
        self.saved = False
        self.training = False  # before training there is nothing to save: Ctrl-C then stops at once
        self._previous = {}

    def install(self):
        for sig in {signal.SIGTERM, signal.SIGINT, self.requeue} - {None}:
            self._previous[sig] = signal.signal(sig, self._note)
        return self

    def uninstall(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def take_back_sigterm(self):
        """Lightning wraps SIGTERM at the start of fit and test in a handler of its own, which forwards it to the DDP
        ranks it started and makes each stop at its own next step: ranks that stop at different steps wait for each
        other forever (seen with 2 CPU processes). Only this handler notes it; the ranks agree where to stop."""
        if signal.SIGTERM in self._previous:
            signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum, frame):  # a signal handler: no logging (it may interrupt a write to the same stream)
        if signum == signal.SIGINT:  # Ctrl-C: like SIGTERM; a second one stops at once
            if self.received == signal.SIGINT:
                os.write(2, b"\nSecond Ctrl-C: stopping now, without a checkpoint; the last one written stays\n")
                os._exit(130)
            if not self.training:
                self.received = signal.SIGINT
                raise KeyboardInterrupt
        if self.received is None or signum == self.requeue:
            self.received = signal.Signals(signum)

    @property
    def requeue_requested(self) -> bool:
        return self.requeue is not None and self.received == self.requeue


def job_id() -> str:
    """This job as scontrol and scancel know it: <array job>_<task> for a task of a job array (SLURM refuses the
    task's own SLURM_JOB_ID there), else SLURM_JOB_ID."""
    if "SLURM_ARRAY_JOB_ID" in os.environ and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def requeue_job() -> bool:
    """`scontrol requeue` this job: SLURM ends it and queues it again under the same id (SLURM_RESTART_COUNT + 1).
    Called as the process ends, its checkpoint written: SIGTERM is ignored from here on, since SLURM sends it as soon
    as the job is requeued, and it could otherwise end this process before it has said so."""
    job = job_id()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.error(f"could not requeue SLURM job {job}: {e}")
        return False
    if proc.returncode != 0:
        log.error(
            f"could not requeue SLURM job {job}: {proc.stderr.strip()} (a job submitted with --no-requeue "
            "cannot be requeued); rerun it with resume=true and the same hydra.run.dir"
        )
        return False
    log.warning(f"requeued SLURM job {job}: it resumes from its last checkpoint when it starts again")
    return True

"""Stopping a run cleanly on a signal, and requeueing it under SLURM.

SIGTERM (scancel, preemption, a sweep stopping its trials, the end of a time limit), Ctrl-C (SIGINT; a second one
stops at once, without a checkpoint) and, in a SLURM batch job, the
requeue signal (`sbatch --signal=USR2@120`: USR2 120 s before the time limit) stop training at the end of the current
batch: every rank stops at the same batch, `checkpoints/last.ckpt` is written (atomically, by the run's checkpoint
writer), and fit ends with `Stopped`. For the requeue signal train.py then requeues the job; SLURM starts it again with
the same job id, so it finds its run directory and resumes from last.ckpt into the same W&B run.

This is the only requeue owner: Lightning's own SLURM auto-requeue is switched off (`SLURMEnvironment(auto_requeue=
False)`), and under the submitit launcher the handler here replaces submitit's for the signal submitit asked SLURM for.
"""

import logging
import os
import signal
import subprocess
from pathlib import Path

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

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
    return "SLURM_JOB_ID" in os.environ and SLURMEnvironment.job_name() not in ("bash", "interactive")


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


class SignalStop(L.Callback):
    """Notes SIGTERM and the requeue signal from the start of the run (a signal that arrives while data loads must
    not kill the process) and stops training at the next batch end, after saving `checkpoint`.

    Under DDP the ranks agree every `sync_every` batches (one all-reduce of a flag: about 170 us with gloo on this
    project's CPU, where the default MLP's gradient all-reduce takes 5.8 ms), so they stop at the same batch even when
    the signal reaches them at different moments; alone, a process checks after every batch.
    """

    def __init__(self, checkpoint: Path, requeue: signal.Signals | None, sync_every: int = 10):
        self.checkpoint = Path(checkpoint)
        self.requeue = requeue
        self.sync_every = sync_every
        self.received: signal.Signals | None = None
        self.saved = False
        self.training = False  # before training there is nothing to save: Ctrl-C then stops at once
        self._previous = {}
        self._batches = 0  # the same count on every rank: all ranks run the same number of batches

    def install(self):
        for sig in {signal.SIGTERM, signal.SIGINT, self.requeue} - {None}:
            self._previous[sig] = signal.signal(sig, self._note)
        return self

    def uninstall(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

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

    def _stop_requested(self, trainer) -> bool:
        requested = self.received is not None
        if trainer.world_size > 1:
            self._batches += 1
            if self._batches % self.sync_every:
                return False
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
            if requested and self.received is None:
                self.received = signal.SIGTERM  # another rank was signalled first
        return requested

    def _save(self, trainer):
        trainer.save_checkpoint(self.checkpoint)
        self.saved = True

    def on_train_start(self, trainer, pl_module):
        self.training = True
        self._take_back_sigterm()

    def on_test_start(self, trainer, pl_module):
        self._take_back_sigterm()

    def _take_back_sigterm(self):
        """Lightning wraps SIGTERM at the start of fit and test in a handler of its own, which forwards it to the DDP
        ranks it started and makes each stop at its own next step: ranks that stop at different steps wait for each
        other forever (seen with 2 CPU processes). Only this handler notes it; the ranks agree where to stop."""
        if signal.SIGTERM in self._previous:
            signal.signal(signal.SIGTERM, self._note)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # Not at an epoch's last batch: Lightning resumes a checkpoint written there by skipping that epoch's
        # validation and end (its learning-rate step too), so the run would not repeat. The epoch ends as usual
        # (last.ckpt is written) and the stop comes at the next batch. Every rank skips the same batch.
        if batch_idx + 1 >= trainer.num_training_batches:
            return
        if self._stop_requested(trainer):
            self._save(trainer)
            raise Stopped(self.received, self.checkpoint)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self._stop_requested(trainer):  # fit is over and last.ckpt holds it: the restart only tests again
            raise Stopped(self.received, None)

    def on_exception(self, trainer, pl_module, exception):
        # Lightning's own SIGTERM handling can stop a step before on_train_batch_end sees the signal.
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit" and not self.saved:
            self._save(trainer)


def job_id() -> str:
    """This job as scontrol and scancel know it: <array job>_<task> for a task of a job array (SLURM refuses the
    task's own SLURM_JOB_ID there), else SLURM_JOB_ID."""
    if "SLURM_ARRAY_JOB_ID" in os.environ and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def requeue_job() -> bool:
    """`scontrol requeue` this job: SLURM ends it and queues it again under the same id (SLURM_RESTART_COUNT + 1)."""
    job = job_id()
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

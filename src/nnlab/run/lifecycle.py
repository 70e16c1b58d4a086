"""A run's life around the training nnlab.app builds: its directory, its checks, its signals, its end.

`Run(cfg).execute(recipe)` owns everything that is not training itself, through the modules beside this one:
- the run directory (directory): a lock that only this run holds (DDP ranks, a resumed run and a requeued SLURM job
  are this run; a second process is refused), `train.log` opened only once the checks passed; a resumed command
  checked against the run's recorded config before anything is written (resume); the record (`config.yaml`,
  `run.json`, `.hydra/`, `end.json`) written once the run is known to start (record);
- settings that cannot work, refused before anything is built, naming the key and the fix (checks), and what is
  computed once after composition (settle);
- ranks, restarts and threads under DDP, torchrun and SLURM (cluster);
- signals: SIGTERM, Ctrl-C and SLURM's requeue signal stop training at a batch end with a checkpoint (signals,
  callbacks), and the run says how it continues;
- errors: a mistake (nnlab.errors.UserError) is one line on the screen and a traceback in train.log; anything else
  keeps its traceback (HYDRA_FULL_ERROR=1 shows every traceback); Lightning's noise kept off the screen (errors);
- the end: W&B closed as finished, failed or preempted, the process group destroyed.
"""

import json
import logging
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from nnlab import commands, schema
from nnlab.atomic import LinkError, refuse_links_in
from nnlab.commands import shell_command
from nnlab.errors import ConfigError, UserError
from nnlab.run import record
from nnlab.run.checks import check_settings
from nnlab.run.cluster import (
    check_launch,
    check_slurm,
    continue_restarted,
    count_agent_start,
    env_rank,
    leave_process_group,
    rank_zero_only,
    restart_count,
    set_cpu_threads,
    warn_more_processes_than_cores,
)
from nnlab.run.directory import (
    RUN_FILES,
    Complete,
    RunLock,
    check_own_directory,
    complete_run,
    open_log,
    shared_root,
)
from nnlab.run.errors import DETAILS, quiet, quiet_lightning
from nnlab.run.resume import check_same_run
from nnlab.run.settle import settle
from nnlab.run.signals import SignalStop, Stopped, in_slurm_batch_job, requeue_job, requeue_signal

log = logging.getLogger("nnlab")


class Run:
    """One run of train.py: see the module's docstring. `execute(recipe)` calls `recipe(cfg, run)`."""

    def __init__(self, cfg: DictConfig):
        quiet()
        hc = HydraConfig.get()
        self.cfg, self.out = cfg, Path(hc.runtime.output_dir)
        self.multirun = hc.mode == RunMode.MULTIRUN
        self.rank_zero = env_rank() == 0
        self.slurm_job = in_slurm_batch_job()
        self.restarts = restart_count(self.slurm_job, self.out)
        self.resuming = bool(cfg.resume or self.restarts)
        self.last_ckpt = Path(cfg.callbacks.last_checkpoint.dirpath) / "last.ckpt"
        self.explicit_run_dir = any(o.startswith("hydra.run.dir=") for o in hc.overrides.hydra)
        self.lock, self.stop, self.log_file, self.loggers = RunLock(self.out), None, None, []
        self.threads = None
        self.checkpoint: dict | None = None  # train=false: what the checkpoint records beside its weights
        self.described = False  # run.json written: this start is the run's record (a refused command never is)
        self.start = time.perf_counter()
        self.offline_why = offline_reason()  # now: opening an offline run sets WANDB_MODE itself

    # ----------------------------------------------------------------------------------------------- execute
    def execute(self, recipe):
        try:
            # Installed first: a signal while data loads must not kill the run before its checkpoint.
            requeue_on = requeue_signal(self.cfg.slurm.signal)  # a bad name fails anywhere
            self.stop = SignalStop(self.last_ckpt, requeue_on if self.slurm_job else None).install()
            self.open()
            return recipe(self.cfg, self)
        except (KeyboardInterrupt, SystemExit) as e:
            if self.stop is not None and self.stop.received == signal.SIGINT and not self.stop.training:
                # Ctrl-C before training started (Lightning turns the KeyboardInterrupt into SystemExit(1))
                self.finish_wandb(1)
                print(
                    "Interrupted before training started: nothing to resume; run the command again to start",
                    file=sys.stderr,
                )
                raise SystemExit(130) from None
            if isinstance(e, KeyboardInterrupt):
                raise SystemExit(130) from None
            raise
        except Complete as e:
            return self.complete(Path(str(e)))
        except UserError as e:
            self.fail(e, one_line=not os.environ.get("HYDRA_FULL_ERROR"))
        except MissingMandatoryValue as e:  # a `???` in the config (data.path of your own data) left unset
            key = e.full_key or "a key"
            self.fail(
                ConfigError(f"{key} has no value: give it on the command line ({key}=...)"),
                one_line=not os.environ.get("HYDRA_FULL_ERROR"),
            )
        except BaseException as e:  # noqa: BLE001  a bug: its traceback into train.log, then raised again
            self.fail(e, one_line=False)
        finally:
            if self.stop is not None:
                self.stop.uninstall()
            self.lock.release()
            if self.rank_zero and not self.explicit_run_dir:
                try:
                    self.out.rmdir()  # a refused command leaves no empty run directory behind (Hydra made it)
                except OSError:
                    pass  # not empty: the run's
            if self.log_file is not None:
                logging.getLogger().removeHandler(self.log_file)
                self.log_file.close()

    def open(self):
        """Own the directory, check the command, open train.log: in this order, so a refused command writes nothing."""
        cfg = self.cfg
        schema.check_run(cfg)  # types and ranges first: a value refused there says nothing else about the run
        sweep_trial = cfg.get("sweep") is not None and cfg.sweep.trial is not None
        if self.rank_zero:
            if self.out.is_symlink() and (sweep_trial or not self.explicit_run_dir):
                raise LinkError(
                    f"run directory {self.out} is a symbolic link (to {os.readlink(self.out)}), which "
                    "nnlab did not make: remove it and run again"
                )
            # A sweep's trial taken over from a killed sweep waits for its run, which may still be stopping.
            self.lock.acquire(wait=sweep_trial and self.resuming)
            refuse_links_in(self.out, "run directory")
        if self.resuming and (metrics := complete_run(self.out)):
            raise Complete(metrics)
        check_settings(cfg, self.explicit_run_dir, self.restarts > 0)
        continues = self.resuming and any((self.out / name).exists() for name in RUN_FILES)
        if self.rank_zero and continues:
            check_same_run(self.out, cfg)
        elif self.rank_zero:  # a new run, or resume=true in a folder that holds none: a new or empty folder only
            check_own_directory(self.out, sweep_trial)
        self.threads = set_cpu_threads(cfg)  # imports torch: after every check that needs none
        if self.rank_zero and not continues:
            record.claim(self.out, str(cfg.run_id), self.threads)
            self.described = True  # this start is the run's record (a refused command never is)
        self.log_file = open_log(self.out, env_rank())
        if self.rank_zero:
            log.info(
                f"Data in {Path(cfg.paths.data_dir).resolve()} (paths.data_dir); this run in {self.out} (paths.log_dir="
                f"{cfg.paths.log_dir})"
            )
        if self.rank_zero and (shared := shared_root(self.out, Path(cfg.paths.log_dir))):
            log.warning(
                f"{shared} can be written by other users: one of them could plant files or links under the names of "
                "runs there. nnlab refuses links it did not make, but keep runs in a folder only you can write to "
                "(paths.log_dir)"
            )
        warn_more_processes_than_cores(cfg)
        count_agent_start(self.out, self.restarts)
        if self.restarts:
            continue_restarted(self.restarts, self.slurm_job)
        check_launch(cfg)
        check_slurm(cfg)
        import lightning  # noqa: F401  (the checks have passed: the run is going to train or test)

        logging.getLogger("lightning").handlers.clear()  # its own console handler, added on import: lines twice
        for handler in logging.getLogger().handlers:
            handler.addFilter(quiet_lightning)
            if not isinstance(handler, logging.FileHandler):
                handler.addFilter(lambda record: record.name != DETAILS)  # tracebacks of warnings: train.log only

    def complete(self, metrics: Path):
        """The run finished before: say so, and return the metric it recorded for a sweeper (nothing is written)."""
        try:
            recorded = json.loads(metrics.read_text())
        except (OSError, ValueError):
            recorded = {}
        recorded = recorded if isinstance(recorded, dict) else {}
        if self.rank_zero:
            print(f"{self.out} holds a complete run: nothing to resume. Its metrics: {metrics}", flush=True)
        return None if recorded.get("trial_state") == "pruned" else recorded.get(self.cfg.optimized_metric)

    # ------------------------------------------------------------------------------------------------ config
    def settled(self, cfg: DictConfig) -> tuple[DictConfig, dict | None]:
        """The run's config with what is computed once set in (nnlab.run.settle), and for train=false the model the
        checkpoint holds; what else the checkpoint records is kept for preflight and the run record."""
        run_id = record.recorded_run_id(self.out) if self.resuming and self.rank_zero else None
        cfg, evaluated, self.checkpoint = settle(cfg, run_id)
        return cfg, evaluated

    def preflight(self, datamodule):
        """What can be checked before training, done before the config tree is shown, so that a failing run ends with
        its error on a short screen: the data is found and readable (rank 0 prepares it now: downloads, decodes and
        tokenises it into the cache fit reads), and a checkpoint to test (train=false) fits that data."""
        from nnlab.checkpoint import check_fits_data

        data = HydraConfig.get().runtime.choices.get("data")
        if self.checkpoint is not None and hasattr(datamodule, "vocabulary"):
            datamodule.vocabulary = (self.checkpoint.get("preprocessing") or {}).get("tokenizer")
        if self.rank_zero:
            datamodule.prepare_data()
        if self.checkpoint is not None:
            check_fits_data(self.checkpoint, self.cfg.ckpt_path, datamodule, data)

    @rank_zero_only
    def record_split(self, split: dict):
        record.record_split(self.out, split)

    @rank_zero_only
    def describe(self, cfg: DictConfig, resumed_from: str | None):
        record.describe(self.out, cfg, resumed_from, self.threads)
        self.described = True

    def trained_on(self):
        """train=false: the fingerprints of what the checkpoint trained on (None for checkpoints that have none)."""
        return ((self.checkpoint or {}).get("nnlab") or {}).get("trained_on")

    # ------------------------------------------------------------------------------------------------ record
    def fail(self, e: BaseException, one_line: bool):
        """Log the traceback into train.log, close W&B as failed, and either print one line and exit 1, or re-raise
        (a bug, or an in-process multirun, whose sweeper records the failure)."""
        if not one_line and self.described and not self.out.is_dir():  # not a bug: the folder went away
            e = ConfigError(
                f"the run directory {self.out} was moved or removed while the run ran ({type(e).__name__}: {e}); "
                "what the run wrote is wherever that folder is now"
            )
            one_line = not os.environ.get("HYDRA_FULL_ERROR")
        where = f" (details: {self.log_file.baseFilename})" if self.log_file else ""
        self.record_end("failed", error=f"{type(e).__name__}: {e}" if not isinstance(e, UserError) else str(e))
        if self.log_file is not None:
            entry = logging.LogRecord("nnlab", logging.ERROR, __file__, 0, f"run failed: {e}", None, sys.exc_info())
            self.log_file.handle(entry)  # the traceback into train.log only
        try:
            self.finish_wandb(1)
        except Exception as w:  # noqa: BLE001
            log.warning(f"could not close the W&B run ({w})")
        if one_line and not self.multirun:
            print(f"Error: {e}{where}", file=sys.stderr)
            raise SystemExit(1) from None
        if not one_line and self.log_file is not None:
            log.error(f"run failed; its directory: {self.out}")
        raise e

    def record_end(self, state: str, **facts):
        """end.json: how this start of the run ended when it did not finish (failed, stopped by a signal), for the
        run index (python -m nnlab.runs); a finished run has metrics.json, a killed one a .lock its process left."""
        if self.rank_zero and self.described and self.lock.fd is not None:
            record.write_end(self.out, state, **facts)  # not a refused command's, nor a directory another run holds

    def finish_wandb(self, exit_code: int, preempted: bool = False):
        """Close the W&B run (marked failed on a non-zero exit code, preempted when it will be resumed) so the next
        run in this process is a new one. A run that never started one (it failed before training) has none."""
        if self.loggers:  # built with the trainer: Lightning is imported
            self.finish_wandb_run(exit_code, preempted)

    @rank_zero_only
    def finish_wandb_run(self, exit_code: int, preempted: bool):
        from lightning.pytorch.loggers import WandbLogger

        for lg in self.loggers:
            if isinstance(lg, WandbLogger) and lg._experiment is not None:
                run_dir = Path(lg.experiment.dir).parent
                offline = lg._offline
                if preempted:
                    lg.experiment.mark_preempting()
                lg.experiment.finish(exit_code=exit_code)
                if offline:
                    print(
                        f"W&B is offline ({self.offline_why}); upload this run with: wandb sync "
                        f"{commands.path(run_dir)}"
                    )

    def end_stopped(self, trainer):
        """Training stopped on a signal with its checkpoint written: close the W&B run as preempted, requeue the
        SLURM job if the signal asked for it, say how the run continues, and exit (0 when requeued, else 128 + the
        signal: 130 for Ctrl-C, 143 for SIGTERM)."""
        stop, cfg = self.stop, self.cfg
        requeue = stop.requeue_requested and cfg.slurm.requeue
        how = (
            ""
            if requeue
            else "; continue with: "
            + shell_command(
                ["resume=true", commands.override("hydra.run.dir", self.out)], ("resume=", "hydra.run.dir=")
            )
        )
        name = "Ctrl-C" if stop.received == signal.SIGINT else stop.received.name
        self.record_end("stopped", signal=stop.received.name, epoch=trainer.current_epoch, step=trainer.global_step)
        log.warning(
            f"{name} received: training stopped at epoch {trainer.current_epoch}, step {trainer.global_step}; "
            f"checkpoint {stop.checkpoint if stop.saved else 'not needed (fit was over)'}{how}"
        )
        try:
            self.finish_wandb(0 if requeue else 1, preempted=True)
        except Exception as e:  # noqa: BLE001  SLURM signals every process of the job: W&B's service may be gone
            log.warning(f"could not close the W&B run ({e}); the resumed run continues it")
        requeued = requeue and (not trainer.is_global_zero or requeue_job())
        leave_process_group()
        raise SystemExit(0 if requeued else 128 + stop.received)

    @contextmanager
    def stopping(self, trainer):
        """Around fit and test: a stop on a signal ends as end_stopped says; anything else goes on up."""
        try:
            yield
        except BaseException as e:
            if self.stopped(e):
                self.end_stopped(trainer)
            raise

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def stopped(self, e: BaseException) -> bool:
        """Whether an exception out of fit or test is this run's signal stop."""
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        return isinstance(e, (Stopped, SIGTERMException)) and self.stop.received is not None

    def plugins(self) -> list:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        from nnlab.callbacks import AtomicCheckpointIO

        plugins = [AtomicCheckpointIO()]
        if SLURMEnvironment.detect():  # ranks from SLURM; requeueing is SignalStop's alone (nnlab/run/signals.py)
            plugins.append(SLURMEnvironment(auto_requeue=False))
        return plugins


def offline_reason() -> str:
    mode = os.environ.get("WANDB_MODE")
    if mode in ("offline", "dryrun"):
        return f"WANDB_MODE={mode}"
    return "no credentials found: wandb login, or WANDB_API_KEY"

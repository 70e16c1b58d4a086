"""The callbacks every run adds to its trainer (train.py): the run's record in checkpoints and loggers, the random
state in every checkpoint, a line per epoch, the times of its phases, the ranks' weight digests under DDP, and the stop
at a batch end that a signal asks for (nnlab.run.signals notes the signals); and the config tree a run shows."""

import hashlib
import logging
import signal
import socket
import time

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from nnlab import timeline
from nnlab.checkpoint import rng_state, set_rng_state
from nnlab.run.signals import SignalStop, Stopped

log = logging.getLogger("nnlab")


@rank_zero_only
def show_config(cfg: DictConfig):
    """The run's resolved config as a tree on the terminal: the groups first, then the run's own settings."""
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    config = OmegaConf.to_container(cfg, resolve=True)
    groups = [k for k in ("model", "data", "trainer", "callbacks", "logger", "paths") if k in config]
    groups += [k for k, v in config.items() if isinstance(v, dict) and k not in groups]
    tree = Tree("config", guide_style="dim")
    for key in groups:
        tree.add(key).add(Syntax(OmegaConf.to_yaml(config[key]).rstrip(), "yaml", background_color="default"))
    rest = {k: v for k, v in config.items() if k not in groups}
    tree.add("run").add(Syntax(OmegaConf.to_yaml(rest).rstrip(), "yaml", background_color="default"))
    Console(soft_wrap=True).print(tree)


def describe(batch) -> str:
    """A batch's tensors as `(128, 1, 28, 28) float32 in [-0.42, 2.82]`, nested as the batch is."""
    if isinstance(batch, (tuple, list)):
        return "(" + ", ".join(describe(b) for b in batch) + ")"
    if isinstance(batch, torch.Tensor) and batch.numel():
        low, high = batch.min().item(), batch.max().item()
        return f"{tuple(batch.shape)} {str(batch.dtype).removeprefix('torch.')} in [{low:.4g}, {high:.4g}]"
    return repr(batch)


class RunRecord(L.Callback):
    """What the run is, in every checkpoint (the config groups it was composed from, so evaluating a checkpoint
    needs no model=...; the data split and a fingerprint of every training sample, so a test on other data can say
    how much of it the model trained on), and in the loggers: the resolved config goes to them when the first
    training (or test) step is about to run, so a run that fails while its data loads leaves no W&B run behind.

    record_split: called once with the data's split record when the data is set up (run.json keeps it).
    trained_on: for a test of a checkpoint (train=false), the fingerprints of what that checkpoint trained on."""

    def __init__(self, choices: dict, resolved: dict, record_split=None, trained_on=None):
        self.choices, self.resolved, self.logged = choices, resolved, False
        self.record_split, self.trained_on = record_split, trained_on
        self.fingerprints = None  # of this run's training split, computed for the first checkpoint
        self.overlap: dict | None = None  # test samples that are training samples: metrics.json's test_overlap

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        dm = trainer.datamodule
        checkpoint["nnlab"] = {
            "choices": self.choices,
            "run_id": self.resolved.get("run_id"),
            "data": self.resolved.get("data"),
        }
        if (split := getattr(dm, "split", None)) is not None:
            checkpoint["nnlab"]["split"] = split
        if hasattr(dm, "fingerprints"):
            if self.fingerprints is None:
                self.fingerprints = dm.fingerprints("train")
            checkpoint["nnlab"]["trained_on"] = self.fingerprints

    def _log_config(self, trainer):
        if not self.logged:
            split = getattr(trainer.datamodule, "split", None)
            if split is not None and self.record_split is not None:
                self.record_split(split)
            for lg in trainer.loggers:
                lg.log_hyperparams(self.resolved)  # opens the W&B run (nnlab.callbacks.WandbLogger)
            self.logged = True

    def on_train_start(self, trainer, pl_module):
        self._log_config(trainer)

    def on_test_start(self, trainer, pl_module):
        self._log_config(trainer)
        dm = trainer.datamodule
        if not hasattr(dm, "fingerprints"):
            return
        evaluating = self.trained_on is not None
        trained = self.trained_on if evaluating else dm.fingerprints("train")
        tested = dm.fingerprints("test")
        seen = int(torch.isin(tested, trained.to(tested.device)).sum())
        self.overlap = {"samples": seen, "of": len(tested)}
        if seen and trainer.is_global_zero:
            data = self.choices.get("data")
            if evaluating:
                log.warning(
                    f"{seen} of {len(tested)} test samples of data={data} are samples the checkpoint trained on: its "
                    "test accuracy here is partly on data it learnt (metrics.json: test_overlap)"
                )
            else:
                log.warning(
                    f"{seen} of {len(tested)} test samples of data={data} read the same as training samples "
                    "(duplicates in the data): the test accuracy is partly on data the model learnt "
                    "(metrics.json: test_overlap)"
                )


class EpochLog(L.Callback):
    """One line per epoch in the log (and train.log): epoch, training loss, validation loss and accuracy, time. With
    DEBUG logging (debug=anomaly) also each epoch's first training batch: shapes, types and value ranges."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0 and log.isEnabledFor(logging.DEBUG):
            log.debug(f"epoch {trainer.current_epoch + 1}, first training batch: {describe(batch)}")

    def on_train_epoch_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()  # an epoch resumed mid-way starts here

    def on_train_epoch_end(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        if (loss := pl_module.epoch_train_loss()) is not None:
            parts.append(f"train/loss {loss:.4f}")
        parts += [f"{k} {float(metrics[k]):.4f}" for k in ("val/loss", "val/acc") if k in metrics]
        log.info("  ".join(parts) + f"  {time.perf_counter() - self.start:.1f} s")


class PhaseMarks(L.Callback):
    """metrics.json's `timeline` (nnlab.timeline): when the data was set up, training started (loggers started, sanity
    check done), its first and last steps ended and testing ended."""

    def setup(self, trainer, pl_module, stage):
        stage = getattr(stage, "value", stage)  # Lightning passes a TrainerFn: "fit", "test", ...
        timeline.mark("data" if stage == "fit" else f"data_{stage}")

    def on_train_start(self, trainer, pl_module):
        timeline.mark("train_start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        timeline.mark("first_step", again=False)
        timeline.mark("last_step")

    def on_test_end(self, trainer, pl_module):
        timeline.mark("tested")


class WeightsDigest(L.Callback):
    """Under DDP, every rank logs a digest of its weights when fit ends (`rank 1/2 on n2: weights 3f2a...`): equal
    digests show that the ranks ended with the same model."""

    def on_fit_end(self, trainer, pl_module):
        if trainer.world_size < 2:
            return
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        log.info(
            f"rank {trainer.global_rank}/{trainer.world_size} on {socket.gethostname()}: "
            f"weights {digest.hexdigest()[:16]}"
        )


class StopAtBatchEnd(L.Callback):
    """Stops training at the end of the batch in which a signal noted by `stop` (nnlab.run.signals.SignalStop) arrived,
    after saving its checkpoint; fit then ends with `Stopped`.

    Under DDP the ranks agree every `sync_every` batches (one all-reduce of a flag: about 170 us with gloo on this
    project's CPU, where the default MLP's gradient all-reduce takes 5.8 ms), so they stop at the same batch even when
    the signal reaches them at different moments; alone, a process checks after every batch.
    """

    def __init__(self, stop: SignalStop, sync_every: int = 10):
        self.stop = stop
        self.sync_every = sync_every
        self._batches = 0  # the same count on every rank: all ranks run the same number of batches

    def _stop_requested(self, trainer) -> bool:
        requested = self.stop.received is not None
        if trainer.world_size > 1:
            self._batches += 1
            if self._batches % self.sync_every:
                return False
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
            if requested and self.stop.received is None:
                self.stop.received = signal.SIGTERM  # another rank was signalled first
        return requested

    def _save(self, trainer):
        trainer.save_checkpoint(self.stop.checkpoint, weights_only=False)  # all of it: the run resumes from here
        self.stop.saved = True

    def on_train_start(self, trainer, pl_module):
        self.stop.training = True
        self.stop.take_back_sigterm()

    def on_test_start(self, trainer, pl_module):
        self.stop.take_back_sigterm()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # Not at an epoch's last batch: Lightning resumes a checkpoint written there by skipping that epoch's
        # validation and end (its learning-rate step too), so the run would not repeat. The epoch ends as usual
        # (last.ckpt is written) and the stop comes at the next batch. Every rank skips the same batch.
        if batch_idx + 1 >= trainer.num_training_batches:
            return
        if self._stop_requested(trainer):
            self._save(trainer)
            raise Stopped(self.stop.received, self.stop.checkpoint)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self._stop_requested(trainer):  # fit is over and last.ckpt holds it: the restart only tests again
            raise Stopped(self.stop.received, None)

    def on_exception(self, trainer, pl_module, exception):
        # Lightning's own SIGTERM handling can stop a step before on_train_batch_end sees the signal.
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit" and not self.stop.saved:
            self._save(trainer)


class RandomState(L.Callback):
    """Saves every rank's generators (torch CPU and CUDA, Python's, NumPy's) in each checkpoint and restores them on
    resume, so dropout masks, augmentation, SpecAugment, noise mixing and word dropout draw what an uninterrupted
    run draws. (Batch order needs no state: each epoch's permutation comes from the seed and the epoch.)

    Under DDP every rank's state is gathered into the one checkpoint rank 0 writes; a run resumed with another
    number of processes cannot repeat the draws and says so."""

    def state_dict(self):
        return {}  # the states travel in on_save_checkpoint, which sees the trainer (rank, world size)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        state = rng_state()
        if trainer.world_size > 1:
            states = [None] * trainer.world_size
            torch.distributed.all_gather_object(states, state)
        else:
            states = [state]
        checkpoint["rng_states"] = states

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        states = checkpoint.get("rng_states")
        if states is None:
            rank_zero_warn(
                "the checkpoint holds no random state (written by an older version): the resumed run "
                "continues with other random draws than an uninterrupted one"
            )
        elif len(states) != trainer.world_size:
            rank_zero_warn(
                f"the checkpoint's random state comes from {len(states)} process(es), this run has "
                f"{trainer.world_size}: the resumed run draws other random numbers than the original"
            )
        else:
            set_rng_state(states[trainer.global_rank])

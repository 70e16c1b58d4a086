"""Lightning callbacks and plugins the configs refer to."""

import math
import os
import time
from pathlib import Path

import lightning as L
import lightning.pytorch.callbacks
import lightning.pytorch.loggers
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import TQDMProgressBar

from nnlab import kinds
from nnlab.atomic import atomic_open


def survive(what: str, draw, *args):
    """Run `draw` (a report, a picture); if it fails, say so in one line (the traceback in train.log) and go on: the
    run's metrics and checkpoints matter more than a picture of them."""
    import logging

    try:
        draw(*args)
    except Exception as e:  # any failure of a picture
        logging.getLogger("nnlab").warning(f"{what} could not be written ({type(e).__name__}: {e}); the run goes on")
        logging.getLogger("nnlab.details").warning(f"{what} failed", exc_info=True)


class ModelCheckpoint(lightning.pytorch.callbacks.ModelCheckpoint):
    """Lightning's ModelCheckpoint, for a run resumed in another folder than it was written in (its directory moved or
    copied, its file system mounted elsewhere): Lightning then forgets the best score and keeps the old folder's path
    as the best checkpoint, so the first epoch after the resume became the best whatever its score, and the test read
    the old folder's file. Here the paths the state records under its old folder are read under the new one, and the
    scores are kept. The same name (its state's key) as Lightning's: checkpoints of either load into the other."""

    def load_state_dict(self, state_dict: dict):
        recorded, here = (state_dict.get("dirpath") or "").rstrip(os.sep), (self.dirpath or "").rstrip(os.sep)
        if recorded and here and recorded != here:
            moved = lambda path: here + path[len(recorded) :] if str(path).startswith(recorded + os.sep) else path
            paths = ("best_model_path", "kth_best_model_path", "last_model_path")
            state_dict = {
                **state_dict,
                "dirpath": self.dirpath,
                **{k: moved(state_dict[k]) for k in paths if k in state_dict},
                "best_k_models": {moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()},
            }
        super().load_state_dict(state_dict)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside it, fsyncs, then renames over the old one.

    A kill at any moment leaves either the previous checkpoint or the new one, never half a file.
    (Lightning's own writer goes through an fsspec transaction whose temporary file lives in /tmp
    and is then copied onto the target, which is not atomic.)
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_open(path) as f:
            torch.save(checkpoint, f)


def steady_rate(per_epoch: list[float]) -> float | None:
    """The mean rate of the epochs after the first (which includes one-off warm-up), if there are any."""
    rates = per_epoch[1:] or per_epoch
    return sum(rates) / len(rates) if rates else None


class EpochClock(L.Callback):
    """Times each training epoch from its start to its last training step, the validation runs inside it taken out,
    the device synchronised: `elapsed(trainer)` at the epoch's end. Validation runs inside the training epoch (before
    on_train_epoch_end), and what follows an epoch's last validation (its checkpoints, written on validation end, and
    the other callbacks' epoch-end work) is not training either."""

    def _now(self, trainer):
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        self.start, self.paused, self.validated_at = self._now(trainer), 0.0, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.validated_at = None  # a training step since the last validation: the epoch's training goes on

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val_start = self._now(trainer)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validated_at = self._now(trainer)
            self.paused += self.validated_at - self.val_start

    def elapsed(self, trainer) -> float:
        end = self.validated_at if self.validated_at is not None else self._now(trainer)
        return end - self.start - self.paused


class Throughput(EpochClock):
    """Logs training samples per second for each epoch (and tokens per second for token sequences):
    validation excluded, device synchronised."""

    def __init__(self):
        self.samples_per_s: list[float] = []
        self.tokens_per_s: list[float] = []
        self.seconds: list[float] = []  # each epoch's training time

    def on_train_epoch_start(self, trainer, pl_module):
        super().on_train_epoch_start(trainer, pl_module)
        self.samples, self.tokens = 0, 0

    def on_train_start(self, trainer, pl_module):
        self.on_train_epoch_start(trainer, pl_module)  # a run resumed mid-epoch starts measuring here

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        samples, tokens = pl_module.reads.count(batch[0])  # the kind of data counts its batch
        self.samples += samples
        self.tokens += tokens

    def on_train_epoch_end(self, trainer, pl_module):
        seconds = self.elapsed(trainer)
        self.seconds.append(seconds)
        rate = self.samples * trainer.world_size / seconds
        self.samples_per_s.append(rate)
        pl_module.log("train/samples_per_s", rate, rank_zero_only=True)
        if self.tokens:
            self.tokens_per_s.append(self.tokens * trainer.world_size / seconds)
            pl_module.log("train/tokens_per_s", self.tokens_per_s[-1], rank_zero_only=True)


class StopAtTestAccuracy(EpochClock):
    """Tests after every training epoch and stops training once the test accuracy reaches `target`: how
    scripts/benchmark.py measures a recipe's training time to an accuracy (`+callbacks.stop_at_test_accuracy`). Not
    for choosing a model: that is what the validation split is for. Logs `time_to_target/seconds` (training time so
    far: each epoch from its first step to its last, validation and these test passes excluded) and
    `time_to_target/test_acc` every epoch; `time_to_target/epoch` and `time_to_target/acc` once reached."""

    def __init__(self, target: float):
        self.target, self.spent, self.reached = target, 0.0, False

    @torch.no_grad()
    def on_train_epoch_end(self, trainer, pl_module):
        self.spent += self.elapsed(trainer)
        dm, right, total = trainer.datamodule, 0, 0
        was_training = pl_module.training
        pl_module.eval()
        for batch in dm.test_dataloader():
            x, y = dm.on_after_batch_transfer(dm.transfer_batch_to_device(batch, pl_module.device, 0), 0)
            right += (pl_module(x).argmax(-1) == y).sum().item()
            total += len(y)
        pl_module.train(was_training)
        acc = right / total
        pl_module.log("time_to_target/seconds", self.spent, rank_zero_only=True)
        pl_module.log("time_to_target/test_acc", acc, rank_zero_only=True)
        from lightning.pytorch.utilities import rank_zero_info

        rank_zero_info(
            f"epoch {trainer.current_epoch + 1}: test/acc {acc:.4f}, training time so far {self.spent:.1f} s"
        )
        if acc >= self.target and not self.reached:
            self.reached = True
            pl_module.log("time_to_target/epoch", float(trainer.current_epoch + 1), rank_zero_only=True)
            pl_module.log("time_to_target/acc", acc, rank_zero_only=True)
            trainer.should_stop = True


class TrainingBudget(L.Callback):
    """A training length that follows the data: at least `min_steps` optimizer steps, so a small training set trains
    for more epochs than trainer.max_epochs (a large one for trainer.max_epochs). Decided once the data is set up,
    before the optimizer and its schedule are built; the same data gives the same length, so a resumed run ends
    where it would have. Off (trainer.max_epochs exactly) with min_steps 0, with `exact` (trainer.max_epochs given on
    the command line), and in the runs that choose their own length: fast_dev_run, limit_train_batches, max_steps."""

    def __init__(self, min_steps: int, exact: bool = False):
        self.min_steps, self.exact = min_steps, exact

    def setup(self, trainer, pl_module, stage):
        loop, limit = trainer.fit_loop, trainer.limit_train_batches
        whole_epochs = limit is None or (isinstance(limit, float) and limit == 1.0)  # the int 1 is one batch
        if (
            stage != "fit"
            or not self.min_steps
            or self.exact
            or trainer.fast_dev_run
            or loop.max_epochs in (None, -1)
            or not whole_epochs
            or trainer.max_steps not in (None, -1)
        ):
            return
        # Steps of one process: under DDP each of N processes takes 1/N of the batches, and the budget stays the same
        # number of samples seen.
        batches = len(trainer.datamodule.train_dataloader()) * trainer.world_size
        steps = math.ceil(batches / trainer.accumulate_grad_batches)
        epochs = math.ceil(self.min_steps / max(steps, 1))
        if epochs > loop.max_epochs:
            from lightning.pytorch.utilities import rank_zero_info

            # Validation (and with it the epoch checkpoints) as often as trainer.max_epochs epochs would have it:
            # a training set of one batch would otherwise validate and write a checkpoint after every step.
            every = max(trainer.check_val_every_n_epoch, epochs // loop.max_epochs)
            rank_zero_info(
                f"training budget: {epochs} epochs of {steps} batches (at least budget.min_steps="
                f"{self.min_steps} optimizer steps; trainer.max_epochs={loop.max_epochs} would give "
                f"{loop.max_epochs * steps}), validating every {every}; trainer.max_epochs=N on the command "
                "line trains N exactly"
            )
            loop.max_epochs = epochs
            trainer.check_val_every_n_epoch = every
        # Under DDP every rank computes the same: the same data, the same world size.


class TestReport(L.Callback):
    """After testing: the confusion matrix, and the test samples shown as their kind shows them
    (nnlab.kinds: misclassified images as a grid, texts as a table, clips as playable audio).

    Written to `out_dir` (confusion_matrix.png; misclassified.png for images; test_samples.csv for text,
    misclassified first, most confident first; test_clips/*.wav for audio, misclassified and correct) and
    logged as W&B media and W&B tables. class_names: null takes the datamodule's `class_names`, else the
    class indices.
    """

    def __init__(self, out_dir: str, class_names: list | None):
        self.out_dir = Path(out_dir)
        self.class_names = class_names

    def on_test_epoch_end(self, trainer, pl_module):
        confusion = pl_module.test_confusion.compute().cpu()  # (true, predicted), summed over ranks
        pl_module.test_confusion.reset()
        if not trainer.is_global_zero:
            return
        # A report that cannot be drawn must not lose the test's metrics (metrics.json is written after this).
        survive("the test report (confusion_matrix.png, the test samples)", self.report, trainer, pl_module, confusion)

    def report(self, trainer, pl_module, confusion):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        datamodule = trainer.datamodule
        names = list(self.class_names or getattr(datamodule, "class_names", None) or range(len(confusion)))
        names = [str(n) for n in names]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fig = confusion_figure(plt, confusion, names)
        fig.tight_layout()
        with atomic_open(self.out_dir / "confusion_matrix.png") as f:  # a kill mid-write leaves the old one
            fig.savefig(f, format="png", dpi=120)
        plt.close(fig)

        # Misclassified first, then correct; each most confident first.
        samples = [
            (x, label, probs, wrong)
            for wrong in (True, False)
            for x, label, probs in sorted(pl_module.test_samples[wrong], key=lambda s: -float(s[2].max()))
        ]
        preprocessing = datamodule.preprocessing() if hasattr(datamodule, "preprocessing") else {}
        # the data's own kind shows its samples (the network may read any kind of one tensor: the MLP)
        shower = kinds.kind(preprocessing["kind"]) if preprocessing.get("kind") else pl_module.reads
        shown = shower.show(samples, names, preprocessing, self.out_dir) if preprocessing else {}

        for logger in trainer.loggers:
            if isinstance(logger, lightning.pytorch.loggers.WandbLogger):
                import wandb

                # W&B's interactive matrix wants one (true, predicted) pair per test sample.
                n = len(names)
                pairs = torch.cartesian_prod(torch.arange(n), torch.arange(n)).repeat_interleave(confusion.flatten(), 0)
                media = {
                    "test/confusion_matrix": wandb.plot.confusion_matrix(
                        y_true=pairs[:, 0].tolist(), preds=pairs[:, 1].tolist(), class_names=names
                    ),
                    "test/confusion_matrix_png": wandb.Image(str(self.out_dir / "confusion_matrix.png")),
                    **{key: make(wandb) for key, make in shown.items()},
                }
                logger.experiment.log(media)


class LearningCurves(L.Callback):
    """curves.png in `out_dir`: training and validation loss and accuracy per epoch, the best epoch (by the best
    checkpoint's monitor) marked, and the learning rate over the optimizer steps (about 500 points).

    The history travels in the checkpoints (this callback's state), so a resumed run, after a kill or a preemption,
    draws one curve from its first epoch (what it trains again after its checkpoint, it records again). Drawn when fit
    ends, also when it stops early (a signal, an error), and written at once (nnlab.atomic). `fitted` is the history
    as fit left it, what metrics.json records: testing from best.ckpt restores the callbacks' state of that epoch.
    """

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.history: list[dict] = []  # one row per epoch: epoch (1-based), train/val loss and acc, lr
        self.rates: list[tuple[int, float]] = []  # (optimizer step, learning rate)
        self.fitted: list[dict] | None = None

    def state_dict(self) -> dict:
        return {"history": self.history, "rates": self.rates}

    def load_state_dict(self, state_dict: dict):
        self.history = list(state_dict.get("history", []))
        self.rates = [tuple(r) for r in state_dict.get("rates", [])]

    @staticmethod
    def _rate(trainer) -> float | None:
        return float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None

    def on_train_start(self, trainer, pl_module):
        # About 500 points of the learning rate whatever the length; a resumed run drops what it will step again.
        total = trainer.estimated_stepping_batches  # inf for a run without an end
        timed = any(isinstance(c, lightning.pytorch.callbacks.Timer) for c in trainer.callbacks)  # ends on time
        self.every = max(1, int(total // 500)) if math.isfinite(total) and not timed else 10
        self.rates = [r for r in self.rates if r[0] <= trainer.global_step]
        self.history = [r for r in self.history if r["epoch"] <= trainer.current_epoch]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step + 1  # the optimizer step this batch takes part in, at the rate it will take
        if (step % self.every == 0 or step == 1) and (not self.rates or self.rates[-1][0] != step):
            self.rates.append((step, self._rate(trainer)))

    def on_train_epoch_end(self, trainer, pl_module):
        # Before the module logs train/loss and train/acc and before the epoch's checkpoint is written (monitoring
        # callbacks run last), so the epoch's row is in that checkpoint: computed here as the module will log them.
        epoch = trainer.current_epoch + 1
        row = {"epoch": epoch}
        if (loss := pl_module.epoch_train_loss()) is not None:  # the mean over the processes, as logged (sync_dist)
            row["train/loss"] = float(
                trainer.strategy.reduce(torch.tensor(loss, device=pl_module.device), reduce_op="mean")
            )
        if getattr(pl_module, "train_acc", None) is not None and pl_module.train_steps:
            row["train/acc"] = float(pl_module.train_acc.compute())  # every rank: it synchronises
        metrics = trainer.callback_metrics
        row |= {k: float(metrics[k]) for k in ("val/loss", "val/acc") if k in metrics and self._validated(trainer)}
        row["lr"] = self._rate(trainer)
        self.history.append(row)

    @staticmethod
    def _validated(trainer) -> bool:
        """Whether validation ran at the end of this epoch (check_val_every_n_epoch, limit_val_batches=0)."""
        every = trainer.check_val_every_n_epoch
        return bool(sum(trainer.num_val_batches)) and (every is None or (trainer.current_epoch + 1) % every == 0)

    def on_fit_end(self, trainer, pl_module):
        self.fitted = list(self.history)
        survive("curves.png", self.draw, trainer)

    def on_exception(self, trainer, pl_module, exception):
        if trainer.training:
            survive("curves.png", self.draw, trainer)

    def best_epoch(self, trainer) -> int | None:
        """The epoch whose validation the best checkpoint chose (its monitor and mode), if it is in the history."""
        ckpt = trainer.checkpoint_callback
        monitor, mode = getattr(ckpt, "monitor", None), getattr(ckpt, "mode", "min")
        rows = [r for r in self.history if monitor in r]
        if not rows:
            return None
        pick = max if mode == "max" else min
        return pick(rows, key=lambda r: r[monitor])["epoch"]

    def draw(self, trainer):
        if not trainer.is_global_zero or not self.history:
            return
        import matplotlib.pyplot as plt

        fig = curves_figure(self.history, self.rates, self.best_epoch(trainer))
        with atomic_open(self.out_dir / "curves.png") as f:
            fig.savefig(f, format="png", dpi=100)
        plt.close(fig)


def curves_figure(history: list[dict], rates: list[tuple], best: int | None):
    """Loss and accuracy per epoch (training and validation; the best epoch marked) and the learning rate per
    optimizer step, as curves.png shows them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    last = max(r["epoch"] for r in history)
    for ax, kind in zip(axes[:2], ("loss", "acc")):
        for split, style in (("train", "o-"), ("val", "s-")):
            rows = [r for r in history if f"{split}/{kind}" in r]
            if rows:
                ax.plot([r["epoch"] for r in rows], [r[f"{split}/{kind}"] for r in rows], style, ms=3, label=split)
        ax.set(xlabel="epoch", title={"loss": "loss", "acc": "accuracy"}[kind])
        if last <= 12:  # every epoch a tick (one epoch alone got ticks at 0.96, 0.98, ... from the locator)
            ax.set_xticks(range(1, last + 1))
            ax.set_xlim(0.5, last + 0.5)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if best is not None:
        for ax in axes[:2]:
            ax.axvline(best, color="grey", ls="--", lw=1, label=f"best (epoch {best})")
    for ax in axes[:2]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    rates = [r for r in rates if r[1] is not None]
    if rates:
        axes[2].plot([r[0] for r in rates], [r[1] for r in rates], ".-" if len(rates) < 60 else "-", lw=1.2, ms=3)
    axes[2].set(xlabel="optimizer step", title="learning rate")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    return fig


def confusion_figure(plt, confusion: torch.Tensor, names: list[str]):
    """The (true, predicted) counts as a figure whose every number is readable: shaded by log count, white text on
    the darker half of the colour scale as drawn (it spans min..max), black on the lighter."""
    n = len(names)  # 2 classes: a 4-inch figure with large numbers; 35: a 12-inch one with small ones
    size = min(12.0, max(4.0, 1.5 + 0.3 * n))
    fontsize = max(5.0, min(14.0, 60 / n))
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    shade = confusion.float().log1p()
    low, high = float(shade.min()), float(shade.max())
    ax.imshow(shade, cmap="Blues", vmin=low, vmax=max(high, low + 1e-9))
    for i in range(n):
        for j in range(n):
            dark = (float(shade[i, j]) - low) > (high - low) / 2
            ax.text(
                j,
                i,
                int(confusion[i, j]),
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if dark else "black",
            )
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title="test confusion matrix")
    ax.set_xticklabels(names, rotation=90 if n > 12 else 0, fontsize=max(6.0, min(11.0, 80 / n)))
    ax.set_yticklabels(names, fontsize=max(6.0, min(11.0, 80 / n)))
    return fig


class WandbLogger(lightning.pytorch.loggers.WandbLogger):
    """Lightning's W&B logger, with two changes.

    The W&B run starts with the first training (or test) step, not while the data loads: Lightning opens every
    logger's experiment before the setup hooks, so a run that failed on missing data or a bad setting left a failed
    W&B run (and an "upload this run" line) behind. Until something is logged (train.py logs the config when the
    first training or test step is about to run) the experiment is not there, which Lightning's setup skips.
    And less the `anonymous=None` it always passes to wandb.init (W&B then warns, on every run, that the setting has
    no effect)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
        self._held = True

    def log_hyperparams(self, params, *args, **kwargs):
        self._held = False
        return super().log_hyperparams(params, *args, **kwargs)

    def log_metrics(self, metrics, step=None):
        self._held = False
        return super().log_metrics(metrics, step)

    @property
    def experiment(self):
        if self._held and self._experiment is None:
            raise AttributeError("the W&B run starts with the first training step")
        return super().experiment


class RunningLoss:
    """A progress bar's metrics with the epoch's running training loss from the first step on (read from the module's
    sum on the device, so only when the bar redraws), without W&B's run id."""

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        if trainer.training and (loss := pl_module.epoch_train_loss()) is not None:
            items = {"loss": f"{loss:.4g}", **items}
        return items


class ProgressBar(RunningLoss, TQDMProgressBar):
    """TQDM's bar (callbacks/progress_bar=tqdm), redrawn every `refresh_rate` steps, with the running loss."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if batch_idx == 0 and self.is_enabled and not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))


class RichProgressBar(RunningLoss, lightning.pytorch.callbacks.RichProgressBar):
    """Rich's bar (callbacks/progress_bar=rich) with the running loss. Lightning's reads the metrics after every
    training step; here only on the first step and every `refresh_rate`-th, like TQDM's (reading the loss waits for
    the device)."""

    def __init__(self, refresh_rate: int = 20, **kwargs):
        super().__init__(refresh_rate=refresh_rate, **kwargs)

    def _update_metrics(self, trainer, pl_module):
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        if trainer.training and done > 1 and done % self.refresh_rate:
            return
        super()._update_metrics(trainer, pl_module)


class ModelSummary(lightning.pytorch.callbacks.ModelSummary):
    """Lightning's table of layers and parameters when fit starts; the counts (`counts`) also go into metrics.json
    (train.py) and the W&B run's summary."""

    counts: dict | None = None

    def _summary(self, trainer, pl_module):
        summary = super()._summary(trainer, pl_module)
        self.counts = {"model/params": summary.total_parameters,
                       "model/params_trainable": summary.trainable_parameters}  # fmt: skip
        return summary

    def on_train_end(self, trainer, pl_module):
        if not trainer.is_global_zero:  # only rank zero has the W&B run
            return
        for logger in trainer.loggers:  # the W&B run is open once training has started
            if isinstance(logger, lightning.pytorch.loggers.WandbLogger) and self.counts:
                logger.experiment.summary.update(self.counts)


class TestsAveragedWeights:
    """Lightning's weight averaging, tested with the averaged weights.

    Lightning's WeightAveraging writes the averaged weights as a checkpoint's `state_dict` and the raw ones as
    `current_model_state`, and on loading any checkpoint while its averaged model exists it loads the raw ones into
    the module. `trainer.test(ckpt_path=best)` after fit in the same process therefore tested the raw weights of the
    best epoch, not the averaged weights that were validated and chosen. Here a checkpoint loaded outside fit (test,
    validate, predict) keeps its `state_dict`: the averaged weights.

    And until the average holds a first update (SWA's start_epoch, say) the raw weights are validated, saved and
    kept at the end: Lightning's would validate, save and end with the initial weights it copied."""

    def _averaged(self) -> bool:
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        from lightning.pytorch.trainer.states import TrainerFn

        if trainer.state.fn == TrainerFn.FITTING:  # resuming: the raw weights train on, the average is restored
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_validation_epoch_start(self, trainer, pl_module):
        self._swapped = self._averaged()
        if self._swapped:
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module):
        if getattr(self, "_swapped", False):
            self._swap_models(pl_module)
            self._swapped = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if self._averaged():
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_train_end(self, trainer, pl_module):
        if self._averaged():
            super().on_train_end(trainer, pl_module)


class EMAWeightAveraging(TestsAveragedWeights, lightning.pytorch.callbacks.EMAWeightAveraging):
    """An exponential moving average of the weights after every optimizer step (callbacks/weight_averaging=ema).

    warmup: the decay grows with the number of updates n, min(decay, (1 + n) / (10 + n)) (TensorFlow's
    ExponentialMovingAverage with num_updates, timm's EMA warm-up), so the first weights, far from trained, fade
    fast. Without it a decay of 0.999 still gives the initial weights 0.999^n of the average: 70% after the 352 steps
    of an LSTM epoch, 12% after its 2,112 steps of training."""

    def __init__(self, decay: float = 0.999, warmup: bool = True, **kwargs):
        super().__init__(decay=decay, **kwargs)
        if warmup:
            self._kwargs["avg_fn"] = ema_with_warmup(decay)  # what Lightning passes to torch's AveragedModel


def ema_with_warmup(decay: float):
    """AveragedModel's avg_fn for an EMA of decay min(decay, (1 + n) / (10 + n)) after n updates (n, a tensor on the
    device: no wait for it)."""

    def update(averaged, current, n):
        d = ((1 + n) / (10 + n)).clamp(max=decay).to(averaged.dtype) if averaged.is_floating_point() else decay
        return averaged + (current - averaged) * (1 - d)

    return update


class SWAWeightAveraging(TestsAveragedWeights, lightning.pytorch.callbacks.WeightAveraging):
    """Stochastic weight averaging (callbacks/weight_averaging=swa): the equal average of the weights at the end of
    every epoch from `start_epoch` (0-based) on."""

    def __init__(self, start_epoch: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.start_epoch = start_epoch

    def should_update(self, step_idx=None, epoch_idx=None):
        return epoch_idx is not None and epoch_idx >= self.start_epoch


def controls_report(trainer, callbacks: list, fitted: dict) -> dict:
    """What the controls a run was given did in fit, for metrics.json, said in the log too: the parameter counts, when
    early stopping stopped training, whether an overfit run learnt its batches. Read right after fit: testing the best
    checkpoint restores the callbacks' states as they were when it was written."""
    from lightning.pytorch.utilities import rank_zero_info

    report = next((c.counts for c in callbacks if isinstance(c, ModelSummary) and c.counts), {})
    if (stopper := trainer.early_stopping_callback) is not None:
        stopped = stopper.stopped_epoch > 0
        report["early_stopping"] = {
            "stopped": stopped,
            "epoch": stopper.stopped_epoch + 1 if stopped else None,  # 1-based, as the log counts epochs
            "reason": stopper.stopping_reason_message,
            "monitor": stopper.monitor,
            "best": float(stopper.best_score),
            "patience": stopper.patience,
        }
        if stopped:
            rank_zero_info(f"early stopping: stopped after epoch {stopper.stopped_epoch + 1} of {trainer.max_epochs}: "
                           f"{stopper.stopping_reason_message}")  # fmt: skip
    if ended := stopped_early(trainer):
        report["stopped_early"] = ended
        if ended["by"] != "early_stopping":  # which says so itself, above
            rank_zero_info(f"training stopped early: {ended['why']}")
    if trainer.overfit_batches and "train/acc" in fitted:
        acc = fitted["train/acc"]
        report["overfit_check"] = {"batches": trainer.overfit_batches, "train/acc": acc, "passed": acc >= 0.99}
        verdict = "passed (>= 0.99)" if acc >= 0.99 else "NOT passed: the network, loss or data does not learn"
        rank_zero_info(f"overfit check: training accuracy {acc:.4f} on {trainer.overfit_batches} batch(es) after "
                       f"{trainer.current_epoch} epochs: {verdict}")  # fmt: skip
    return report


def stopped_early(trainer) -> dict | None:
    """Why fit ended before trainer.max_epochs, when a limit other than a signal ended it: the time limit
    (trainer.max_time), early stopping, trainer.max_steps; None when it trained every epoch."""
    from lightning.pytorch.callbacks import Timer

    epochs, step, planned = trainer.current_epoch, trainer.global_step, trainer.max_epochs
    if planned not in (None, -1) and epochs >= planned:
        return None
    at = f"after {epochs} of {planned if planned not in (None, -1) else 'unlimited'} epochs, at step {step}"
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    stopper = trainer.early_stopping_callback
    if timer is not None and (left := timer.time_remaining()) is not None and left <= 0:
        by, why = "max_time", f"the time limit, trainer.max_time ({timer.time_elapsed() - left:.0f} s of training)"
    elif stopper is not None and stopper.stopped_epoch > 0:
        by, why = "early_stopping", f"early stopping ({stopper.monitor} stopped improving)"
    elif trainer.max_steps not in (None, -1) and step >= trainer.max_steps:
        by, why = "max_steps", f"trainer.max_steps={trainer.max_steps}"
    else:
        return None
    return {"by": by, "epoch": epochs, "step": step, "why": f"{why}, {at}"}


def profiler_reports(trainer) -> dict:
    """Where the profiler (debug=profiler, trainer.profiler) wrote its reports, named in the log and metrics.json."""
    from lightning.pytorch.utilities import rank_zero_info

    profiler = trainer.profiler
    if not (getattr(profiler, "dirpath", None) and getattr(profiler, "filename", None)):
        return {}
    reports = sorted(str(p) for p in Path(profiler.dirpath).glob(f"*{profiler.filename}*.txt"))
    rank_zero_info("profiler report: " + ", ".join(reports))
    return {"profiler_reports": reports}

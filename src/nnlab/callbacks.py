"""Lightning callbacks and plugins the configs refer to."""

import math
import time
from pathlib import Path

import lightning as L
import lightning.pytorch.loggers
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import TQDMProgressBar

from nnlab.atomic import atomic_open


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


class Throughput(L.Callback):
    """Logs training samples per second for each epoch (and tokens per second for token sequences):
    validation excluded, device synchronised."""

    def __init__(self):
        self.samples_per_s: list[float] = []
        self.tokens_per_s: list[float] = []

    def _now(self, trainer):
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        self.samples, self.tokens, self.start, self.paused = 0, 0, self._now(trainer), 0.0

    def on_train_start(self, trainer, pl_module):
        self.on_train_epoch_start(trainer, pl_module)  # a run resumed mid-epoch starts measuring here

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        samples, tokens = pl_module.reads.count(batch[0])  # the kind of data counts its batch
        self.samples += samples
        self.tokens += tokens

    # Validation runs inside the training epoch (before on_train_epoch_end): take its time out.
    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val_start = self._now(trainer)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.paused += self._now(trainer) - self.val_start

    def on_train_epoch_end(self, trainer, pl_module):
        seconds = self._now(trainer) - self.start - self.paused
        rate = self.samples * trainer.world_size / seconds
        self.samples_per_s.append(rate)
        pl_module.log("train/samples_per_s", rate, rank_zero_only=True)
        if self.tokens:
            self.tokens_per_s.append(self.tokens * trainer.world_size / seconds)
            pl_module.log("train/tokens_per_s", self.tokens_per_s[-1], rank_zero_only=True)


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
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        datamodule = trainer.datamodule
        names = list(self.class_names or getattr(datamodule, "class_names", None) or range(len(confusion)))
        names = [str(n) for n in names]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fig = confusion_figure(plt, confusion, names)
        fig.tight_layout()
        fig.savefig(self.out_dir / "confusion_matrix.png", dpi=120)
        plt.close(fig)

        # Misclassified first, then correct; each most confident first.
        samples = [
            (x, label, probs, wrong)
            for wrong in (True, False)
            for x, label, probs in sorted(pl_module.test_samples[wrong], key=lambda s: -float(s[2].max()))
        ]
        preprocessing = datamodule.preprocessing() if hasattr(datamodule, "preprocessing") else {}
        shown = pl_module.reads.show(samples, names, preprocessing, self.out_dir) if preprocessing else {}

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


class ProgressBar(TQDMProgressBar):
    """TQDM's bar showing the epoch's running training loss from the first step on (read from the module's sum on
    the device only when the bar redraws, every `refresh_rate` steps), without W&B's run id."""

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        if trainer.training and (loss := pl_module.epoch_train_loss()) is not None:
            items = {"loss": f"{loss:.4g}", **items}
        return items

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if batch_idx == 0 and self.is_enabled and not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

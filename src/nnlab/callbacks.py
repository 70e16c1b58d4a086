"""Lightning callbacks and plugins the configs refer to."""

import math
import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.loggers import WandbLogger

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


class Throughput(L.Callback):
    """Logs training samples per second for each epoch: validation excluded, device synchronised."""

    def __init__(self):
        self.samples_per_s: list[float] = []

    def _now(self, trainer):
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        self.samples, self.start, self.paused = 0, self._now(trainer), 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.samples += len(batch[1])

    # Validation runs inside the training epoch (before on_train_epoch_end): take its time out.
    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val_start = self._now(trainer)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.paused += self._now(trainer) - self.val_start

    def on_train_epoch_end(self, trainer, pl_module):
        rate = self.samples * trainer.world_size / (self._now(trainer) - self.start - self.paused)
        self.samples_per_s.append(rate)
        pl_module.log("train/samples_per_s", rate, rank_zero_only=True)


class TestReport(L.Callback):
    """After testing: the confusion matrix and a grid of misclassified images, as PNGs and W&B media."""

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

        names = self.class_names or [str(i) for i in range(len(confusion))]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(6, 5.5))
        shade = confusion.float().log1p()
        ax.imshow(shade, cmap="Blues")
        for i in range(len(names)):
            for j in range(len(names)):
                dark = shade[i, j] > shade.max() / 2
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
        ax.set(xticks=range(len(names)), yticks=range(len(names)), xticklabels=names, yticklabels=names,
               xlabel="predicted", ylabel="true", title="test confusion matrix")
        fig.tight_layout()
        fig.savefig(self.out_dir / "confusion_matrix.png", dpi=120)
        plt.close(fig)

        mistakes = pl_module.test_mistakes
        if mistakes:
            images = torch.cat([m[0] for m in mistakes])[:64]  # (N, C, H, W)
            labels = torch.cat([m[1] for m in mistakes])[:64]
            probs = torch.cat([m[2] for m in mistakes])[:64]
            cols = 8
            rows = math.ceil(len(images) / cols)
            fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.4), squeeze=False)
            for ax in axes.flat:
                ax.set_axis_off()
            for ax, img, t, p in zip(axes.flat, images, labels, probs):
                ax.imshow(img.permute(1, 2, 0).squeeze(-1), cmap="gray")
                ax.set_title(f"{names[t]}→{names[p.argmax()]} {p.max():.2f}", fontsize=7)
            fig.suptitle("misclassified test images: true→predicted, confidence", fontsize=9)
            fig.tight_layout()
            fig.savefig(self.out_dir / "misclassified.png", dpi=120)
            plt.close(fig)

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                # W&B's interactive matrix wants one (true, predicted) pair per test sample.
                n = len(names)
                pairs = torch.cartesian_prod(torch.arange(n), torch.arange(n)).repeat_interleave(confusion.flatten(), 0)
                media = {
                    "test/confusion_matrix": wandb.plot.confusion_matrix(
                        y_true=pairs[:, 0].tolist(), preds=pairs[:, 1].tolist(), class_names=names
                    ),
                    "test/confusion_matrix_png": wandb.Image(str(self.out_dir / "confusion_matrix.png")),
                }
                if mistakes:
                    media["test/misclassified"] = wandb.Image(str(self.out_dir / "misclassified.png"))
                logger.experiment.log(media)

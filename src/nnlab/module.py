"""The LightningModule: one classifier over any network in nnlab.nets."""

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from nnlab import earlier, objectives, schema
from nnlab import optim as optimization
from nnlab.errors import ConfigError, UserError
from nnlab.kinds import kind
from nnlab.nets import network

# Steps between checks for a non-finite loss: each check waits for the device once.
NONFINITE_CHECK_EVERY = 50


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or infinite: a setting (usually the learning rate) or the data, not a bug."""


# Test samples kept for the report (TestReport): misclassified ones and, to fill a table, correct ones.
KEEP_TEST_SAMPLES = 500


class Classifier(L.LightningModule):
    """Classification; every argument is a primitive, so checkpoints load anywhere.

    net, arch: a name in nnlab.nets.NETS (or the import path of a network of your own) and its constructor
        arguments; the network says the kind of data it reads (its `reads`), which says how a batch is fed to it
        (nnlab.kinds). arch.num_classes=1 makes a binary classifier with one sigmoid output and binary
        cross-entropy; otherwise softmax and cross-entropy over num_classes outputs.
    lr: the learning rate, which the optimizer and the schedule both read
    optim: the optimizer, as conf/optim/ gives it ({"_target_": "torch.optim.AdamW", "weight_decay": 1e-4, "fused":
        true}); weight decay applies to weights, not to biases and normalisation parameters (nnlab.optim)
    sched: the learning-rate schedule, as conf/sched/ gives it ({"_target_": "nnlab.schedules.OneCycle",
        "warmup_pct": 0.2, "anneal_to": 0.0}); None: a constant rate
    objective: what a training step minimises beyond the loss, as nnlab.objectives builds it ({"name":
        "adversarial", "norm": 5.0, "length": 256, "share": 1.0}: adversarial training on word embeddings); None: the
        loss alone
    compile: compile the network with torch.compile when fit starts (nn.Module.compile: the state dict's keys stay
        those of the plain network, so checkpoints load either way); predict and load_from_checkpoint run it eagerly
    label_smoothing: the share of each training target spread evenly over the classes (cross-entropy's
        label_smoothing; for one sigmoid output, targets 1 - s/2 and s/2); validation and test losses are plain
    input: ignored; checkpoints written before networks declared what they read recorded it here
    adversarial, adversarial_length, adversarial_share: read from nnlab 0.1.0's checkpoints, as the objective they
        meant; optimizer, weight_decay, momentum, scheduler, warmup_pct, anneal_to: read from checkpoints written
        before optim/ and sched/, as the optimizer and schedule they meant (nnlab.earlier)
    """

    def __init__(
        self,
        net: str,
        arch: dict,
        lr: float,
        optim: dict | None = None,
        sched: dict | None = None,
        objective: dict | None = None,
        compile: bool = False,
        label_smoothing: float = 0.0,
        input: str | None = None,
        **legacy,
    ):
        super().__init__()
        unknown = set(legacy) - set(earlier.KEYS)
        if unknown:
            raise TypeError(f"Classifier got unexpected arguments: {', '.join(sorted(unknown))}")
        given = {"net": net, "objective": objective, "optim": optim, "sched": sched, **legacy}
        now = earlier.model_settings(given)  # a checkpoint's settings as earlier versions wrote them, as they are now
        net, objective, optim, sched = now["net"], now["objective"], now["optim"], now["sched"]
        self.save_hyperparameters(logger=False, ignore=["input", *earlier.KEYS])
        for key in earlier.KEYS:
            self.hparams.pop(key, None)
        self.hparams.update(net=net, objective=objective, optim=optim, sched=sched)
        net_class = network(net)
        self.reads = kind(net_class.reads)
        schema.check_model(dict(self.hparams))
        self.net = net_class(**arch)
        self.objective = objectives.build(objective)
        if self.objective is not None:
            self.objective.check(self.net, net)
        # One output is a binary classifier; metrics and reports see it as two classes.
        self.binary = arch["num_classes"] == 1
        num_classes = max(arch["num_classes"], 2)
        # validate_args=False: the argument checks cost 0.5 ms a step on a CPU, and our batches are well-formed.
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_confusion = MulticlassConfusionMatrix(num_classes, validate_args=False)
        self.val_acc_best = 0.0
        # Step of the first non-finite loss, -1 while none; checked every few steps so the
        # training loop never waits on the device for it.
        self.register_buffer("first_bad_step", torch.tensor(-1), persistent=False)
        self.register_buffer("train_loss_sum", torch.tensor(0.0), persistent=False)
        self.train_steps = 0
        self.test_samples: dict[bool, list] = {True: [], False: []}

    def setup(self, stage):
        if stage == "fit":
            self.check_batches()
        if stage == "fit" and self.hparams.compile and not getattr(self.net, "_compiled_call_impl", None):
            self.net.compile()  # in place: parameter names unchanged

    def check_batches(self):
        """A network that normalises by batch statistics (BatchNorm) cannot train on a batch of one sample: say so
        before training, rather than fail at the end of an epoch. (A lone last sample of an epoch joins the batch
        before it: nnlab.data.batches.lone_last; what is left is a batch size of 1 or a training split of 1.)"""
        if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.net.modules()):
            return
        loader = self.trainer.datamodule.train_dataloader() if self.trainer.datamodule is not None else None
        smallest = loader.smallest() if hasattr(loader, "smallest") else 2
        if smallest == 1:
            batch = self.trainer.datamodule.hparams.get("batch_size")
            why, fix = (
                ("data.batch_size=1", "give data.batch_size=2 or more")
                if batch == 1
                else ("the training split holds 1 sample per process", "give it more samples")
            )
            if "batch_norm" in self.hparams.arch:
                fix += ", or model.arch.batch_norm=false"
            raise ConfigError(
                f"model.net={self.hparams.net} normalises by batch statistics (BatchNorm), which needs 2 or more "
                f"samples in every training batch, but {why}: {fix}"
            )

    def forward(self, x):
        return self.reads.feed(self.net, x)  # the kind knows its batch: a tensor, or (tokens, lengths)

    def loss(self, logits, y, smoothing: float = 0.0):
        if self.binary:
            target = y.to(logits.dtype)
            if smoothing:
                target = target * (1 - smoothing) + smoothing / 2
            return F.binary_cross_entropy_with_logits(logits.squeeze(-1), target)
        return F.cross_entropy(logits, y, label_smoothing=smoothing)

    def probabilities(self, logits):
        """(B, classes) class probabilities; a binary classifier's one logit becomes [1 - p, p]."""
        if self.binary:
            p = logits.float().sigmoid()
            return torch.cat([1 - p, p], dim=-1)
        return logits.float().softmax(-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.objective is not None:
            logits, loss = self.objective.step(self, x, y)
        else:
            logits = self(x)
            loss = self.loss(logits, y, self.hparams.label_smoothing)
        self._watch_loss(loss)
        self.train_acc.update(self.probabilities(logits.detach()), y)
        self.train_loss_sum += loss.detach()
        self.train_steps += 1
        # self.log costs about 1 ms a call on a CPU, 10% of a small network's step, so the step loss
        # is logged only on the steps the logger writes (trainer.log_every_n_steps).
        # (The progress bar shows the epoch's running loss from train_loss_sum: nnlab.callbacks.ProgressBar.)
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss_step", loss.detach())
        return loss

    def _watch_loss(self, loss):
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, self.global_step, self.first_bad_step)
        if (self.global_step + 1) % NONFINITE_CHECK_EVERY == 0:
            self._stop_if_nonfinite()

    def on_train_epoch_start(self):
        self.train_loss_sum.zero_()
        self.train_steps = 0
        self.train_acc.reset()  # already reset after logging, unless restored from an epoch-end checkpoint

    def on_train_epoch_end(self):
        # Also catches the last steps of the epoch, before the epoch's checkpoint is written.
        self._stop_if_nonfinite()
        self.log("train/loss", self.train_loss_sum / max(self.train_steps, 1), sync_dist=True)
        self.log("train/acc", self.train_acc)

    def _stop_if_nonfinite(self):
        step = self.first_bad_step.item()
        if step >= 0:
            raise NonFiniteLossError(
                f"training loss became non-finite at step {step} (epoch {self.current_epoch}); stopped without "
                "saving, so the last checkpoint is the last good one. Lower model.lr (now "
                f"{self.hparams.lr:g}), clip gradients (trainer.gradient_clip_val=1.0) or check the data."
            )

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_acc.update(self.probabilities(logits), y)
        self.log("val/loss", self.loss(logits, y), on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)

    def on_validation_epoch_end(self):
        acc = self.val_acc.compute().item()
        self.val_acc.reset()
        if not self.trainer.sanity_checking:
            self.val_acc_best = max(self.val_acc_best, acc)
        self.log("val/acc", acc, prog_bar=True)
        self.log("val/acc_best", self.val_acc_best)

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        probs = self.probabilities(logits)
        self.test_acc.update(probs, y)
        self.test_confusion.update(probs, y)
        self.log("test/loss", self.loss(logits, y), on_epoch=True, batch_size=len(y), sync_dist=True)
        self.log("test/acc", self.test_acc, on_epoch=True)
        self._keep_test_samples(x, y, probs)

    def _keep_test_samples(self, x, y, probs):
        """Keep up to KEEP_TEST_SAMPLES misclassified and as many correct samples (inputs, label,
        probabilities) for the test report, each input as its kind keeps it (a text without its padding)."""
        wrong = probs.argmax(-1) != y
        for is_wrong, mask in ((True, wrong), (False, ~wrong)):
            kept = self.test_samples[is_wrong]
            room = KEEP_TEST_SAMPLES - len(kept)
            if room <= 0:
                continue
            rows = mask.nonzero().squeeze(-1)[:room].tolist()
            kept += zip(self.reads.keep(x, rows), y[rows].tolist(), probs[rows].cpu())

    def on_test_epoch_start(self):
        self.test_samples = {True: [], False: []}

    def epoch_train_loss(self) -> float | None:
        """The mean training loss of the epoch so far (this process's batches)."""
        return (self.train_loss_sum / self.train_steps).item() if self.train_steps else None

    def on_save_checkpoint(self, checkpoint):
        checkpoint["val_acc_best"] = self.val_acc_best
        # The running epoch's sums, so an epoch resumed from a checkpoint written inside it reports the whole epoch.
        checkpoint["epoch_sums"] = {
            "loss": self.train_loss_sum.detach().cpu(),
            "steps": self.train_steps,
            "train_acc": {k: v.detach().cpu() for k, v in self.train_acc.metric_state.items()},
            "train_acc_updates": self.train_acc._update_count,
        }
        # The datamodule's preprocessing (a text model's tokenizer, say) travels with the weights, so
        # `nnlab.predict` needs the checkpoint alone.
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if hasattr(datamodule, "preprocessing"):
            checkpoint["preprocessing"] = datamodule.preprocessing()

    def on_load_checkpoint(self, checkpoint):
        self.val_acc_best = checkpoint.get("val_acc_best", 0.0)
        # Lightning calls on_train_epoch_start (which zeroes these) only for epochs that start afresh.
        if sums := checkpoint.get("epoch_sums"):
            self.train_loss_sum = sums["loss"].to(self.train_loss_sum.device)
            self.train_steps = sums["steps"]
            for name, value in sums["train_acc"].items():
                setattr(self.train_acc, name, value.to(self.device))
            self.train_acc._update_count = sums["train_acc_updates"]

    def configure_optimizers(self):
        from nnlab.schedules import time_used

        hp = self.hparams
        optimizer = optimization.build_optimizer(self, hp.lr, hp.optim)
        schedule = optimization.build_schedule(hp.sched)
        if schedule is None:
            return optimizer
        scheduler = schedule(optimizer, hp.lr, self.trainer.estimated_stepping_batches, time_used(self.trainer))
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

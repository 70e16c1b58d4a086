"""The learning-rate schedules of conf/sched/, built from model.sched's `_target_` (nnlab.optim.build_schedule) and
called with the optimizer once the run's length is known: `schedule(optimizer, lr, total, clock)` gives a torch
scheduler stepped after every optimizer step, or None for none. A schedule of one's own is a class of this form named
in a config of conf/sched/.

With trainer.max_time both run over the time too (OverTime): torch's schedules count steps only."""

import math

import torch
from lightning.pytorch.utilities import rank_zero_warn


class OneCycle:
    """One-cycle (torch's OneCycleLR): up from lr/25 over the first `warmup_pct` of the steps, then down to
    `anneal_to` x lr (0: lr/250,000), Adam's first beta (or SGD's momentum) cycled between 0.95 and 0.85 the other
    way."""

    def __init__(self, warmup_pct: float = 0.2, anneal_to: float = 0.0):
        self.warmup_pct, self.anneal_to = warmup_pct, anneal_to

    def __call__(self, optimizer, lr: float, total: int, clock):
        if clock is not None:
            return OverTime(optimizer, "onecycle", total, clock, self.warmup_pct, self.anneal_to)
        warmup = self.warmup_pct
        if warmup * total <= 1:  # torch divides by (warm-up steps - 1): a warm-up under one step fails there
            if total < 2:  # fast_dev_run, say: nothing to schedule
                rank_zero_warn(
                    f"sched=onecycle: this run has {total} training step; it runs at model.lr={lr:g} without a schedule"
                )
                return None
            warmup = 1.5 / total
            rank_zero_warn(
                f"sched=onecycle: model.sched.warmup_pct={self.warmup_pct} of this run's {total} training steps is "
                "under one step; it warms up over one step instead (train longer for the configured warm-up, or "
                "set sched=cosine or sched=none)"
            )
        # torch's one-cycle ends at lr / (div_factor * final_div_factor): 25 * 1e4 by default
        end = {"final_div_factor": 1 / (25 * self.anneal_to)} if self.anneal_to else {}
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=total, pct_start=warmup, div_factor=25, **end
        )


class Cosine:
    """Half a cosine from lr down to `anneal_to` x lr over the run (torch's CosineAnnealingLR), no warm-up.
    warmup_pct is one-cycle's: taken and ignored here, so a model's config may set it for one-cycle whichever
    schedule runs."""

    def __init__(self, anneal_to: float = 0.0, warmup_pct: float | None = None):
        self.anneal_to = anneal_to

    def __call__(self, optimizer, lr: float, total: int, clock):
        if clock is not None:
            return OverTime(optimizer, "cosine", total, clock, 0.0, self.anneal_to)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=self.anneal_to * lr)


def time_used(trainer):
    """With trainer.max_time: a function giving the share of it used so far (Lightning's Timer, which a resumed run
    restores); else None."""
    from lightning.pytorch.callbacks import Timer

    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    if timer is None or timer.time_remaining() is None:
        return None
    return lambda: timer.time_elapsed() / max(timer.time_elapsed() + timer.time_remaining(), 1e-9)


def cos_between(start: float, end: float, share: float) -> float:
    """From start (share 0) to end (share 1) along half a cosine, as torch's schedules anneal."""
    return end + (start - end) / 2 * (math.cos(math.pi * min(max(share, 0.0), 1.0)) + 1)


class OverTime(torch.optim.lr_scheduler.LRScheduler):
    """sched=cosine or onecycle in a run with a time limit (trainer.max_time). torch's schedules count
    steps only, so one sized by trainer.max_epochs=1000000000 kept the rate at its warm-up floor, 1/25 of model.lr,
    for a whole 20-second run. Here the schedule's position is the larger of the share of steps taken (of `total`,
    what trainer.max_epochs and max_steps allow) and the share of the time limit used: it reaches its end when
    training ends, whichever limit ends it. The shapes are torch's: cosine from model.lr to its anneal_to x lr;
    one-cycle up from lr/25 over warmup_pct, then down to anneal_to x lr (lr/250000 with 0), with the momentum (Adam's
    first beta) cycled between 0.95 and 0.85 the other way."""

    def __init__(self, optimizer, shape: str, total: float, clock, warmup: float, anneal_to: float):
        self.shape, self.total, self.clock, self.warmup, self.anneal_to = shape, float(total), clock, warmup, anneal_to
        self.position = 0.0
        super().__init__(optimizer)

    def state_dict(self) -> dict:
        return {k: v for k, v in super().state_dict().items() if k != "clock"}  # primitives only: weights_only loads

    def get_lr(self):
        steps = self.last_epoch / self.total if math.isfinite(self.total) and self.total > 0 else 0.0
        self.position = p = min(1.0, max(self.position, steps, self.clock()))
        rates = []
        for base, group in zip(self.base_lrs, self.optimizer.param_groups):
            if self.shape == "cosine":
                rates.append(cos_between(base, self.anneal_to * base, p))
                continue
            low = base / 25
            end = self.anneal_to * base if self.anneal_to else low / 1e4
            up = p < self.warmup
            rates.append(cos_between(low, base, p / self.warmup) if up else
                         cos_between(base, end, (p - self.warmup) / (1 - self.warmup)))  # fmt: skip
            momentum = (
                cos_between(0.95, 0.85, p / self.warmup)
                if up
                else cos_between(0.85, 0.95, (p - self.warmup) / (1 - self.warmup))
            )
            if "betas" in group:
                group["betas"] = (momentum, *group["betas"][1:])
            elif "momentum" in group:
                group["momentum"] = momentum
        return rates

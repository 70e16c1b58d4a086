"""The pruning callback a sweep's trial runs with (train.py adds it; nnlab.sweep holds the rest of the study).

Apart from nnlab.sweep so that the sweeper plugin, which Hydra imports on every start, does not import Lightning."""

import math

import lightning as L
import optuna

from nnlab.sweep import live_trial


class PruneTrial(L.Callback):
    """Reports the monitored metric to the trial after every validation; stops training when the pruner says so.

    Rank 0 talks to the study (the metric it watches is the study's `prune_monitor`); the decision is broadcast so
    that every DDP rank stops at the same epoch."""

    def __init__(self, storage: str, study: str, trial: int):
        self.storage, self.study, self.number = storage, study, trial
        self._trial: optuna.Trial | None = None  # loaded by rank 0 when it first needs it
        self.pruned_at: int | None = None

    @property
    def trial(self) -> optuna.Trial:
        if self._trial is None:
            self._trial = live_trial(self.storage, self.study, self.number)
        return self._trial

    def on_validation_end(self, trainer: L.Trainer, pl_module):
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero:
            monitor = self.trial.study.user_attrs.get("prune_monitor", "val/acc")
            if monitor not in trainer.callback_metrics:
                raise KeyError(
                    f"hydra.sweeper.prune_monitor={monitor!r} is not a logged metric; "
                    f"logged: {', '.join(sorted(trainer.callback_metrics))}"
                )
            value = float(trainer.callback_metrics[monitor])
            if math.isfinite(value):
                self.trial.report(value, step=trainer.current_epoch)
            prune = self.trial.should_prune()
        prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            self.pruned_at = trainer.current_epoch
            trainer.should_stop = True

    def record_pruned(self):
        """Rank 0, once training stopped: the study records the trial as pruned."""
        self.trial.study.tell(self.number, state=optuna.trial.TrialState.PRUNED)

    def state_dict(self):
        return {"pruned_at": self.pruned_at}

    def load_state_dict(self, state):
        self.pruned_at = state.get("pruned_at")

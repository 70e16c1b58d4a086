"""The pruning callback a sweep's trial runs with (train.py adds it; nnlab.sweep holds the rest of the study).

Apart from nnlab.sweep so that the sweeper plugin, which Hydra imports on every start, does not import Lightning."""

import copy
import math

import lightning as L
import optuna

from nnlab.sweep import curve_key, live_trial, mean_curve, replicate_key
from nnlab.upstream import id_of, study_storage


class PruneTrial(L.Callback):
    """Reports the monitored metric to the trial after every validation; stops training when the pruner says so.

    Rank 0 talks to the study (the metric it watches is the study's `prune_monitor`); the decision is broadcast so
    that every DDP rank stops at the same epoch. A replicate (hydra.sweeper.replicates) keeps its own curve in the
    trial and sets the trial's value at this epoch to the mean over the replicates that reached it, so the pruner
    compares replicate means at the same epoch; it stops, as pruned, once a sibling replicate got the trial pruned."""

    def __init__(self, storage: str, study: str, trial: int, replicate: int | None = None):
        self.storage, self.study, self.number, self.replicate = storage, study, trial, replicate
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
            if self.replicate is None:
                if math.isfinite(value):
                    self.trial.report(value, step=trainer.current_epoch)
                prune = self.trial.should_prune()
            else:
                prune = self.report_replicate(value, trainer.current_epoch)
        prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            self.pruned_at = trainer.current_epoch
            trainer.should_stop = True

    def report_replicate(self, value: float, step: int) -> bool:
        study = self.trial.study
        storage, tid = study_storage(study), id_of(self.trial)
        now = storage.get_trial(tid)
        if now.state != optuna.trial.TrialState.RUNNING:
            return now.state == optuna.trial.TrialState.PRUNED  # a sibling replicate got the trial pruned
        if math.isfinite(value):
            curve = dict(now.user_attrs.get(curve_key(self.replicate)) or {})
            curve[str(step)] = value
            storage.set_trial_user_attr(tid, curve_key(self.replicate), curve)
            now = storage.get_trial(tid)
            mean = mean_curve(now)
            if step in mean:
                storage.set_trial_intermediate_value(tid, step, mean[step])
            now = storage.get_trial(tid)
        view = copy.copy(now)  # as it stood at this epoch: later epochs of sibling replicates left out
        view.intermediate_values = {s: v for s, v in now.intermediate_values.items() if s <= step}
        return study.pruner.prune(study, view) if view.intermediate_values else False

    def record_pruned(self):
        """Rank 0, once training stopped: the study records the trial as pruned (unless a sibling replicate did)."""
        study, tid = self.trial.study, id_of(self.trial)
        now = study_storage(study).get_trial(tid)
        if now.state != optuna.trial.TrialState.RUNNING:
            return
        if self.replicate is not None:  # recorded before the trial ends: a finished trial takes no more attributes
            key = replicate_key(self.replicate)
            info = dict(now.user_attrs.get(key) or {})
            info.update(state="pruned", epochs=self.pruned_at + 1)
            study_storage(study).set_trial_user_attr(tid, key, info)
        study.tell(self.number, state=optuna.trial.TrialState.PRUNED)

    def state_dict(self):
        return {"pruned_at": self.pruned_at}

    def load_state_dict(self, state):
        self.pruned_at = state.get("pruned_at")

"""The private attributes of Optuna and Hydra that nnlab relies on, in one place. Neither library offers these as
public API; tests/test_upstream.py fails when an upgrade renames or changes one (the versions are pinned in
pyproject.toml, so an upgrade is a deliberate change).

- Optuna: a study's storage (`Study._storage`) and a trial's id in it (`Trial._trial_id`, `FrozenTrial._trial_id`):
  the sweeper writes a trial's user attributes (heartbeat, worker, replicates) while the trial runs, from a process
  that holds no `optuna.Trial` for it; a trial process reattaches to its running trial by number.
- Hydra: a job's returned value without raising for a failed job (`JobReturn._return_value`; the public
  `return_value` re-raises the job's exception).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from hydra.core.utils import JobReturn
    from optuna.storages import BaseStorage


def study_storage(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes."""
    return study._storage


def id_of(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """A trial's id in its study's storage (not its number)."""
    return trial._trial_id


def id_by_number(study: optuna.Study, number: int) -> int:
    """The storage id of the study's trial `number`."""
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def job_value(ret: JobReturn) -> Any:
    """What a Hydra job returned; for a job that failed, its exception, not raised again."""
    return ret._return_value

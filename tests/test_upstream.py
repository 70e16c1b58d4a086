"""The private attributes of Optuna and Hydra that nnlab relies on (nnlab/upstream.py) still mean what nnlab takes
them to mean: this fails first when an upgrade changes one."""

import optuna
from hydra.core.utils import JobReturn, JobStatus

from nnlab.upstream import id_by_number, id_of, job_value, study_storage


def test_a_studys_storage_and_its_trials_ids_reach_the_same_trials():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    running = study.ask()
    storage = study_storage(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    for frozen in study.get_trials():
        assert storage.get_trial(id_of(frozen)).number == frozen.number
        assert id_by_number(study, frozen.number) == id_of(frozen)
    assert id_of(running) == id_by_number(study, running.number)
    storage.set_trial_user_attr(id_of(running), "heartbeat", 1.5)  # as the sweeper writes while a trial runs
    assert study.get_trials()[-1].user_attrs == {"heartbeat": 1.5}
    again = optuna.Trial(study, id_by_number(study, running.number))  # a trial process reattaching by number
    assert again.number == running.number


def test_a_failed_jobs_value_is_none_without_raising_and_a_completed_jobs_is_its_return():
    failed = JobReturn(status=JobStatus.FAILED, _return_value=ValueError("boom"))
    assert isinstance(job_value(failed), ValueError)
    completed = JobReturn(status=JobStatus.COMPLETED, _return_value=0.25)
    assert job_value(completed) == completed.return_value == 0.25

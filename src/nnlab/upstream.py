"""The private attributes of Optuna and Hydra that nnlab relies on, in one place. Neither library offers these as
public API; tests/test_upstream.py fails when an upgrade renames or changes one (the versions are pinned in
pyproject.toml, so an upgrade is a deliberate change).

- Optuna: a study's storage (`Study._storage`) and a trial's id in it (`Trial._trial_id`, `FrozenTrial._trial_id`):
  the sweeper writes a trial's user attributes (heartbeat, worker, replicates) while the trial runs, from a process
  that holds no `optuna.Trial` for it; a trial process reattaches to its running trial by number.
- Hydra: a job's returned value without raising for a failed job (`JobReturn._return_value`; the public
  `return_value` re-raises the job's exception); `hydra.main`'s own steps (`_run_hydra`, `get_args_parser`,
  `_get_rerun_conf`, `_flush_loggers`), run on a command line given to it rather than read from sys.argv.
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


def run_hydra(task, config_dir: str, config_name: str, arguments: list[str]) -> None:
    """What `@hydra.main(config_path=config_dir, config_name=..., version_base="1.3")` does for a command line,
    given the command line: `nnlab train <overrides>` is parsed without its subcommand while sys.argv keeps it
    (Lightning starts DDP ranks, and the sweeper its trials, from sys.argv). Hydra's main reads sys.argv itself."""
    from hydra import version
    from hydra._internal.utils import _run_hydra, get_args_parser
    from hydra.core.utils import _flush_loggers
    from hydra.main import _get_rerun_conf

    version.setbase("1.3")
    parser = get_args_parser()
    args = parser.parse_args(arguments)
    if args.experimental_rerun is not None:
        task(_get_rerun_conf(args.experimental_rerun, args.overrides))
        _flush_loggers()
        return
    _run_hydra(args=args, args_parser=parser, task_function=task, config_path=config_dir, config_name=config_name)

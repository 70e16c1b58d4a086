"""hydra/launcher=slurm: Hydra's submitit SLURM launcher, adapted to studies (conf/hydra/launcher/slurm.yaml)."""

import logging
import subprocess
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

log = logging.getLogger("nnlab.sweep")


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """Hydra's submitit SLURM launcher (same settings), with three changes for sweeps:

    - a trial whose job ends without a result (cancelled, killed, its node lost: submitit learns that from SLURM's
      accounting) fails alone; the other jobs of its array are still waited for and recorded;
    - `terminate()` cancels the jobs of the running batch (the sweeper calls it when interrupted), so a rerun does not
      resume a trial whose job is still running; SLURM's SIGTERM makes each trial write its checkpoint first;
    - each trial requeues itself on submitit's signal (nnlab/run/signals.py), so submitit's own requeue never runs.
    """

    def __init__(self, **params):
        super().__init__(**params)
        timeout_s, lead_s = self.params.get("timeout_min", 0) * 60, self.params.get("signal_delay_s", 0)
        if lead_s >= timeout_s:
            raise ValueError(
                f"hydra.launcher.signal_delay_s={lead_s} is not under hydra.launcher.timeout_min="
                f"{self.params.get('timeout_min')} ({timeout_s} s): the trial would be told to stop before "
                "it starts. Lower signal_delay_s (SLURM may send the signal up to a minute early too) or "
                "raise timeout_min."
            )

    def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
        import submitit

        params = dict(self.params)
        executor = submitit.AutoExecutor(
            cluster="slurm", folder=params.pop("submitit_folder"), slurm_max_num_timeout=params.pop("max_num_timeout")
        )
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        args = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            args.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        self.jobs = executor.map_array(self, *zip(*args, strict=True))
        log.info(f"submitted {len(self.jobs)} job(s): {' '.join(j.job_id for j in self.jobs)}")
        return [self._result(job, list(overrides)) for job, overrides in zip(self.jobs, job_overrides, strict=True)]

    @staticmethod
    def _result(job, overrides: list[str]) -> JobReturn:
        try:
            return job.results()[0]
        except Exception as e:  # noqa: BLE001  (submitit's UncompletedJobError, FailedJobError: this trial's failure)
            ret = JobReturn(overrides=overrides)
            ret.status = JobStatus.FAILED
            ret.return_value = RuntimeError(
                f"SLURM job {job.job_id} ended without a result ({job.state}): "
                f"{str(e).strip().splitlines()[0]}; its output: {job.paths.stdout}"
            )
            return ret

    def terminate(self):
        running = [j.job_id for j in getattr(self, "jobs", []) if not j.done()]
        if running:
            log.warning(f"cancelling SLURM job(s) {' '.join(running)}")
            subprocess.run(["scancel", *running], check=False)

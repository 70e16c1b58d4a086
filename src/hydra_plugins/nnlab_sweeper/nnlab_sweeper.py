"""Hydra plugins for nnlab sweeps (configs in conf/hydra/sweeper and conf/hydra/launcher).

StudySweeper: every multirun is an Optuna study in persistent storage. `hydra/sweeper=grid` runs every combination
of the listed values in Hydra's order; `hydra/sweeper=optuna` samples (TPE by default) from choice/range/interval
overrides and prunes at validation ends. A failed trial is recorded and the sweep goes on; rerunning the command
resumes the study (interrupted trials continue from their last checkpoint in their own directory and W&B run).

TrialLauncher: runs each trial as its own `python train.py <trial overrides>` process, n_jobs at a time, each pinned
to its own GPUs (or CPU cores). A trial process is a plain single run with fixed values, so Lightning's DDP launcher
replays that command line, not the sweep's `-m` (Lightning issue 11300).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from nnlab import commands
from nnlab.atomic import append_no_follow, atomic_open, refuse_link, refuse_links_in
from nnlab.errors import UserError
from nnlab.upstream import id_of, job_value, study_storage


def _loaded_on_first_use(name: str):
    """The module `name`, executed only when one of its attributes is first read (importlib's LazyLoader). Hydra
    imports this plugin to discover it in every run of train.py, sweep or not; Optuna, and nnlab.sweep with it, took
    0.2-0.4 s of each run's start and are wanted only by sweeps."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


optuna = _loaded_on_first_use("optuna")
S = _loaded_on_first_use("nnlab.sweep")  # imports optuna
log = logging.getLogger("nnlab.sweep")
_hydra_config_lock = threading.Lock()  # HydraConfig is one per process; trial configs are resolved one at a time
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a study name: one folder, no path


class TrialFailed(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------------------- launcher
class TrialLauncher(Launcher):
    def __init__(
        self,
        n_jobs: int = 1,
        gpus_per_job: int = 1,
        devices: Sequence[int] | None = None,
        cpus_per_job: int | None = None,
        echo: bool | None = None,
        kill_timeout_s: float = 60,
    ):
        if n_jobs < 1:
            raise ValueError(f"hydra.launcher.n_jobs={n_jobs}: must be at least 1")
        self.n_jobs, self.gpus_per_job, self.devices, self.cpus_per_job = n_jobs, gpus_per_job, devices, cpus_per_job
        self.echo = (n_jobs == 1) if echo is None else echo
        self.kill_timeout_s = kill_timeout_s
        self.config = self.hydra_context = self.task_function = None
        self._slots: queue.Queue | None = None
        self._procs: set[subprocess.Popen] = set()
        self._procs_lock = threading.Lock()

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self._slots = queue.Queue()
        for env in self.slot_environments():
            self._slots.put(env)

    def slot_environments(self) -> list[dict[str, str]]:
        """What pins each of the n_jobs slots: CUDA_VISIBLE_DEVICES with GPUs, else a share of the CPU cores."""
        if self.n_jobs == 1 and self.devices is None:
            return [{}]  # one trial at a time sees what this process sees
        gpus = list(self.devices) if self.devices is not None else list(range(_gpu_count()))
        if gpus:
            need = self.n_jobs * self.gpus_per_job
            if need > len(gpus):
                raise ValueError(
                    f"hydra.launcher.n_jobs={self.n_jobs} x gpus_per_job={self.gpus_per_job} needs {need} "
                    f"GPUs but {len(gpus)} are available ({gpus}); lower n_jobs or gpus_per_job"
                )
            g = self.gpus_per_job
            return [{"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus[i * g : (i + 1) * g]))} for i in range(self.n_jobs)]
        cpus = sorted(os.sched_getaffinity(0))
        per = self.cpus_per_job or max(1, len(cpus) // self.n_jobs)
        if per * self.n_jobs > len(cpus):
            log.warning(f"n_jobs={self.n_jobs} x cpus_per_job={per} is more than the {len(cpus)} cores: slices overlap")
        slices = [[cpus[(i * per + k) % len(cpus)] for k in range(per)] for i in range(self.n_jobs)]
        return [
            {"NNLAB_CPUS": ",".join(map(str, s)), "OMP_NUM_THREADS": str(per), "CUDA_VISIBLE_DEVICES": ""}
            for s in slices
        ]

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        results: list[JobReturn | None] = [None] * len(job_overrides)

        def one(i):
            results[i] = self.run_trial(list(job_overrides[i]), initial_job_idx + i)

        if len(job_overrides) == 1:
            one(0)
        else:
            threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(job_overrides))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        return results

    def trial_dir(self, overrides: list[str], idx: int) -> tuple[Path, DictConfig]:
        with _hydra_config_lock:
            saved = HydraConfig.instance().cfg
            try:
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
                with open_dict(cfg):
                    cfg.hydra.job.id = cfg.hydra.job.num = idx
                HydraConfig.instance().set_config(cfg)
                out = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
                return out.resolve(), cfg
            finally:
                HydraConfig.instance().cfg = saved

    def command(self, overrides: list[str], out: Path) -> list[str]:
        cmd = commands.relaunch() + commands.config_arguments()
        consumed = (
            "hydra.sweep",
            "hydra.sweeper",
            "hydra/sweeper",
            "hydra.launcher",
            "hydra/launcher",
            "hydra.mode",
            "hydra.run",
            "hydra.job.num",
            "hydra.job.id",
        )
        hydra_overrides = [o for o in self.config.hydra.overrides.hydra if not o.lstrip("+~").startswith(consumed)]
        task = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
        return cmd + hydra_overrides + task + [commands.override("hydra.run.dir", out)]

    def run_trial(self, overrides: list[str], idx: int) -> JobReturn:
        out, cfg = self.trial_dir(overrides, idx)
        refuse_link(out, f"trial folder {out}")  # another user's link there would take the trial's files elsewhere
        out.mkdir(parents=True, exist_ok=True)
        cmd = self.command(overrides, out)
        ret = JobReturn(
            overrides=[o for o in overrides if not o.startswith("hydra.")],
            working_dir=str(out),
            task_name=str(cfg.hydra.job.name),
        )
        slot = self._slots.get()
        try:
            env = {**os.environ, **slot, "PYTHONUNBUFFERED": "1"}
            env.pop("SLURM_RESTART_COUNT", None)  # in a requeued sweep worker, resume=true says which trials resume
            pinned = " ".join(f"{k}={v}" for k, v in slot.items() if k != "OMP_NUM_THREADS")
            log.info(f"#{idx} {' '.join(ret.overrides)} -> {out}{'  (' + pinned + ')' if pinned else ''}")
            tail: deque[str] = deque(maxlen=30)
            with append_no_follow(out / "console.log", encoding=None) as console:  # never through a planted link
                env["NNLAB_LAUNCHED_AT"] = repr(time.time())  # the trial's metrics.json times its phases from here
                proc = subprocess.Popen(
                    cmd,
                    cwd=self.config.hydra.runtime.cwd,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                with self._procs_lock:
                    self._procs.add(proc)
                try:
                    for line in proc.stdout:
                        console.write(line)
                        text = line.decode(errors="replace")
                        tail.append(text)
                        if self.echo:
                            sys.stdout.write(text)
                            sys.stdout.flush()
                    rc = proc.wait()
                except BaseException:
                    self.terminate([proc])
                    raise
                finally:
                    with self._procs_lock:
                        self._procs.discard(proc)
        finally:
            self._slots.put(slot)
        if rc == 0:
            ret.status = JobStatus.COMPLETED
            ret.return_value = _read_metric(out, cfg.get("optimized_metric"))
        else:
            ret.status = JobStatus.FAILED
            why = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
            error = _last_error(tail)
            ret.return_value = TrialFailed(
                f"{error or why} (trial #{idx} ended with {why}; its output is in "
                f"{out / 'console.log'}), ending:\n{''.join(tail)}"
            )
        return ret

    def terminate(self, procs=None):
        """SIGTERM to each trial's process group (its DDP ranks too), SIGKILL after kill_timeout_s."""
        with self._procs_lock:
            procs = list(procs if procs is not None else self._procs)
        for p in procs:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + self.kill_timeout_s
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait()


def _signal_group(proc: subprocess.Popen, sig):
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def _last_error(lines) -> str:
    """The error a trial ended with: train.py's one line for bad input ('Error: ...', without its pointer to
    train.log), else the exception line of a Python traceback ('ValueError: ...'), if any."""
    import re

    said = [ln.strip()[len("Error: ") :].split(" (details: ")[0] for ln in lines if ln.startswith("Error: ")]
    if said:
        return said[-1]
    found = [ln.strip() for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*", ln)]
    return found[-1] if found else ""


def _read_metric(out: Path, metric: str | None):
    import json

    path = out / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    if metrics.get("trial_state") == "pruned":
        return None
    return metrics.get(metric)


# -------------------------------------------------------------------------------------------------------- sweeper
class StudySweeper(Sweeper):
    def __init__(
        self,
        study_name: str | None = None,
        storage: str | None = None,
        direction: str = "maximize",
        n_trials: int | None = None,
        sampler: Any = None,
        pruner: Any = None,
        prune_monitor: str = "val/acc",
        params: dict | None = None,
        heartbeat_s: float = 15,
        stale_after_s: float = 90,
        max_batch_size: int | None = None,
        replicates: int = 1,
    ):
        self.replicates = replicates  # checked in sweep(), where a mistake is reported in one line
        self.open: dict[int, dict] = {}  # trial id -> {trial, pending replicates, running replicates}: trials held
        self.study_name, self.storage, self.direction, self.n_trials = study_name, storage, direction, n_trials
        self.sampler_cfg, self.pruner_cfg, self.prune_monitor = sampler, pruner, prune_monitor
        self.params = dict(params or {})
        self.heartbeat_s, self.stale_after_s, self.max_batch_size = heartbeat_s, stale_after_s, max_batch_size
        self.config = self.hydra_context = self.task_function = self.launcher = None
        self.worker = S.this_worker()

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        # The launcher is built in sweep(), once the study's name (and so the sweep directory, which launcher
        # settings such as submitit's folder interpolate) is known.
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    # --------------------------------------------------------------------------------------------------- the study
    def open_study(self, arguments: list[str]):
        from nnlab import schema

        # the sweep's settings and the config every trial starts from: a mistake is one line, before any trial
        schema.check_sweeper(self.config.hydra.sweeper)
        schema.check_run(self.config)
        args = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        self.space = S.SearchSpace.parse(args)
        self.grid = self.sampler_cfg is None
        self.points = self.space.grid_points() if self.grid else None
        if not self.space.distributions and self.replicates == 1:
            raise ValueError(
                "nothing to sweep: give a parameter several values (model.lr=1e-3,3e-3), a range or an "
                "interval (with hydra/sweeper=optuna), set hydra.sweeper.params, or run one configuration "
                "several times with hydra.sweeper.replicates=N"
            )
        self.target = self.n_trials or (len(self.points) if self.grid else None)
        if not self.target:
            raise ValueError("hydra.sweeper.n_trials is not set: say how many trials the study should have")
        choices = self.config.hydra.runtime.choices
        name = self.study_name or S.default_study_name(choices.get("model"), args)
        if not SAFE_NAME.fullmatch(str(name)):
            raise ValueError(
                f"hydra.sweeper.study_name={name!r} is not one plain folder name: it names the sweep's folder "
                "(outputs/sweeps/<name>) and its W&B group, so use letters, digits, '.', '_' and '-' only, starting "
                "with a letter or digit (at most 100)"
            )
        with open_dict(self.config):
            self.config.hydra.sweeper.study_name = name
        self.sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        refuse_links_in(self.sweep_dir, "sweep folder")
        self.sweep_dir_id = os.stat(self.sweep_dir).st_ino  # a folder renamed away keeps it; one made anew does not
        with atomic_open(self.sweep_dir / "multirun.yaml") as f:
            f.write(OmegaConf.to_yaml(self.config).encode())
        self.url = S.storage_url(self.storage, self.sweep_dir)
        sampler = S.make_sampler(None if self.grid else OmegaConf.to_container(self.sampler_cfg, resolve=True))
        pruner_cfg = OmegaConf.to_container(self.pruner_cfg, resolve=True) if self.pruner_cfg else None
        pruner = instantiate(pruner_cfg) if pruner_cfg else optuna.pruners.NopPruner()
        self.study = optuna.create_study(
            study_name=name,
            storage=S.open_storage(self.url),
            sampler=sampler,
            pruner=pruner,
            direction=self.direction,
            load_if_exists=True,
        )
        self.check_same_sweep()
        # Trial processes read the pruner and what it watches from the study itself.
        self.study.set_user_attr("pruner", pruner_cfg)
        self.study.set_user_attr("prune_monitor", self.prune_monitor)
        self.study.set_user_attr("metric", str(self.config.get("optimized_metric")))
        self.study.set_user_attr("replicates", self.replicates)
        self.study.set_user_attr("grid", self.grid)
        self.study.set_user_attr("target", self.target)
        categorical = optuna.distributions.CategoricalDistribution
        self.grid_distributions = {k: categorical(v) for k, v in self.space.grid.items()}

    def check_same_sweep(self):
        """A stored study continues only with the settings it was started with: trials run under other fixed
        overrides or another search space would not be comparable."""
        machine = ("paths.", "hydra.", "+paths.", "++paths.")
        signature = {
            "fixed": [o for o in self.space.fixed if not o.startswith(machine)],
            "space": {k: repr(d) for k, d in self.space.distributions.items()},
        }
        if self.replicates != 1:  # studies stored before replicates existed have no such key
            signature["replicates"] = self.replicates
        stored = self.study.user_attrs.get("signature")
        if stored is not None and stored != signature:
            was, now = (
                " ".join(
                    sig["fixed"]
                    + [f"{k}~{v}" for k, v in sig["space"].items()]
                    + [f"hydra.sweeper.replicates={sig.get('replicates', 1)}"]
                )
                for sig in (stored, signature)
            )
            raise ValueError(
                f"study {self.study.study_name} in {self.url} was started with\n  {was}\nbut this command "
                f"asks for\n  {now}\nRerun with the original overrides to continue it, or name a new "
                "study: hydra.sweeper.study_name=<new name>"
            )
        self.study.set_user_attr("signature", signature)

    def next_trial(self):
        """A stale trial to resume, else a new one while the study has fewer than target trials; None when done."""
        trials = self.study.get_trials(deepcopy=False)
        for t in trials:
            if S.is_stale(t, self.stale_after_s):
                self.beat(id_of(t))
                return t, True
        if len([t for t in trials if t.state != optuna.trial.TrialState.WAITING]) >= self.target:
            return None
        if self.grid:
            taken = {tuple(sorted(t.params.items())) for t in trials} | {
                tuple(sorted(t.system_attrs.get("fixed_params", {}).items())) for t in trials
            }
            todo = [p for p in self.points if tuple(sorted(p.items())) not in taken]
            if not todo:
                return None
            self.study.enqueue_trial(todo[0])
            trial = self.study.ask(self.grid_distributions)
        else:
            trial = self.study.ask(self.space.distributions)
        self.beat(id_of(trial))
        return study_storage(self.study).get_trial(id_of(trial)), False

    def beat(self, trial_id: int, when: float | None = None):
        """Say this worker is alive and runs the trial (when=0: it lets go of it, for a rerun to take over at once)."""
        study_storage(self.study).set_trial_user_attr(trial_id, S.HEARTBEAT, time.time() if when is None else when)
        if when is None:
            study_storage(self.study).set_trial_user_attr(trial_id, S.WORKER, self.worker)

    def in_place(self) -> bool:
        """Whether the sweep's folder is still where the sweep runs it (not renamed or removed meanwhile)."""
        try:
            return os.stat(self.sweep_dir).st_ino == self.sweep_dir_id
        except OSError:
            return False

    def held_elsewhere(self) -> list:
        """Running trials that another worker holds (alive, or not yet silent for stale_after_s)."""
        return [
            t
            for t in self.study.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.RUNNING and id_of(t) not in self.open
        ]

    def say_held(self, trials: list, said: set):
        for t in trials:
            if t.number in said:
                continue
            said.add(t.number)
            worker, beat = t.user_attrs.get(S.WORKER) or {}, S.last_beat(t)
            who = f"process {worker.get('pid')} on {worker.get('host')}" if worker else "another worker"
            at = time.strftime("%H:%M:%S", time.localtime(beat + self.stale_after_s))
            log.warning(
                f"Trial {t.number} is held by {who}, last heard from {time.time() - beat:.0f} s ago: waiting for it "
                f"to end; if that worker has stopped, this one takes the trial over at {at} "
                f"(hydra.sweeper.stale_after_s={self.stale_after_s:g})"
            )

    # ----------------------------------------------------------------------------------------- a trial's runs
    # A trial is N runs (hydra.sweeper.replicates, seeds differing) and every trial goes through the same steps: its
    # runs are started (overrides_for), each is recorded as it ends (run_ended), and the trial is told its value, the
    # mean of its runs', once all have ended (finish). Where the runs are kept is the one thing N decides, in the
    # methods below (subdir to named): a trial of one run IS its run (folder <trial>, the trial's own seed, its
    # run_id and run_dir the trial's attributes, as in every study stored before replicates existed); a trial of
    # N > 1 runs keeps run k in the folder <trial>-r<k>, with seed base + k, in the trial's attribute replicate:k.
    def subdir(self, trial, k: int = 0) -> str:
        """A run's directory under the sweep's: the trial's number (unique in the study, whichever worker runs it),
        with `-r<k>` for replicate k when trials have replicates."""
        return str(trial.number) if self.replicates == 1 else f"{trial.number}-r{k}"

    def runs_recorded(self, trial: optuna.trial.FrozenTrial) -> dict[int, dict]:
        """The study's record of each of a trial's runs that was started (seed, run_id, state, value, error...)."""
        if self.replicates > 1:
            return S.replicates_of(trial)
        return {0: {key: trial.user_attrs[key] for key in ("run_id", "run_dir") if key in trial.user_attrs}}

    def keep_run(self, trial_id: int, k: int, **info):
        """Add to run k's record in the study (a trial of one run keeps only its run_id and run_dir)."""
        storage = study_storage(self.study)
        if self.replicates == 1:
            for key in ("run_id", "run_dir"):
                if key in info:
                    storage.set_trial_user_attr(trial_id, key, info[key])
            return
        now = storage.get_trial(trial_id)
        storage.set_trial_user_attr(
            trial_id, S.replicate_key(k), {**(now.user_attrs.get(S.replicate_key(k)) or {}), **info}
        )
        if "run_dir" in info:  # a run started: the trial's folders are its runs'
            storage.set_trial_user_attr(trial_id, "run_dir", str(self.sweep_dir / f"{now.number}-r*"))

    def run_overrides(self, fixed: list[str], params: list[str], k: int, seed: int) -> list[str]:
        """The trial's settings for its run k: replicates replace any seed with their own and say which they are."""
        if self.replicates == 1:
            return fixed + params
        kept = [o for o in fixed + params if commands.key(o) != "seed"]
        return kept + [f"seed={seed}", f"sweep.replicate={k}"]

    def which(self, k: int) -> str:
        """How the log names run k of a trial ("" where the trial is its run)."""
        return "" if self.replicates == 1 else f" replicate {k}"

    def named(self, k: int, error: str) -> str:
        """Run k's error as its trial's error says it."""
        return error if self.replicates == 1 else f"replicate {k}: {error}"

    def trial_dir(self, trial, k: int = 0) -> Path:
        return self.sweep_dir / self.subdir(trial, k)

    def base_seed(self, trial) -> int:
        """The seed replicates count from: the trial's own `seed` if swept, else the sweep's."""
        if "seed" in trial.params:
            return int(trial.params["seed"])
        fixed = [o.split("=", 1)[1] for o in self.space.fixed if commands.key(o) == "seed"]
        return int(fixed[-1]) if fixed else int(self.config.seed)

    def overrides_for(self, trial: optuna.trial.FrozenTrial, k: int, resumed: bool) -> list[str]:
        """The command line of the trial's run k (the study records it as started: its run_id, folder and seed)."""
        import secrets

        name = self.study.study_name
        record = self.runs_recorded(study_storage(self.study).get_trial(id_of(trial))).get(k, {})
        run_id = record.get("run_id") or secrets.token_hex(4)
        seed = record.get("seed", S.replicate_seed(self.base_seed(trial), k))
        self.keep_run(id_of(trial), k, seed=seed, run_id=run_id, run_dir=str(self.trial_dir(trial, k)), state="running")
        params = [f"{key}={S.as_override_value(v)}" for key, v in trial.params.items()]
        return (
            self.run_overrides(self.space.fixed, params, k, seed)
            + [
                commands.override("hydra.sweep.dir", self.sweep_dir),
                f"hydra.sweep.subdir={self.subdir(trial, k)}",
                f"sweep.name={name}",
                commands.override("sweep.storage", self.url),
                f"sweep.trial={trial.number}",
                commands.override("run_id", run_id),
                f"run_name={name}-{self.subdir(trial, k)}",
            ]
            + (["resume=true"] if resumed else [])
        )

    def next_unit(self):
        """(trial, run, resumed): a run still to start of a trial this process holds, else the first of a stale trial
        taken over (its unfinished runs resume) or of a new trial; None when the study is done."""
        for entry in self.open.values():
            if entry["pending"]:
                k, resumed = entry["pending"].popleft()
                entry["running"].add(k)
                return entry["trial"], k, resumed
        picked = self.next_trial()
        if picked is None:
            return None
        trial, stale = picked
        recorded = self.runs_recorded(trial)
        pending = deque()
        for k in range(self.replicates):
            r = recorded.get(k)
            if r and r.get("state") in ("complete", "fail", "pruned"):
                continue  # ended before the trial was released
            pending.append((k, stale and r is not None))
        if any(r.get("state") == "fail" for r in recorded.values()):
            pending.clear()  # the trial has failed already: it starts no more
        entry = {"trial": trial, "pending": pending, "running": set(), "ended": {}}
        self.open[id_of(trial)] = entry
        if not pending:  # every run ended, but its worker stopped before telling the study
            self.finish(entry)
        return self.next_unit()

    def run_ended(self, entry: dict, k: int, ret: JobReturn) -> str:
        """Run k of the entry's trial has ended: its state (complete, fail, pruned), recorded."""
        trial_id = id_of(entry["trial"])
        now = study_storage(self.study).get_trial(trial_id)
        entry["running"].discard(k)
        if now.state != optuna.trial.TrialState.RUNNING:  # pruned: the run that got it pruned recorded itself
            entry["pending"].clear()  # a finished trial starts no more runs and takes no more attributes
            return now.state.name.lower()
        value = job_value(ret)
        if ret.status == JobStatus.COMPLETED and isinstance(value, (int, float)) and math.isfinite(value):
            info = {"state": "complete", "value": float(value)}
        else:
            info = {"state": "fail", "error": self.failure(ret)}
            entry["pending"].clear()  # a failed trial starts no more runs
        try:
            info["epochs"] = json.loads((Path(ret.working_dir) / "metrics.json").read_text()).get("epochs")
        except (OSError, ValueError, AttributeError):
            pass
        entry["ended"][k] = info
        self.keep_run(trial_id, k, **info)
        return info["state"]

    def finish(self, entry: dict):
        """A trial whose runs have all ended: its value is their mean (its intermediate values the mean curve of
        replicates); it fails if one of them failed. A pruned trial was told so by its run."""
        storage, tid = study_storage(self.study), id_of(entry["trial"])
        del self.open[tid]
        now = storage.get_trial(tid)
        if now.state != optuna.trial.TrialState.RUNNING:
            return now.state
        for step, value in S.mean_curve(now).items():
            storage.set_trial_intermediate_value(tid, step, value)
        runs = {**self.runs_recorded(now), **entry["ended"]}  # ended here, or before a takeover
        failed = {k: r for k, r in runs.items() if r.get("state") == "fail"}
        values = [r["value"] for r in runs.values() if r.get("state") == "complete"]
        if not failed and len(values) == self.replicates:
            self.study.tell(now.number, sum(values) / len(values))
            return optuna.trial.TrialState.COMPLETE
        why = "; ".join(self.named(k, r.get("error", "")) for k, r in sorted(failed.items()))
        storage.set_trial_user_attr(tid, "error", why or f"{len(values)} of {self.replicates} replicates ended")
        self.study.tell(now.number, state=optuna.trial.TrialState.FAIL)
        return optuna.trial.TrialState.FAIL

    def failure(self, ret: JobReturn) -> str:
        """The error line of a run that ended without a finite metric (a failed one's whole output goes to the log)."""
        value = job_value(ret)
        if ret.status == JobStatus.COMPLETED:
            return f"{self.config.get('optimized_metric')} is {value!r} (see {ret.working_dir}/metrics.json)"
        log.error(str(value))
        return str(value).splitlines()[0]

    def fixed_cost(self, trial: optuna.trial.FrozenTrial, out: Path) -> str:
        """A trial's fixed cost, once its process has ended: seconds from its launch to the end of its first training
        step, and from the end of its last step to the sweeper holding its result (before it tells the study). Kept in
        the study (trial user attributes `startup_s`, `wind_down_s`, while the trial is open) and said in the log line;
        from its metrics.json's timeline (nnlab.timeline); empty where it has none."""
        seen = time.time()
        try:
            metrics = json.loads((out / "metrics.json").read_text())
            startup = metrics["timeline"]["first_step"]
            wind_down = seen - metrics["launched_at"] - metrics["timeline"]["last_step"]
        except (OSError, ValueError, KeyError, TypeError):
            return ""
        if study_storage(self.study).get_trial(id_of(trial)).state == optuna.trial.TrialState.RUNNING:
            study_storage(self.study).set_trial_user_attr(id_of(trial), "startup_s", round(startup, 3))
            study_storage(self.study).set_trial_user_attr(id_of(trial), "wind_down_s", round(wind_down, 3))
        return f"  (first step {startup:.1f} s after its launch; result here {wind_down:.1f} s after its last step)"

    # ------------------------------------------------------------------------------------------------------- sweep
    def sweep(self, arguments: list[str]) -> Any:
        """Run the study to its target: its workers (n_jobs with a trial launcher) each start the next runs and
        record what they return, a heartbeat says this process holds its trials, a stop (Ctrl-C, SIGTERM, the SLURM
        requeue signal, the folder moved away) releases them for a rerun; the summary and the report at the end."""
        self.start(arguments)
        threading.Thread(target=self.heartbeat, daemon=True).start()
        received: list[signal.Signals] = []
        previous = self.catch_stop_signals(received)
        try:
            slots = self.launcher.n_jobs if self.streaming else 1
            if slots == 1:
                self.work()
            else:
                threads = [threading.Thread(target=self.work, daemon=True) for _ in range(slots)]
                for t in threads:
                    t.start()
                while any(t.is_alive() for t in threads):
                    for t in threads:
                        t.join(0.2)
        except KeyboardInterrupt:
            self.interrupted(received)
        finally:
            self.stop.set()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if not self.in_place():
            self.end_moved()
        self.report()
        return [self.returns]

    def start(self, arguments: list[str]):
        """Open the study and the launcher (a wrong setting of the sweep: one line, exit 1)."""
        from hydra.errors import InstantiationException

        try:
            self.open_study(arguments)
            self.launcher = Plugins.instance().instantiate_launcher(
                hydra_context=self.hydra_context, task_function=self.task_function, config=self.config
            )
        except (ValueError, UserError, InstantiationException) as e:
            cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ is not None else e
            print(f"Error: {cause}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        done = len([t for t in self.study.get_trials(deepcopy=False) if t.state in S.FINISHED])
        log.info(
            f"Study {self.study.study_name} in {self.url}: {done} of {self.target} trials finished; "
            f"sweep directory {self.sweep_dir}"
        )
        self.lock, self.stop, self.returns, self.said = threading.Lock(), threading.Event(), [], set()
        self.streaming = hasattr(self.launcher, "n_jobs")  # the trial launchers run one run per launch, n_jobs at once
        per_launch = (len(self.points) if self.grid else 4) * self.replicates  # others (SLURM arrays) take several
        self.batch = 1 if self.streaming else (self.max_batch_size or per_launch)

    def work(self):
        """One worker: starts the next runs, records what they return; until the study is done or the sweep stops."""
        while not self.stop.is_set():
            picked = self.take()
            if picked is None:
                return
            if not picked:
                self.stop.wait(2.0)  # another worker holds the last trials
                continue
            rets = self.launch([o for *_, o in picked], [t for t, *_ in picked])
            if not self.in_place():  # its trials failed for that, perhaps: nothing is recorded
                return self.moved_away()
            self.returned(picked, rets)

    def take(self) -> list | None:
        """Up to `batch` runs to start, as (trial, run, resumed, overrides); [] while only another worker holds a
        trial, None when the study is done (or its folder moved away)."""
        with self.lock:
            if not self.in_place():
                return self.moved_away()
            picked = []
            while len(picked) < self.batch and (p := self.next_unit()) is not None:
                picked.append(p)
            if not picked:
                # Done, unless another worker still holds a trial: a killed sweep's is taken over (at once when that
                # sweep ran on this machine); a live worker's is waited for. The study is then whole when this
                # command ends, and so are its summary and best.yaml.
                if not (held := self.held_elsewhere()):
                    return None
                self.say_held(held, self.said)
                return []
            picked = [(trial, k, resumed, self.overrides_for(trial, k, resumed)) for trial, k, resumed in picked]
        for trial, k, resumed, o in picked:
            note = " (resumed: continues in its own directory from its last checkpoint, if any)"
            values = " ".join(f"{key}={S.as_override_value(v)}" for key, v in trial.params.items())
            seed = f" ({next(x for x in o if x.startswith('seed='))})" if self.replicates > 1 else ""
            log.info(f"Trial {trial.number}{self.which(k)}{seed}{note if resumed else ''}: {values}")
        return picked

    def returned(self, picked: list, rets: list[JobReturn]):
        """Record the runs that ended; a trial whose runs have all ended is told its value."""
        with self.lock:
            for (trial, k, _, _), ret in zip(picked, rets, strict=True):
                entry = self.open[id_of(trial)]
                ret.working_dir = str(self.trial_dir(trial, k))  # submitit's returns hold the job's cwd
                if self.stop.is_set():  # interrupted: leave it running for a rerun to resume
                    entry["running"].discard(k)
                    self.beat(id_of(trial), 0.0)
                    continue
                cost = self.fixed_cost(trial, Path(ret.working_dir))
                self.returns.append(ret)
                ended = self.run_ended(entry, k, ret)
                log.info(f"Trial {trial.number}{self.which(k)} {ended}: {ret.working_dir}{cost}")
                if not entry["pending"] and not entry["running"]:
                    state = self.finish(entry)
                    if self.replicates > 1:
                        log.info(f"Trial {trial.number} {state.name.lower()} ({self.replicates} replicates)")

    def heartbeat(self):
        """Every heartbeat_s, say this worker still runs its trials; every second, check the folder is in place."""
        last = time.monotonic()
        while not self.stop.wait(min(1.0, self.heartbeat_s)):
            if not self.in_place():
                return self.moved_away()
            if time.monotonic() - last >= self.heartbeat_s:
                last = time.monotonic()
                with self.lock:
                    for trial_id in list(self.open):
                        self.beat(trial_id)

    def catch_stop_signals(self, received: list) -> dict:
        """SIGTERM stops the sweep; in a SLURM job so does the requeue signal (scripts/slurm/sweep_worker.sbatch), and
        the worker then requeues itself: its restart resumes the released trials. Returns the handlers replaced."""
        from nnlab.run.signals import in_slurm_batch_job, requeue_signal

        stop_signals = {signal.SIGTERM}
        if in_slurm_batch_job():
            stop_signals.add(requeue_signal(self.config.slurm.signal))
        return {
            sig: signal.signal(sig, lambda signum, frame: _raise_interrupt(signum, received)) for sig in stop_signals
        }

    def interrupted(self, received: list):
        """Stopped: the running trials are stopped and released for a rerun to resume, the summary written; a SLURM
        worker stopped by the requeue signal requeues itself. Exits 130 (Ctrl-C) or 128 + the signal."""
        from nnlab.run.signals import requeue_job

        self.stop.set()
        if self.moved:
            self.end_moved()
        log.warning("Interrupted: stopping the running trials; rerun the same command to resume them")
        if hasattr(self.launcher, "terminate"):
            self.launcher.terminate()
        with self.lock:
            for trial_id in list(self.open):
                self.beat(trial_id, 0.0)
        self.report()
        if received and received[0] != signal.SIGTERM and self.config.slurm.requeue and requeue_job():
            raise SystemExit(0) from None
        again = commands.line([*commands.program(), *commands.arguments()])
        print(f"Interrupted; resume with the same command: {again}", flush=True)
        raise SystemExit(128 + (received[0] if received else signal.SIGINT)) from None  # 130 Ctrl-C, 143 TERM

    moved = False

    def moved_away(self):
        """The sweep's folder is gone from where the sweep runs it: stop the sweep (from any of its threads)."""
        import _thread

        self.moved = True
        _thread.interrupt_main()

    def end_moved(self):
        """Stop the trials and end in one line: nothing more is written where the folder was."""
        if hasattr(self.launcher, "echo"):
            self.launcher.echo = False  # the stopped trials' own complaints stay in their console.log
        if hasattr(self.launcher, "terminate"):
            self.launcher.terminate()
        with self.lock:
            for trial_id in list(self.open):
                try:
                    self.beat(trial_id, 0.0)  # released in the moved study, so a rerun there resumes it at once
                except Exception:  # noqa: BLE001  its database may be gone altogether
                    pass
        print(
            f"Error: the sweep folder {self.sweep_dir} was moved or removed while the sweep ran: its running trials "
            "were stopped, to resume from their last checkpoints. Continue the study where its folder is now: the "
            "same command with hydra.sweep.dir=<its new place>",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(1) from None

    def launch(self, overrides: list[list[str]], trials: list) -> list[JobReturn]:
        """Launch trials together (one SLURM array with the submitit launcher). A launcher that raises instead of
        returning loses every return of the batch: each trial's run directory then says what happened. (Ours return
        one result per trial: hydra/launcher=slurm turns a job that ended without a result into its trial's failure.)"""
        try:
            return list(self.launcher.launch(overrides, initial_job_idx=trials[0].number))
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001  (recorded per trial)
            log.error(f"the launcher failed: {e}")
            rets = []
            for trial in trials:
                out = self.trial_dir(trial)
                ret = JobReturn(overrides=[], working_dir=str(out))
                value = _read_metric(out, self.config.get("optimized_metric"))
                done = (out / "metrics.json").is_file()
                ret.status = JobStatus.COMPLETED if done else JobStatus.FAILED
                ret.return_value = value if done else TrialFailed(f"{type(e).__name__}: {e}")
                rets.append(ret)
            return rets

    def report(self):
        metric = str(self.config.get("optimized_metric"))
        print(S.write_summary(self.study, self.sweep_dir, metric), flush=True)
        groups = set(self.config.hydra.runtime.choices)
        best = S.write_best_experiment(self.study, self.sweep_dir, self.space.fixed, groups, metric)
        if best:
            unfinished = S.incomplete(self.study)
            what = f"Best so far of an INCOMPLETE study ({unfinished})" if unfinished else "Best parameters"
            again = commands.with_config_folder(self.sweep_dir, f"experiment={best.stem}")
            print(f"{what} as an experiment config: {best}\n  reproduce: {again}")
        if any(self.sweep_dir.glob("*/wandb/offline-run-*")):
            print(
                "W&B ran offline; upload the whole sweep with: wandb sync "
                f"{commands.path(self.sweep_dir)}/*/wandb/offline-run-*"  # the quoted folder, then the pattern
            )
        print(f"Summary: {self.sweep_dir / 'summary.md'}  (rerun the same command to continue the study)", flush=True)
        from nnlab.report import write_report  # plotly and matplotlib: only now

        try:
            print(f"Report: {write_report(self.sweep_dir, self.study)}  (plots in {self.sweep_dir / 'plots'})")
        except Exception as e:  # noqa: BLE001  (the study and its summary are kept; the report can be made again)
            log.error(
                f"the report could not be written ({type(e).__name__}: {e}); python -m nnlab.report "
                f"{commands.path(self.sweep_dir)} makes it again"
            )


def _raise_interrupt(signum, received: list):
    received.append(signal.Signals(signum))
    if len(received) == 1:  # later signals (SLURM's SIGTERM after the requeue signal) must not cut the cleanup short
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

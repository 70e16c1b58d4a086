"""Sweeps on a persistent Optuna study: search spaces in Hydra's override syntax, the study, pruning, the summary.

The sweeper (hydra_plugins/nnlab_sweeper) runs in the process that `python train.py -m ...` starts; each trial is a
train.py run that finds its study through the `sweep.*` keys the sweeper sets. The study's storage is the record of a
sweep: rerunning the command opens it again and continues, several workers can share it, and the summary is built
from it.
"""

import csv
import hashlib
import io
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

from nnlab import commands
from nnlab.atomic import atomic_open
from nnlab.errors import UserError
from nnlab.upstream import id_by_number

log = logging.getLogger("nnlab.sweep")

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
HEARTBEAT = "nnlab:heartbeat"  # user attribute: when the worker running a trial last said it is alive (0: released)


# ----------------------------------------------------------------------------------------------------- search space
@dataclass
class SearchSpace:
    """Overrides split into what every trial gets (`fixed`) and what varies (`grid` lists or Optuna distributions)."""

    fixed: list[str] = field(default_factory=list)
    grid: dict[str, list[str]] = field(default_factory=dict)  # key -> values as Hydra override strings
    distributions: dict[str, optuna.distributions.BaseDistribution] = field(default_factory=dict)

    @classmethod
    def parse(cls, arguments: list[str]) -> "SearchSpace":
        space = cls()
        for override in OverridesParser.create().parse_overrides(arguments):
            key = override.get_key_element()
            # A later override of the same key (the command line after hydra.sweeper.params) replaces the earlier.
            bare = key.lstrip("+~")
            space.fixed = [f for f in space.fixed if commands.key(f) != bare]
            for table in (space.grid, space.distributions):
                for k in [k for k in table if k.lstrip("+~") == bare]:
                    del table[k]
            if not override.is_sweep_override():
                space.fixed.append(override.input_line)
            elif override.is_hydra_override():
                raise ValueError(f"{override.input_line}: hydra.* settings cannot be swept; give them one value")
            else:
                if override.is_discrete_sweep():
                    space.grid[key] = list(override.sweep_string_iterator())
                space.distributions[key] = distribution(override)
        return space

    def grid_points(self) -> list[dict[str, str]]:
        """Every combination of the discrete values, in the order Hydra's basic sweeper would run them."""
        if set(self.distributions) - set(self.grid):
            continuous = sorted(set(self.distributions) - set(self.grid))
            what = f"{', '.join(continuous)} {'is an interval' if len(continuous) == 1 else 'are intervals'}"
            raise ValueError(
                f"a grid sweep needs a list of values for every parameter; {what}. "
                "Use hydra/sweeper=optuna to search intervals."
            )
        keys = list(self.grid)
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(self.grid[k] for k in keys))]


def distribution(override: Override) -> optuna.distributions.BaseDistribution:
    """Hydra sweep syntax to an Optuna distribution: choice/list -> categorical, range -> int or stepped float,
    interval -> float (int with int(...)), tag(log, ...) -> log scale."""
    value = override.value()
    log_scale = "log" in getattr(value, "tags", set())
    if override.is_choice_sweep():
        return optuna.distributions.CategoricalDistribution(list(override.sweep_string_iterator()))
    if override.is_range_sweep():
        values = [float(v) for v in override.sweep_string_iterator()]
        if not values:
            raise ValueError(f"{override.input_line}: the range is empty")
        if all(isinstance(x, int) for x in (value.start, value.stop, value.step)):
            return optuna.distributions.IntDistribution(int(values[0]), int(values[-1]), step=int(value.step))
        return optuna.distributions.FloatDistribution(values[0], values[-1], step=value.step)
    if override.is_interval_sweep():
        if isinstance(value.start, int) and isinstance(value.end, int):
            return optuna.distributions.IntDistribution(value.start, value.end, log=log_scale)
        return optuna.distributions.FloatDistribution(value.start, value.end, log=log_scale)
    raise ValueError(f"{override.input_line}: not a sweep Optuna can search (use choice, range or interval)")


def as_override_value(value) -> str:
    """An Optuna parameter value as it goes back on the command line."""
    if isinstance(value, str):
        return value  # categorical values are kept as the override strings they came from
    if isinstance(value, float):
        return repr(float(f"{value:.6g}"))  # 0.0031234 rather than 0.0031234000000000002
    return str(value)


def default_study_name(model: str | None, arguments: list[str]) -> str:
    """<model>-<8 hex digits of the sorted overrides>: the same command opens the same study."""
    digest = hashlib.sha1("\n".join(sorted(arguments)).encode()).hexdigest()[:8]
    return f"{model or 'sweep'}-{digest}"


# ------------------------------------------------------------------------------------------------------------ study
def storage_url(storage: str | None, sweep_dir: Path):
    """None -> SQLite file in the sweep directory; *.log / *.journal / journal:PATH -> a journal file (for shared
    file systems, where SQLite's locking is unreliable); anything else is an Optuna/SQLAlchemy storage URL."""
    if storage is None:
        return f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    return str(storage)


class StudyGone(UserError, FileNotFoundError):
    """The file a study is stored in is no longer where the sweep put it (the sweep folder moved or removed)."""


def open_storage(url: str, create: bool = True):
    """The storage at `url`. A SQLite or journal file is made only with `create` (the sweeper's first opening): a
    trial, the report or a sweep whose folder was moved away gets a StudyGone naming the file, never a new empty
    study where the old one was."""
    if url.startswith("journal:") or url.endswith((".log", ".journal")):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url.removeprefix("journal:")).expanduser()
        if not create and not path.is_file():
            raise StudyGone(f"the study's journal {path} does not exist (was the sweep folder moved or removed?)")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        import sqlite3
        import urllib.parse

        path = Path(url.removeprefix("sqlite:///"))
        if not create and not path.is_file():
            raise StudyGone(f"the study's database {path} does not exist (was the sweep folder moved or removed?)")
        # Opened by file name (any characters) in a mode that never makes the file once it exists: a connection
        # opened after the folder moved fails instead of leaving an empty study.db behind. Several workers write one
        # file: each waits for the lock (60 s) instead of failing at once.
        target = f"file:{urllib.parse.quote(str(path.absolute()))}"
        made = [path.is_file()]

        def connect():
            connection = sqlite3.connect(
                f"{target}?mode={'rw' if made[0] else 'rwc'}", uri=True, timeout=60, check_same_thread=False
            )
            made[0] = True  # only the first connection may make the file
            return connection

        return optuna.storages.RDBStorage("sqlite://", engine_kwargs={"creator": connect})
    return optuna.storages.RDBStorage(url)


def load_study(url: str, name: str) -> optuna.Study:
    """The stored study, with the pruner its sweeper configured (Optuna does not store pruners)."""
    storage = open_storage(url, create=False)
    study = optuna.load_study(study_name=name, storage=storage, pruner=optuna.pruners.NopPruner())
    pruner = study.user_attrs.get("pruner")
    if pruner:
        from hydra.utils import instantiate

        study.pruner = instantiate(pruner)
    return study


def live_trial(url: str, name: str, number: int) -> optuna.Trial:
    """The running trial `number` of a stored study, for a trial process to report to."""
    study = load_study(url, name)
    trial_id = id_by_number(study, number)
    return optuna.Trial(study, trial_id)


def is_stale(trial: optuna.trial.FrozenTrial, stale_after_s: float) -> bool:
    """A running trial no live worker looks after: released on interruption, held by a worker on this machine whose
    process has ended (a killed sweep), or silent for stale_after_s (a worker elsewhere, or one that hangs)."""
    if trial.state != optuna.trial.TrialState.RUNNING:
        return False
    return worker_gone(trial.user_attrs.get(WORKER)) or time.time() - last_beat(trial) > stale_after_s


def last_beat(trial: optuna.trial.FrozenTrial) -> float:
    """When the worker running a trial last said it is alive (0: it released the trial)."""
    beat = trial.user_attrs.get(HEARTBEAT)
    if beat is None:  # just asked for by a worker that has not marked it yet
        beat = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
    return float(beat)


WORKER = "nnlab:worker"  # user attribute: the sweep process that runs a trial (host, pid, when that process started)


def process_started(pid: int) -> str | None:
    """When a process of this machine started, in clock ticks since boot (field 22 of /proc/<pid>/stat): with the pid,
    it names one process even after its pid is reused. None where it is gone (or /proc is not there)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_worker() -> dict:
    import os
    import socket

    return {"host": socket.gethostname(), "pid": os.getpid(), "started": process_started(os.getpid())}


def worker_gone(worker) -> bool:
    """Whether a trial's recorded worker is a process of this machine that has ended."""
    import socket

    if not isinstance(worker, dict) or worker.get("host") != socket.gethostname() or not worker.get("started"):
        return False  # another machine's worker: only its silence (stale_after_s) tells
    return process_started(int(worker.get("pid", 0))) != worker["started"]


class PerTrialSeed(optuna.samplers.BaseSampler):
    """A sampler seeded per trial (from the seed and the trial number) instead of once per process.

    Workers started by the same command share the configured seed; a sampler seeded once per process would give
    every worker the same random draws, so their trials would repeat each other's parameters. Trial numbers are
    unique in a study, so seeding by them keeps one worker's sweep reproducible and parallel workers apart. Samplers
    keep their history in the study, so a fresh instance per trial loses nothing."""

    def __init__(self, make, seed: int):
        self.make, self.seed = make, seed
        self._number, self._sampler = None, None

    def _for(self, trial) -> optuna.samplers.BaseSampler:
        if trial.number != self._number:
            self._number, self._sampler = trial.number, self.make((self.seed * 1_000_003 + trial.number) % 2**32)
        return self._sampler

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._for(trial).after_trial(study, trial, state, values)


def make_sampler(config: dict | None) -> optuna.samplers.BaseSampler:
    """The configured sampler; seeded per trial (PerTrialSeed) when it takes a seed and is not a low-discrepancy
    sequence (QMC), whose seed must stay fixed for the whole study."""
    from hydra.utils import instantiate

    if not config:
        return optuna.samplers.RandomSampler()
    config = dict(config)
    seed = config.pop("seed", None)
    if seed is None or config["_target_"].endswith("QMCSampler"):
        return instantiate({**config, "seed": seed} if seed is not None else config)
    return PerTrialSeed(lambda s: instantiate({**config, "seed": s}), int(seed))


# ------------------------------------------------------------------------------------------------------- replicates
def replicate_key(k: int) -> str:
    """The trial user attribute that records replicate k: seed, state, value, epochs, run_dir, run_id, error."""
    return f"replicate:{k}"


def curve_key(k: int) -> str:
    """The trial user attribute holding replicate k's pruning metric per epoch ({"epoch": value})."""
    return f"curve:{k}"


def replicate_seed(base: int, k: int) -> int:
    """Replicate k's seed: the trial's seed plus k (replicate 0 is the run the sweep would make without replicates)."""
    return int(base) + k


def replicates_of(trial: optuna.trial.FrozenTrial) -> dict[int, dict]:
    return {
        int(key.split(":", 1)[1]): value
        for key, value in trial.user_attrs.items()
        if key.startswith("replicate:") and isinstance(value, dict)
    }


def mean_curve(trial: optuna.trial.FrozenTrial) -> dict[int, float]:
    """The trial's intermediate values as the mean over its replicates' curves, epoch by epoch (each epoch over the
    replicates that reached it)."""
    at: dict[int, list[float]] = {}
    for key, curve in trial.user_attrs.items():
        if key.startswith("curve:") and isinstance(curve, dict):
            for step, value in curve.items():
                at.setdefault(int(step), []).append(float(value))
    return {step: sum(v) / len(v) for step, v in sorted(at.items())}


# ------------------------------------------------------------------------------------------------------- statistics
@dataclass
class Estimate:
    """Mean, sample standard deviation and 95% confidence interval (Student's t, n - 1 degrees of freedom)."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n

    @property
    def sd(self) -> float | None:
        if self.n < 2:
            return None
        m = self.mean
        return (sum((v - m) ** 2 for v in self.values) / (self.n - 1)) ** 0.5

    @property
    def ci95(self) -> tuple[float, float] | None:
        if self.n < 2:
            return None
        from scipy import stats

        half = stats.t.ppf(0.975, self.n - 1) * self.sd / self.n**0.5
        return self.mean - half, self.mean + half


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test (unequal variances) for equal means; None with fewer than 2 values a side.
    Two sets without any spread differ for certain unless their means are equal."""
    if len(a) < 2 or len(b) < 2:
        return None
    ea, eb = Estimate(a), Estimate(b)
    if ea.sd == 0 and eb.sd == 0:
        return 1.0 if ea.mean == eb.mean else 0.0
    import warnings

    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's note on nearly identical values
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


ALPHA = 0.05  # a Welch p-value at or above this: not distinguishable from the best


@dataclass
class Group:
    """One configuration and the runs that measured it: a trial's replicates, or the trials of a seed sweep that
    differ only in `seed`."""

    label: str
    overrides: str
    values: list[float]
    seeds: list[str]
    trials: list[int]
    tests: list[float] = field(default_factory=list)  # the same runs' test accuracy (test/acc of metrics.json)
    best: bool = False
    p: float | None = None

    @property
    def estimate(self) -> Estimate:
        return Estimate(self.values)

    @property
    def indistinguishable(self) -> bool:
        return not self.best and self.p is not None and self.p >= ALPHA


def compare(groups: list["Group"], maximize: bool):
    """Mark the group with the best mean, and give every other group its Welch p-value against it."""
    measured = [g for g in groups if g.values]
    if not measured:
        return
    best = (max if maximize else min)(measured, key=lambda g: g.estimate.mean)
    best.best = True
    for g in measured:
        if g is not best:
            g.p = welch_p(g.values, best.values)


def fmt(value, digits=6) -> str:
    return "" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def interval(e: Estimate | None) -> dict:
    """The interval's ends as CSV columns."""
    low, high = e.ci95 if e is not None and e.ci95 is not None else (None, None)
    return {"ci95_low": low, "ci95_high": high}


def csv_columns(columns: list[str]) -> list[str]:
    wide = {"ci95": ["ci95_low", "ci95_high"], "test": ["test_mean", "test_sd"]}
    return [x for c in columns for x in wide.get(c, [c])]


def ci_text(e: Estimate) -> str:
    return "" if e.ci95 is None else f"{e.ci95[0]:.4g} – {e.ci95[1]:.4g}"


# ---------------------------------------------------------------------------------------------------------- summary
def overrides_text(params: dict) -> str:
    return " ".join(f"{k}={as_override_value(v)}" for k, v in params.items())


def best_number(study: optuna.Study) -> int | None:
    try:
        return study.best_trial.number
    except ValueError:  # no complete trial yet
        return None


def located(run_dir: str, sweep_dir: Path | None) -> str:
    """A run directory the study recorded, where it is now: a trial's directory is always in its sweep's folder, so a
    sweep folder that was moved or renamed since still finds its runs."""
    if not run_dir or sweep_dir is None:
        return run_dir
    return str(Path(sweep_dir) / Path(run_dir).name)


def run_rows(study: optuna.Study, sweep_dir: Path | None = None) -> list[dict]:
    """One row per run: a trial, or each of its replicates."""
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        replicates = replicates_of(t)
        if not replicates:
            rows.append(
                {
                    "trial": t.number,
                    "replicate": "",
                    "seed": t.params.get("seed", ""),
                    "state": t.state.name.lower(),
                    "value": t.value,
                    "epochs": t.last_step + 1 if t.last_step is not None else "",
                    "overrides": overrides_text(t.params),
                    "run_dir": located(t.user_attrs.get("run_dir", ""), sweep_dir),
                    "error": t.user_attrs.get("error", ""),
                }
            )
        for k, r in sorted(replicates.items()):
            state = r.get("state", "")
            if state == "running" and t.state == optuna.trial.TrialState.PRUNED:
                state = "pruned"  # stopped with its trial, which a sibling replicate got pruned
            rows.append(
                {
                    "trial": t.number,
                    "replicate": k,
                    "seed": r.get("seed", ""),
                    "state": state,
                    "value": r.get("value"),
                    "epochs": r.get("epochs", ""),
                    "overrides": overrides_text(t.params),
                    "run_dir": located(r.get("run_dir", ""), sweep_dir),
                    "error": r.get("error", ""),
                }
            )
    return rows


TEST_METRIC = "test/acc"  # reported beside the objective: what a results table quotes


def test_value(run_dir) -> float | None:
    """TEST_METRIC from a run's metrics.json; None where there is none (pruned, failed, not readable)."""
    import json

    try:
        value = json.loads((Path(run_dir) / "metrics.json").read_text()).get(TEST_METRIC)
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def groups_of(study: optuna.Study, sweep_dir: Path | None = None) -> list[Group]:
    """Configurations with their measurements: each trial's complete replicates when the sweep has replicates, else
    the complete trials grouped by their parameters other than `seed` (a seed sweep is one group)."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    groups: dict[str, Group] = {}
    for t in trials:
        replicates = replicates_of(t)
        if replicates:
            done = [r for _, r in sorted(replicates.items()) if r.get("state") == "complete"]
            groups[str(t.number)] = Group(
                label=str(t.number),
                overrides=overrides_text(t.params),
                values=[float(r["value"]) for r in done] if t.state != optuna.trial.TrialState.PRUNED else [],
                seeds=[str(r.get("seed", "")) for r in done],
                trials=[t.number],
                tests=[v for r in done if (v := test_value(located(r.get("run_dir", ""), sweep_dir))) is not None],
            )
            continue
        key = overrides_text({k: v for k, v in t.params.items() if k != "seed"})
        g = groups.setdefault(key, Group(label="", overrides=key, values=[], seeds=[], trials=[]))
        g.trials.append(t.number)
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None:
            g.values.append(float(t.value))
            g.seeds.append(str(t.params.get("seed", "")))
            if (v := test_value(located(t.user_attrs.get("run_dir", ""), sweep_dir))) is not None:
                g.tests.append(v)
    for g in groups.values():
        g.label = g.label or ", ".join(map(str, g.trials))
    return list(groups.values())


def has_replicates(study: optuna.Study) -> bool:
    return any(replicates_of(t) for t in study.get_trials(deepcopy=False))


def table(columns: list[str], rows: list[dict], header: dict | None = None) -> list[str]:
    header = header or {}
    lines = ["| " + " | ".join(header.get(c, c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row[c]).replace("|", "\\|") for c in columns) + " |")
    return lines


def write_csv(path: Path, columns: list[str], rows: list[dict]):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({c: ("" if r[c] is None else r[c]) for c in columns} for r in rows)
    with atomic_open(path) as f:
        f.write(buf.getvalue().encode())


GROUP_COLUMNS = ["config", "best", "mean", "sd", "ci95", "n", "welch_p", "test", "seeds", "overrides"]


def test_columns(g: Group) -> dict:
    """The runs' test accuracy as `mean ± sd` for Markdown, and its mean and sd as CSV columns."""
    if not g.tests:
        return {"test": "", "test_mean": None, "test_sd": None}
    e = Estimate(g.tests)
    text = f"{e.mean:.4f}" + (f" ± {e.sd:.4f}" if e.sd is not None else "")
    return {"test": text, "test_mean": e.mean, "test_sd": e.sd}


def group_rows(groups: list[Group]) -> list[dict]:
    rows = []
    for g in groups:
        e = g.estimate if g.values else None
        rows.append(
            {
                "config": g.label,
                "best": "*" if g.best else "≈" if g.indistinguishable else "",
                "mean": e.mean if e else None,
                "sd": e.sd if e else None,
                "ci95": ci_text(e) if e else "",
                **interval(e),
                "n": len(g.values),
                "welch_p": None if g.p is None else round(g.p, 4),
                **test_columns(g),
                "seeds": " ".join(g.seeds),
                "overrides": g.overrides,
            }
        )
    return rows


def write_summary(study: optuna.Study, sweep_dir: Path, metric: str) -> str:
    """summary.md, summary.csv (one row per trial) and runs.csv (one row per run: a trial or a replicate) in the sweep
    directory, from the study (all workers' trials); where configurations were measured more than once (replicates,
    or a seed swept), also configs.csv: mean, standard deviation, 95% interval and Welch's test against the best.
    Returns the Markdown."""
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    best = best_number(study)
    groups = groups_of(study, sweep_dir)
    compare(groups, maximize)
    by_trial = {n: g for g in groups for n in g.trials}
    replicated = has_replicates(study)
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        g = by_trial[t.number]
        e = g.estimate if g.values and replicated else None
        rows.append(
            {
                "trial": t.number,
                "best": "*" if t.number == best else "≈" if replicated and g.indistinguishable else "",
                "state": t.state.name.lower(),
                "value": t.value,
                "sd": e.sd if e else None,
                "ci95": ci_text(e) if e else "",
                **interval(e),
                "n": len(replicates_of(t)) if replicated else "",
                "welch_p": None if g.p is None else round(g.p, 4),
                **(test_columns(g) if replicated else {}),
                "epochs": t.last_step + 1 if t.last_step is not None else "",
                "overrides": overrides_text(t.params),
                "run_dir": located(t.user_attrs.get("run_dir", ""), sweep_dir),
                "error": t.user_attrs.get("error", ""),
            }
        )
    columns = ["trial", "best", "state", "value", "epochs", "overrides", "run_dir", "error"]
    if replicated:
        columns[4:4] = ["sd", "ci95", "n", "welch_p", "test"]
    write_csv(sweep_dir / "summary.csv", csv_columns(columns), rows)
    runs = run_rows(study, sweep_dir)
    write_csv(sweep_dir / "runs.csv", list(runs[0]) if runs else ["trial"], runs)
    states = [r["state"] for r in rows]
    counts = ", ".join(f"{states.count(s)} {s}" for s in ("complete", "pruned", "fail", "running") if s in states)
    header = {
        "value": f"{metric} (mean)" if replicated else metric,
        "n": "replicates",
        "test": f"{TEST_METRIC} (mean ± sd)",
    }
    unfinished = incomplete(study)
    text = f"Sweep {study.study_name}: {len(rows)} trials ({counts}); * marks the best"
    if unfinished:
        text = f"INCOMPLETE study ({unfinished}): what follows is so far.\n{text}"
    measured_twice = [g for g in groups if len(g.values) >= 2]
    if replicated:
        n = max(len(replicates_of(t)) for t in study.get_trials(deepcopy=False))
        text += (
            f".\nEach trial is {n} replicates (seeds differ); its value is their mean, with the sample standard "
            f"deviation and the 95% confidence interval of the mean (Student's t). ≈ marks trials a Welch t-test at "
            f"5% cannot tell from the best (p >= {ALPHA})"
        )
    text += "\n\n" + "\n".join(table(columns, rows, header)) + "\n"
    if measured_twice and not replicated:
        grows = group_rows(groups)
        write_csv(sweep_dir / "configs.csv", csv_columns(GROUP_COLUMNS), grows)
        text += (
            f"\nOver seeds: trials that differ only in `seed` measure one configuration; mean, sample standard "
            f"deviation, 95% confidence interval of the mean (Student's t) and n of {metric}; * the best mean, ≈ "
            f"those a Welch t-test at 5% cannot tell from it (p >= {ALPHA})\n\n"
            + "\n".join(table(GROUP_COLUMNS, grows, {"test": f"{TEST_METRIC} (mean ± sd)"}))
            + "\n"
        )
    if replicated:
        run_columns = ["trial", "replicate", "seed", "state", "value", "epochs", "run_dir", "error"]
        text += "\nRuns\n\n" + "\n".join(table(run_columns, runs, {"value": metric})) + "\n"
    with atomic_open(sweep_dir / "summary.md") as f:
        f.write(text.encode())
    return text


def incomplete(study: optuna.Study) -> str | None:
    """How a study is short of finished (trials running, or fewer finished than the sweep's target), else None."""
    trials = study.get_trials(deepcopy=False)
    running = [
        t.number for t in trials if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    ]
    finished = len([t for t in trials if t.state in FINISHED])
    target = study.user_attrs.get("target") or len(trials)
    if not running and finished >= target:
        return None
    still = f"; trial {', '.join(map(str, running))} still running" if running else ""
    return f"{finished} of {target} trials finished{still}"


RECIPE_GROUPS = ("experiment", "hparams_search")  # groups whose configs are whole recipes (@package _global_)


def write_best_experiment(
    study: optuna.Study, sweep_dir: Path, fixed: list[str], groups: set[str], metric: str
) -> Path | None:
    """<sweep dir>/experiment/best.yaml: the sweep's fixed overrides plus the best trial's parameters, as an
    experiment config (`python train.py -cd <sweep dir> experiment=best`). While the study is incomplete, the best so
    far goes to experiment/best_incomplete.yaml instead, saying so: nothing called best comes from part of a study."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    unfinished = incomplete(study)
    name = "best_incomplete" if unfinished else "best"
    if not unfinished:
        (sweep_dir / "experiment" / "best_incomplete.yaml").unlink(missing_ok=True)
    parser = OverridesParser.create()
    overrides = parser.parse_overrides(fixed + [f"{k}={as_override_value(v)}" for k, v in best.params.items()])
    includes, defaults, values = [], [], {}
    for o in overrides:
        key = o.get_key_element().lstrip("+~")
        if o.is_hydra_override() or o.is_delete() or key.startswith("paths."):
            continue  # paths.* say where this machine keeps things, not how the trial trained
        group = key.split("@")[0]
        if group in RECIPE_GROUPS:  # null by default in train.yaml: included, not overridden
            includes.append(f"  - /{group}/{o.get_value_element_as_str()}")
        elif group in groups:
            defaults.append(f"  - override /{key}: {o.get_value_element_as_str()}")
        else:
            node = values
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = o.value()
    if "max_epochs" in values.get("trainer", {}):  # the sweep trained that many epochs exactly (train.yaml's budget)
        values.setdefault("budget", {})["exact"] = True
    from omegaconf import OmegaConf

    body = OmegaConf.to_yaml(OmegaConf.create(values)) if values else ""
    text = (
        "# @package _global_\n"
        + (f"# INCOMPLETE study ({unfinished}): the best so far, not the study's best\n" if unfinished else "")
        + f"# Best trial {best.number} of sweep {study.study_name}: {metric} = {best.value:.6g}"
        + (f" (mean of {len(replicates_of(best))} replicates, seeds differing)" if replicates_of(best) else "")
        + "\n"
        f"# {commands.with_config_folder(sweep_dir, f'experiment={name}')}\n"
    )
    if includes or defaults:
        text += "defaults:\n" + "\n".join(includes + ["  - _self_"] + defaults) + "\n"
    text += body
    path = sweep_dir / "experiment" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        f.write(text.encode())
    return path

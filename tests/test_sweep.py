"""Sweeps as a user runs them (`python train.py -m ...`): grid and Optuna studies, pruning, failures, interruption and
resume, DDP inside trials, parallel trials, W&B offline runs grouped per sweep."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from nnlab.sweep import SearchSpace, as_override_value, load_study
from nnlab.upstream import id_of, study_storage
from tests.helpers import (
    ODD,
    OPTUNA,
    ROOT,
    SWEEP_TINY,
    only_sweep,
    paste,
    read_wandb_records,
    start,
    sweep,
    train,
    user_env,
)


# ------------------------------------------------------------------------------------------------ search spaces
def test_grid_points_come_in_hydra_order_and_fixed_overrides_pass_through():
    space = SearchSpace.parse(["model=mlp", "model.lr=1e-3,3e-3", "data.batch_size=range(64,257,64)"])
    assert space.fixed == ["model=mlp"]
    points = space.grid_points()
    assert len(points) == 8 and points[0] == {"model.lr": "0.001", "data.batch_size": "64"}
    assert points[1] == {"model.lr": "0.001", "data.batch_size": "128"}


def test_search_space_syntax_maps_to_optuna_distributions():
    space = SearchSpace.parse(
        [
            "model.lr=tag(log,interval(1e-4,1e-2))",
            "model.dropout=interval(0.0,0.5)",
            "model.layers=int(interval(1,4))",
            "data.batch_size=range(32,129,32)",
            "model.net=choice(mlp,cnn)",
        ]
    )
    d = space.distributions
    assert d["model.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert d["model.dropout"] == optuna.distributions.FloatDistribution(0.0, 0.5)
    assert d["model.layers"] == optuna.distributions.IntDistribution(1, 4)
    assert d["data.batch_size"] == optuna.distributions.IntDistribution(32, 128, step=32)
    assert d["model.net"] == optuna.distributions.CategoricalDistribution(["mlp", "cnn"])
    with pytest.raises(ValueError, match="model.lr.*interval.*hydra/sweeper=optuna"):
        space.grid_points()
    assert as_override_value(0.0031234000000000002) == "0.0031234" and as_override_value(64) == "64"


def test_a_later_override_of_a_key_replaces_the_earlier():
    space = SearchSpace.parse(
        [
            "model.lr=tag(log,interval(1e-4,1e-2))",
            "data.batch_size=64,128",
            "model.lr=1e-3",
            "data.batch_size=choice(32,64)",
        ]
    )
    assert space.fixed == ["model.lr=1e-3"] and list(space.distributions) == ["data.batch_size"]
    assert space.grid == {"data.batch_size": ["32", "64"]}


def test_sweeping_a_hydra_setting_is_refused_with_the_key():
    with pytest.raises(ValueError, match="hydra.job.chdir"):
        SearchSpace.parse(["hydra.job.chdir=true,false"])


# ------------------------------------------------------------------------------------------------------ end to end


def summary(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def wandb_runs(sweep_dir: Path) -> dict[str, dict]:
    """run id -> {group, tags, exit_code, trial dirs} over every offline W&B run file in the sweep."""
    runs = {}
    for path in sorted(sweep_dir.glob("*/wandb/offline-run-*/run-*.wandb")):
        for record in read_wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = runs.setdefault(record.run.run_id, {"tags": set(), "dirs": set(), "exit_code": None})
                run["group"] = record.run.run_group
                run["tags"] |= set(record.run.tags)
                run["dirs"].add(path.parents[2].name)
            elif kind == "exit":
                runs[path.name[4:-6]]["exit_code"] = record.exit.exit_code
    return runs


# Random startup trials (seed 1) draw good, good, bad, good: the bad learning rate is pruned at its first epoch.


@pytest.mark.slow
def test_optuna_sweep_prunes_groups_wandb_runs_and_a_rerun_extends_the_study(tmp_path, mnist_dir):
    proc = sweep(tmp_path, mnist_dir, *OPTUNA, "hydra.sweeper.n_trials=4")
    sweep_dir = only_sweep(tmp_path)
    rows = summary(sweep_dir)
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3"]
    assert [r["state"] for r in rows] == ["complete", "complete", "pruned", "complete"]
    best = [r for r in rows if r["best"] == "*"]
    assert len(best) == 1 and best[0]["overrides"] == "model.lr=0.003"
    assert "| trial | best | state | val/acc_best |" in proc.stdout  # the table is printed too
    assert (sweep_dir / "summary.md").is_file() and (sweep_dir / "study.db").is_file()

    runs = wandb_runs(sweep_dir)
    assert len(runs) == 4 and {r["group"] for r in runs.values()} == {sweep_dir.name}
    assert all(len(r["dirs"]) == 1 for r in runs.values())  # one run per trial directory
    pruned_dirs = {r["trial"] for r in rows if r["state"] == "pruned"}
    assert {d for r in runs.values() if "pruned" in r["tags"] for d in r["dirs"]} == pruned_dirs
    assert all("model=mlp" in r["tags"] for r in runs.values())  # the trial's overrides are tags
    for trial in pruned_dirs:
        metrics = json.loads((sweep_dir / trial / "metrics.json").read_text())
        assert metrics["trial_state"] == "pruned" and "test/acc" not in metrics  # a pruned trial is not tested

    best_cfg = (sweep_dir / "experiment" / "best.yaml").read_text()
    assert "# @package _global_" in best_cfg and "lr: 0.003" in best_cfg and "override /model: mlp" in best_cfg

    # The same command with a larger budget continues the same study: one more trial, one more W&B run.
    sweep(tmp_path, mnist_dir, *OPTUNA, "hydra.sweeper.n_trials=5")
    assert only_sweep(tmp_path) == sweep_dir
    study = load_study(f"sqlite:///{sweep_dir / 'study.db'}", sweep_dir.name)
    assert len(study.trials) == 5 and all(t.state.is_finished() for t in study.trials)
    assert len(wandb_runs(sweep_dir)) == 5


@pytest.mark.slow
def test_interrupted_sweep_resumes_its_running_trial_from_the_checkpoint(tmp_path, mnist_dir):
    args = [
        *SWEEP_TINY,
        f"paths.data_dir={mnist_dir}",
        f"paths.log_dir={tmp_path}",
        "hydra/sweeper=optuna",
        "model.lr=tag(log,interval(1e-3,1e-2))",
        "hydra.sweeper.n_trials=2",
        "trainer.max_epochs=3",
        "+callbacks.slow._target_=tests.helpers.SlowSteps",
        "+callbacks.slow.seconds=0.25",
    ]
    output = tmp_path / "sweep.out"
    proc = start("-m", *args, output=output)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("sweeps/*/0/checkpoints/last.ckpt")):
        assert proc.poll() is None and time.monotonic() < deadline, "the first trial never wrote a checkpoint"
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(timeout=120) == 130
    printed = output.read_text()
    assert "| trial |" in printed and "Interrupted; resume with the same command: python" in printed
    assert "Traceback" not in printed
    sweep_dir = only_sweep(tmp_path)
    study = load_study(f"sqlite:///{sweep_dir / 'study.db'}", sweep_dir.name)
    assert [t.state.name for t in study.trials] == ["RUNNING"]  # left running, released for a rerun

    rerun = train("-m", *args, timeout=600)
    assert "Trial 0 (resumed: continues in its own directory" in rerun.stdout + rerun.stderr
    study = load_study(f"sqlite:///{sweep_dir / 'study.db'}", sweep_dir.name)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    metrics = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["resumed_from"].endswith("last.ckpt")
    runs = wandb_runs(sweep_dir)
    assert len(runs) == 2 and {r["group"] for r in runs.values()} == {sweep_dir.name}  # resumed, not duplicated
    assert sorted(d for r in runs.values() for d in r["dirs"]) == ["0", "1"]


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_grid_goes_on(tmp_path, mnist_dir):
    proc = sweep(
        tmp_path,
        mnist_dir,
        "trainer.max_epochs=1",
        "+callbacks.poison._target_=tests.helpers.PoisonWeights",
        "+callbacks.poison.epoch=0,5",
        "model.lr=1e-3",
    )
    sweep_dir = only_sweep(tmp_path)
    rows = summary(sweep_dir)
    assert [(r["overrides"], r["state"]) for r in rows] == [
        ("+callbacks.poison.epoch=0", "fail"),
        ("+callbacks.poison.epoch=5", "complete"),
    ]
    assert "non-finite" in rows[0]["error"] and rows[1]["best"] == "*"
    assert "1 fail" in proc.stdout
    assert "Traceback" in (sweep_dir / "0" / "train.log").read_text()  # the trial's own log has the traceback
    assert "non-finite" in (sweep_dir / "0" / "console.log").read_text()
    runs = wandb_runs(sweep_dir)
    assert sorted((next(iter(r["dirs"])), r["exit_code"]) for r in runs.values()) == [("0", 1), ("1", 0)]


@pytest.mark.slow
def test_ddp_trials_start_from_their_own_values_one_run_each(tmp_path, mnist_dir):
    proc = sweep(tmp_path, mnist_dir, "trainer=ddp_cpu", "trainer.max_epochs=1", "model.lr=1e-3,3e-3")
    sweep_dir = only_sweep(tmp_path)
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1", "experiment", "plots"]
    assert [r["state"] for r in summary(sweep_dir)] == ["complete", "complete"]
    runs = wandb_runs(sweep_dir)
    assert len(runs) == 2 and sorted(d for r in runs.values() for d in r["dirs"]) == ["0", "1"]
    for trial, lr in (("0", "0.001"), ("1", "0.003")):
        console = (sweep_dir / trial / "console.log").read_text()
        assert "distributed_backend=gloo" in console and console.count("All distributed processes registered") == 1
        assert f"lr: {lr}" in (sweep_dir / trial / "config.yaml").read_text()
    assert "-m" not in json.loads((sweep_dir / "0" / "run.json").read_text())["command"]
    assert proc.stdout.count("Sweep ") == 1


@pytest.mark.slow
def test_parallel_launcher_pins_each_trial_to_its_own_cores(tmp_path, mnist_dir):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores to give each trial its own")
    sweep(tmp_path, mnist_dir, "hydra/launcher=parallel", "trainer.max_epochs=1", "model.lr=1e-3,3e-3", "logger=csv")
    sweep_dir = only_sweep(tmp_path)
    cpus = [json.loads((sweep_dir / t / "run.json").read_text())["cpus"] for t in ("0", "1")]
    assert all(len(c) == len(os.sched_getaffinity(0)) // 2 for c in cpus) and not set(cpus[0]) & set(cpus[1])


@pytest.mark.slow
def test_replicates_run_side_by_side_on_the_parallel_launcher(tmp_path, mnist_dir):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores to give each replicate its own")
    proc = sweep(tmp_path, mnist_dir, "hydra/launcher=parallel", "trainer.max_epochs=1", "hydra.sweeper.replicates=2",
                 "logger=csv")  # fmt: skip
    sweep_dir = only_sweep(tmp_path)
    infos = [json.loads((sweep_dir / r / "run.json").read_text()) for r in ("0-r0", "0-r1")]
    assert not set(infos[0]["cpus"]) & set(infos[1]["cpus"])  # each its own slot's cores
    assert [i["command"].count(f"seed={s}") for i, s in zip(infos, (42, 43))] == [1, 1]
    started = [json.loads((sweep_dir / r / "metrics.json").read_text())["launched_at"] for r in ("0-r0", "0-r1")]
    ended = [(sweep_dir / r / "metrics.json").stat().st_mtime for r in ("0-r0", "0-r1")]
    assert max(started) < min(ended)  # side by side: the second started before the first ended
    assert "Trial 0 complete (2 replicates)" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_two_workers_share_one_study_in_a_journal_file(tmp_path, mnist_dir):
    journal = tmp_path / "shared-fs" / "study.log"
    args = [
        *SWEEP_TINY,
        f"paths.data_dir={mnist_dir}",
        f"paths.log_dir={tmp_path}",
        "hydra/sweeper=optuna",
        "model.lr=tag(log,interval(1e-3,1e-2))",
        "hydra.sweeper.n_trials=4",
        f"hydra.sweeper.storage={journal}",
        "hydra.sweeper.study_name=shared",
        "trainer.max_epochs=1",
        "logger=csv",
    ]
    workers = [start("-m", *args) for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    study = load_study(str(journal), "shared")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert len({t.params["model.lr"] for t in study.trials}) == 4
    ran = [set(re.findall(r"Trial (\d+) complete:", out)) for out in outputs]
    assert all(ran) and not ran[0] & ran[1] and len(ran[0] | ran[1]) == 4  # both worked, never on the same trial
    trial_dirs = sorted(p.name for p in (tmp_path / "sweeps" / "shared").iterdir() if p.name.isdigit())
    assert trial_dirs == ["0", "1", "2", "3"]


@pytest.mark.slow
def test_a_stored_study_refuses_other_settings_and_says_how_to_start_anew(tmp_path, mnist_dir):
    sweep(
        tmp_path,
        mnist_dir,
        "hydra.sweeper.study_name=mine",
        "model.lr=choice(1e-3)",
        "trainer.max_epochs=1",
        "logger=csv",
    )
    proc = sweep(
        tmp_path,
        mnist_dir,
        "hydra.sweeper.study_name=mine",
        "model.lr=choice(1e-3)",
        "trainer.max_epochs=2",
        "logger=csv",
        check=False,
    )
    assert proc.returncode != 0
    assert "trainer.max_epochs=1" in proc.stderr and "hydra.sweeper.study_name=<new name>" in proc.stderr


@pytest.mark.slow
def test_wandb_sweeps_definition_drives_train_py_as_the_agent_would(tmp_path, mnist_dir):
    """W&B's agent runs the definition's command with ${args_no_hyphens} replaced by the sampled values."""
    import yaml

    spec = yaml.safe_load((ROOT / "scripts" / "wandb_sweep.yaml").read_text())
    sampled = [f"{k}={p['values'][0] if 'values' in p else p['min']}" for k, p in spec["parameters"].items()]
    macros = {
        "${env}": [],
        "${interpreter}": [sys.executable],
        "${program}": [str(ROOT / spec["program"])],
        "${args_no_hyphens}": sampled,
    }
    cmd = [part for item in spec["command"] for part in macros.get(item, [item])]
    run_dir = tmp_path / "run"
    cmd += [f"paths.data_dir={mnist_dir}", f"hydra.run.dir={run_dir}", "trainer.max_epochs=1", *SWEEP_TINY[1:]]
    env = user_env({"WANDB_SWEEP_ID": "abc123", "WANDB_RUN_ID": "agentrun1"})
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    config = (run_dir / "config.yaml").read_text()
    assert "lr: 0.0003" in config and "batch_size: 64" in config
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    run = next(r.run for r in read_wandb_records(path) if r.WhichOneof("record_type") == "run")
    (group,) = [item.split("=")[1] for item in spec["command"] if item.startswith("sweep.name=")]
    assert run.run_id == "agentrun1" and run.run_group == group


def test_workers_sharing_a_seed_do_not_repeat_each_others_draws():
    from nnlab.sweep import make_sampler

    config = {"_target_": "optuna.samplers.TPESampler", "seed": 42, "n_startup_trials": 10}
    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    workers = [
        optuna.load_study(study_name=study.study_name, storage=study_storage(study), sampler=make_sampler(config))
        for _ in range(2)
    ]
    draws = [w.ask(space).params["lr"] for _ in range(3) for w in workers]
    assert len(set(draws)) == 6
    again = optuna.create_study(sampler=make_sampler(config))  # one worker alone: the same sweep every time
    assert [again.ask(space).params["lr"] for _ in range(6)] == draws


@pytest.mark.slow
def test_in_process_trials_get_one_wandb_run_each_and_ddp_there_is_refused(tmp_path, mnist_dir):
    """hydra/launcher=basic runs trials one after another in the sweep's own process."""
    sweep(tmp_path, mnist_dir, "hydra/launcher=basic", "trainer.max_epochs=1", "model.lr=1e-3,3e-3")
    sweep_dir = only_sweep(tmp_path)
    runs = wandb_runs(sweep_dir)
    assert sorted(d for r in runs.values() for d in r["dirs"]) == ["0", "1"]  # finished between trials
    assert [r["exit_code"] for r in runs.values()] == [0, 0] and {r["group"] for r in runs.values()} == {sweep_dir.name}

    sweep(tmp_path / "ddp", mnist_dir, "hydra/launcher=basic", "trainer=ddp_cpu", "model.lr=1e-3,3e-3", "logger=csv")
    rows = summary(only_sweep(tmp_path / "ddp"))
    assert [r["state"] for r in rows] == ["fail", "fail"] and "hydra/launcher=trials" in rows[0]["error"]


# ------------------------------------------------------------------------------- nothing lost, nothing silently wrong
@pytest.mark.slow
@pytest.mark.parametrize("name", ["a/../../../escaped", "cnn/v2", ".hidden"])
def test_a_study_name_is_one_plain_folder_name(tmp_path, mnist_dir, name):
    proc = sweep(tmp_path / "outputs", mnist_dir, "model.lr=1e-3,2e-3", f"hydra.sweeper.study_name='{name}'",
                 check=False)  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
    assert f"hydra.sweeper.study_name={name!r} is not one plain folder name" in errors[0]
    assert "letters, digits, '.', '_' and '-'" in errors[0] and "Traceback" not in proc.stderr
    made = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not made, made  # nothing written, inside outputs/sweeps or out of it


def wait_for(path_glob: str, root: Path, proc: subprocess.Popen, seconds=300):
    deadline = time.monotonic() + seconds
    while not list(root.glob(path_glob)):
        assert proc.poll() is None and time.monotonic() < deadline, f"{path_glob} never appeared under {root}"
        time.sleep(0.2)


def grid_args(log_dir: Path, data_dir: Path, *more: str) -> list[str]:
    return [*SWEEP_TINY, f"paths.data_dir={data_dir}", f"paths.log_dir={log_dir}", "model.lr=1e-3,3e-3",
            "trainer.max_epochs=2", "logger=csv", "+callbacks.slow._target_=tests.helpers.SlowSteps",
            "+callbacks.slow.seconds=0.1", *more]  # fmt: skip


@pytest.mark.slow
def test_a_rerun_right_after_a_killed_sweep_takes_its_trial_over_and_finishes_the_grid(tmp_path, mnist_dir):
    """The sweep process SIGKILLed mid-trial, rerun at once (well inside stale_after_s): its trial is taken over, since
    the process that held it is gone from this machine; the trial's own process, which outlived it, is waited for."""
    args = grid_args(tmp_path, mnist_dir)
    first = start("-m", *args, output=tmp_path / "first.out")
    wait_for("sweeps/*/0/checkpoints/last.ckpt", tmp_path, first)
    first.kill()  # SIGKILL to the sweep alone: its trial, a process of its own, trains on
    first.wait()
    rerun = train("-m", *args, timeout=600)
    printed = rerun.stdout + rerun.stderr
    assert "Trial 0 (resumed" in printed and "Traceback" not in printed
    sweep_dir = only_sweep(tmp_path)
    study = load_study(f"sqlite:///{sweep_dir / 'study.db'}", sweep_dir.name)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert "INCOMPLETE" not in (sweep_dir / "summary.md").read_text()
    assert (sweep_dir / "experiment" / "best.yaml").is_file()
    assert not (sweep_dir / "experiment" / "best_incomplete.yaml").exists()
    assert json.loads((sweep_dir / "0" / "metrics.json").read_text())["epochs"] == 2


@pytest.mark.slow
def test_a_trial_held_by_a_worker_elsewhere_is_named_and_taken_over_when_it_falls_silent(tmp_path, mnist_dir):
    args = grid_args(tmp_path, mnist_dir, "hydra.sweeper.stale_after_s=30")  # more than the rerun takes to start
    first = start("-m", *args, output=tmp_path / "first.out")
    wait_for("sweeps/*/1/checkpoints/last.ckpt", tmp_path, first)  # trial 0 complete, trial 1 running
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) == 130
    sweep_dir = only_sweep(tmp_path)
    # interrupted: the best so far is said to be of an incomplete study, and named so
    assert not (sweep_dir / "experiment" / "best.yaml").exists()
    best = (sweep_dir / "experiment" / "best_incomplete.yaml").read_text()
    assert "# INCOMPLETE study (1 of 2 trials finished; trial 1 still running)" in best
    short = "Best so far of an INCOMPLETE study (1 of 2 trials finished; trial 1 still running)"
    assert short in (tmp_path / "first.out").read_text()
    assert (sweep_dir / "summary.md").read_text().startswith("INCOMPLETE study (1 of 2 trials finished")
    study = load_study(f"sqlite:///{sweep_dir / 'study.db'}", sweep_dir.name)
    held = study.trials[1]
    # as a worker on another machine that has just said it is alive
    storage = study_storage(study)
    storage.set_trial_user_attr(id_of(held), "nnlab:worker", {"host": "node7", "pid": 4242, "started": "1"})
    storage.set_trial_user_attr(id_of(held), "nnlab:heartbeat", time.time())
    rerun = train("-m", *args, timeout=600)
    printed = rerun.stdout + rerun.stderr
    said = re.search(r"Trial 1 is held by process 4242 on node7, last heard from \d+ s ago: waiting for it to end; if "
                     r"that worker has stopped, this one takes the trial over at (\d\d:\d\d:\d\d) "
                     r"\(hydra.sweeper.stale_after_s=30\)", printed)  # fmt: skip
    assert said, printed[-4000:]
    assert printed.index(said.group(0)) < printed.index("Trial 1 (resumed")
    study = load_study(f"sqlite:///{sweep_dir / 'study.db'}", sweep_dir.name)
    errors = [t.user_attrs.get("error") for t in study.trials]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"], (errors, printed[-4000:])
    assert (sweep_dir / "experiment" / "best.yaml").is_file()
    assert not (sweep_dir / "experiment" / "best_incomplete.yaml").exists()  # complete now: the word is gone


@pytest.mark.slow
def test_a_sweep_folder_moved_away_mid_sweep_stops_it_in_one_line_and_leaves_nothing_behind(tmp_path, mnist_dir):
    args = grid_args(tmp_path / "outputs", mnist_dir)
    proc = start("-m", *args, output=tmp_path / "sweep.out")
    wait_for("outputs/sweeps/*/0/checkpoints/last.ckpt", tmp_path, proc)
    (sweep_dir,) = (tmp_path / "outputs" / "sweeps").iterdir()
    moved = tmp_path / "moved"
    sweep_dir.rename(moved)
    assert proc.wait(timeout=120) == 1
    printed = (tmp_path / "sweep.out").read_text()
    errors = [line for line in printed.splitlines() if line.startswith("Error: ")]
    assert f"the sweep folder {sweep_dir} was moved or removed" in errors[-1], printed[-3000:]
    assert all("was moved or removed" in e for e in errors)  # a trial that saw it first says so in one line too
    assert "Traceback" not in printed
    time.sleep(2)  # the stopped trial's last words
    assert not sweep_dir.exists()  # no stray study.db, no trial folder made again
    # continued where it is now
    train("-m", *args, f"hydra.sweep.dir={moved}", timeout=600)
    study = load_study(f"sqlite:///{moved / 'study.db'}", sweep_dir.name)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert not sweep_dir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["study.db", "multirun.yaml", "0"])
def test_a_link_planted_in_a_sweep_folder_is_refused_and_nothing_is_written_through_it(tmp_path, mnist_dir, name):
    victim = tmp_path / "victim"
    victim.write_text("mine")
    sweep_dir = tmp_path / "sweeps" / "planted"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / name).symlink_to(victim)
    proc = sweep(tmp_path, mnist_dir, "model.lr=1e-3,3e-3", "hydra.sweeper.study_name=planted", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
    assert f"sweep folder {sweep_dir} holds 1 symbolic link(s) that nnlab did not make ({name} -> {victim}" in errors[0]
    assert victim.read_text() == "mine" and sorted(p.name for p in sweep_dir.iterdir()) == [name]


@pytest.mark.slow
def test_a_sweep_in_a_folder_of_any_name_runs_and_its_printed_commands_run_when_pasted(tmp_path, mnist_dir):
    from nnlab.commands import override

    log_dir = tmp_path / ODD
    proc = sweep(tmp_path, mnist_dir, "model.lr=1e-3,3e-3", "trainer.max_epochs=1", override("paths.log_dir", log_dir))
    sweep_dir = only_sweep(log_dir)
    assert [r["state"] for r in summary(sweep_dir)] == ["complete", "complete"]
    (reproduce,) = [ln.split("reproduce: ", 1)[1] for ln in proc.stdout.splitlines() if "reproduce: " in ln]
    again = paste(f"{reproduce} {override('hydra.run.dir', tmp_path / 'best')} paths.data_dir={mnist_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "best" / "metrics.json").read_text())["epochs"] == 1
    (sync,) = [ln.split("wandb sync ", 1)[1] for ln in proc.stdout.splitlines() if "upload the whole sweep" in ln]
    words = subprocess.run(["bash", "-c", f"printf '%s\\n' {sync}"], capture_output=True, text=True).stdout.split("\n")
    found = [Path(w) for w in words if w]
    assert len(found) == 2 and all(p.is_dir() and p.parents[2] == sweep_dir for p in found)

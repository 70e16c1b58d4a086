"""Results you can trust and see: replicates with their intervals, seed sweeps summarised, the sweep report in a real
browser, the study read by optuna-dashboard, and the run index (python -m nnlab.runs) over good and damaged runs."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from nnlab.runs import main as runs_main
from nnlab.sweep import Estimate, load_study, mean_curve, replicates_of, welch_p, write_summary
from tests.browser import Browser, open_page, require_chromium, screenshot
from tests.helpers import (
    OPTUNA,
    SWEEP_TINY,
    only_sweep,
    read_wandb_records,
    run_module,
    start,
    sweep,
    train,
)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------------ statistics
def test_mean_sd_and_the_t_interval_are_the_textbook_ones():
    e = Estimate([1.0, 2.0, 3.0])
    assert (e.n, e.mean, e.sd) == (3, 2.0, 1.0)
    low, high = e.ci95
    assert high - 2.0 == pytest.approx(4.302653 / 3**0.5, rel=1e-6)  # t(0.975, 2) = 4.3027
    assert low == pytest.approx(4.0 - high)
    assert Estimate([0.5]).sd is None and Estimate([0.5]).ci95 is None  # one run: no spread to speak of


def test_welch_p_matches_a_worked_example_and_its_edges():
    # Two samples of 3 with means 2 and 5 and variances 1 and 1: t = -3 / sqrt(2/3), df = 4, p = 0.02131
    assert welch_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.021312, abs=1e-5)
    # Unequal variances (5/3 and 100): t = -8.5 / sqrt(5/12 + 100/3) = -1.4631 on Welch-Satterthwaite's 2.05
    # degrees of freedom (at 2, p = 1 - |t| / sqrt(2 + t^2) = 0.2810); the pooled test would say 0.143
    a, b = [10.0, 11.0, 12.0, 13.0], [10.0, 20.0, 30.0]
    assert welch_p(a, b) == pytest.approx(0.27809, abs=1e-4)
    assert welch_p([1.0], [1.0, 2.0]) is None  # too few to test
    assert welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0 and welch_p([1.0, 1.0], [2.0, 2.0]) == 0.0  # no spread


def test_a_seed_sweep_is_summarised_per_configuration(tmp_path):
    """Trials that differ only in `seed` measure one configuration: mean, sd, interval, Welch against the best."""
    study = optuna.create_study(direction="maximize")
    values = {("1e-3", "1"): 0.90, ("1e-3", "2"): 0.92, ("1e-3", "3"): 0.91, ("1e-2", "1"): 0.95,
              ("1e-2", "2"): 0.96, ("1e-2", "3"): 0.90}  # fmt: skip
    dist = {"model.lr": optuna.distributions.CategoricalDistribution(["1e-3", "1e-2"]),
            "seed": optuna.distributions.CategoricalDistribution(["1", "2", "3"])}  # fmt: skip
    for (lr, seed), value in values.items():
        study.add_trial(optuna.trial.create_trial(params={"model.lr": lr, "seed": seed}, distributions=dist,
                                                  value=value))  # fmt: skip
    text = write_summary(study, tmp_path, "val/acc_best")
    rows = {r["overrides"]: r for r in read_csv(tmp_path / "configs.csv")}
    assert set(rows) == {"model.lr=1e-3", "model.lr=1e-2"}
    best, other = rows["model.lr=1e-2"], rows["model.lr=1e-3"]
    assert best["best"] == "*" and best["n"] == "3" and best["seeds"] == "1 2 3"
    e = Estimate([0.95, 0.96, 0.90])
    assert float(best["mean"]) == pytest.approx(e.mean) and float(best["sd"]) == pytest.approx(e.sd)
    assert float(best["ci95_low"]) == pytest.approx(e.ci95[0]) and float(best["ci95_high"]) == pytest.approx(e.ci95[1])
    p = welch_p([0.90, 0.92, 0.91], [0.95, 0.96, 0.90])
    assert float(other["welch_p"]) == pytest.approx(p, abs=1e-4) and p > 0.05 and other["best"] == "≈"
    assert "Over seeds" in text and "Welch t-test at 5%" in text


# -------------------------------------------------------------------------------------------- a replicated grid
@pytest.fixture(scope="session")
def replicated(tmp_path_factory, mnist_dir):
    """2 learning rates x 2 replicates of the tiny MLP: 4 runs, one study, made once for the whole session. pytest-xdist
    The tests that read it run on several workers: the first worker to need the sweep makes it in the session's shared
    temporary folder, under a lock, and the others wait for it and read it."""
    import fcntl
    import types

    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "replicated"
    shared.mkdir(exist_ok=True)
    with open(shared / "making.lock", "w") as lock:  # not .lock: that names a run directory
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "stdout.txt").is_file():
            proc = sweep(shared, mnist_dir, "model.lr=3e-3,1e-9", "hydra.sweeper.replicates=2", "trainer.max_epochs=2")
            (shared / "stdout.txt").write_text(proc.stdout)
    return shared, only_sweep(shared), types.SimpleNamespace(stdout=(shared / "stdout.txt").read_text())


@pytest.mark.slow
def test_every_trial_runs_its_replicates_and_its_value_is_their_mean(replicated):
    _, sweep_dir, proc = replicated
    assert sorted(p.name for p in sweep_dir.iterdir() if (p / "metrics.json").is_file()) == [
        "0-r0", "0-r1", "1-r0", "1-r1",
    ]  # fmt: skip
    study = load_study(f"sqlite:///{sweep_dir / 'study.db'}", sweep_dir.name)
    rows = read_csv(sweep_dir / "summary.csv")
    runs = read_csv(sweep_dir / "runs.csv")
    assert [(r["trial"], r["replicate"], r["seed"], r["state"]) for r in runs] == [
        ("0", "0", "42", "complete"), ("0", "1", "43", "complete"),
        ("1", "0", "42", "complete"), ("1", "1", "43", "complete"),
    ]  # fmt: skip
    for t in study.trials:
        values = []
        tests = []
        for k, info in sorted(replicates_of(t).items()):
            run_dir = sweep_dir / f"{t.number}-r{k}"
            metrics = json.loads((run_dir / "metrics.json").read_text())
            config = (run_dir / "config.yaml").read_text()
            assert f"seed: {42 + k}\n" in config and info["seed"] == 42 + k  # the seed is recorded and used
            assert info["value"] == pytest.approx(metrics["val/acc_best"])
            values.append(metrics["val/acc_best"])
            tests.append(metrics["test/acc"])
        assert t.state == optuna.trial.TrialState.COMPLETE and t.value == pytest.approx(sum(values) / 2)
        assert t.intermediate_values == pytest.approx(mean_curve(t))  # the trial's curve: the replicates' mean
        row = rows[t.number]
        e = Estimate(values)
        assert float(row["value"]) == pytest.approx(e.mean) and row["n"] == "2"
        assert float(row["sd"]) == pytest.approx(e.sd, abs=1e-12)
        assert float(row["test_mean"]) == pytest.approx(sum(tests) / 2)  # the test accuracy beside the objective
        assert float(row["test_sd"]) == pytest.approx(Estimate(tests).sd, abs=1e-12)
    best = [r for r in rows if r["best"] == "*"]
    assert len(best) == 1 and best[0]["overrides"] == "model.lr=0.003"
    other = next(r for r in rows if r["best"] != "*")
    p = welch_p(*(
        [float(r["value"]) for r in runs if r["trial"] == n] for n in (other["trial"], best[0]["trial"])
    ))  # fmt: skip
    assert float(other["welch_p"]) == pytest.approx(p, abs=1e-4) and best[0]["welch_p"] == ""
    assert (other["best"] == "≈") == (p >= 0.05)  # ≈ exactly when Welch cannot tell them apart
    printed = proc.stdout
    assert "Each trial is 2 replicates" in printed and "| trial | replicate | seed |" in printed
    for run_dir in sweep_dir.glob("*-r*"):  # every run draws its curves
        assert (run_dir / "curves.png").stat().st_size > 10_000
    groups = {}  # one W&B run per replicate, all in the study's group
    for path in sweep_dir.glob("*/wandb/offline-run-*/run-*.wandb"):
        for record in read_wandb_records(path):
            if record.WhichOneof("record_type") == "run":
                groups[record.run.run_id] = record.run.run_group
    assert len(groups) == 4 and set(groups.values()) == {sweep_dir.name}


@pytest.mark.slow
def test_the_report_renders_every_plot_in_a_real_browser(replicated, tmp_path):
    _, sweep_dir, proc = replicated
    assert f"Report: {sweep_dir / 'report.html'}" in proc.stdout  # made at the end of the sweep
    plots = {p.stem for p in (sweep_dir / "plots").glob("*.png")}
    # a grid: no optimisation history; one parameter: no importances (both said on the page)
    assert plots == {"replicates", "parallel", "slices", "intermediate", "timeline"}
    page = (sweep_dir / "report.html").read_text()
    markup = re.sub(r"<script>.*?</script>", "<script></script>", page, flags=re.DOTALL)  # the scripts' text aside
    tags = re.findall(r"<(?:script|link|img|iframe)\b[^>]*>", markup)
    assert tags and not [t for t in tags if "src=" in t or "href=" in t]  # self-contained: plotly.js is inlined
    assert "a grid runs its points in a fixed order" in page and "importances need two or more parameters" in page
    # the command makes it again, the same plots
    (sweep_dir / "report.html").unlink()
    run_module("nnlab.report", sweep_dir, timeout=300)
    assert (sweep_dir / "report.html").is_file()
    renders_in_a_browser(sweep_dir / "report.html", plots, tmp_path)


@pytest.mark.slow  # starts a browser
def test_a_search_report_has_its_history_and_importances_and_every_plot_renders(tmp_path):
    """A search (not a grid) with two parameters, a pruned trial and seeds: every plot the report can draw."""
    study = optuna.create_study(direction="maximize", storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s")
    study.set_user_attr("metric", "val/acc_best")
    dist = {"model.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
            "data.batch_size": optuna.distributions.CategoricalDistribution(["64", "128"]),
            "seed": optuna.distributions.CategoricalDistribution(["1", "2"])}  # fmt: skip
    for i in range(8):
        params = {"model.lr": 1e-4 * 3 ** (i % 4), "data.batch_size": ["64", "128"][i % 2], "seed": ["1", "2"][i // 4]}
        curve = {0: 0.5 + 0.05 * i, 1: 0.6 + 0.04 * i}
        pruned = i == 1
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dist, value=None if pruned else 0.7 + 0.03 * i,
            intermediate_values={0: curve[0]} if pruned else curve,
            state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
        ))  # fmt: skip
    from nnlab.report import write_report

    page = write_report(tmp_path, study)
    names = {"history", "importances", "parallel", "slices", "intermediate", "timeline", "replicates"}
    assert {p.stem for p in (tmp_path / "plots").glob("*.png")} == names  # seeds make configurations of 2 runs
    assert "Not drawn" not in page.read_text()
    renders_in_a_browser(page, names, tmp_path)


def renders_in_a_browser(page: Path, names: set[str], tmp_path: Path):
    """The report in headless Chromium: no console message, no error, no network request, and each named plot drawn
    (its SVG and a trace, its full height) and not blank in a screenshot of its box."""
    require_chromium()
    browser = Browser(tmp_path / "profile")
    try:
        session, seen = open_page(browser, page)
        assert seen["console"] == [] and seen["exceptions"] == []  # no console message, no error
        assert seen["requests"] == []  # nothing fetched from a network
        assert {p["id"] for p in seen["plots"]} == {f"plot-{name}" for name in names}
        for plot in seen["plots"]:
            assert plot["rendered"] and plot["traces"] >= 1 and plot["height"] > 300, plot
            shot = screenshot(browser, session, plot, tmp_path / f"{plot['id']}.png")
            assert not blank(shot), f"{plot['id']} is blank in the browser ({shot})"
    finally:
        browser.close()


def blank(png: Path) -> bool:
    """Whether a screenshot is (nearly) one colour: a plot area that drew nothing."""
    import numpy as np
    from matplotlib.image import imread

    pixels = imread(png)[..., :3].reshape(-1, 3)
    background = np.median(pixels, axis=0)
    differs = np.abs(pixels - background).max(axis=1) > 0.1
    return differs.mean() < 0.01 or len(np.unique((pixels * 255).astype(int), axis=0)) < 8


def dashboard_get(app, path: str) -> dict:
    """GET `path` from the WSGI app that optuna-dashboard serves, in this process."""
    from wsgiref.util import setup_testing_defaults

    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (path, status, body[:500])
    return json.loads(body)


@pytest.mark.slow
def test_optuna_dashboard_reads_the_study(replicated):
    from optuna_dashboard import wsgi

    _, sweep_dir, _ = replicated
    storage = f"sqlite:///{sweep_dir / 'study.db'}"
    # The documented command opens the storage before it says it is listening (port 0: any free one).
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    proc = subprocess.Popen(
        [str(dashboard), storage, "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        said = proc.stderr.readline()
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=30)[1]
    assert said.startswith("Listening on http://127.0.0.1:"), said + rest
    # What it serves is read from the app it serves, in this process: in CI, on some runs, connections to it over
    # loopback were refused for minutes while it listened (not understood), and its HTTP server is the standard
    # library's wsgiref, not the part under test.
    app = wsgi(storage)
    studies = dashboard_get(app, "/api/studies")["study_summaries"]
    detail = dashboard_get(app, f"/api/studies/{studies[0]['study_id']}")
    (summary,) = studies
    assert summary["study_name"] == sweep_dir.name
    study = load_study(f"sqlite:///{sweep_dir / 'study.db'}", sweep_dir.name)
    assert [(t["number"], t["state"], t["values"]) for t in detail["trials"]] == [
        (t.number, "Complete", [t.value]) for t in study.trials
    ]
    attrs = {a["key"] for a in detail["trials"][0]["user_attrs"]}
    assert {"replicate:0", "replicate:1", "curve:0", "curve:1"} <= attrs  # the replicates are visible there too


@pytest.mark.slow
def test_the_run_index_lists_filters_diffs_and_survives_damaged_runs(replicated, tmp_path, capsys):
    _, sweep_dir, _ = replicated
    root = tmp_path / "outputs"
    # the whole outputs/ tree, but the report another test rewrites meanwhile (it has no run of its own)
    shutil.copytree(sweep_dir.parent.parent, root, ignore=shutil.ignore_patterns("report.html", "plots"))
    trial_dirs = sorted((root / "sweeps" / sweep_dir.name).glob("*-r*"))
    # damage: a cut metrics.json; garbage run.json with no metrics; a lock left by a killed process; a bare log
    shutil.copytree(trial_dirs[0], root / "2026-12-01" / "cut")
    (root / "2026-12-01" / "cut" / "metrics.json").write_text('{"test/acc": 0.9')
    garbage = root / "2026-12-01" / "garbage"
    shutil.copytree(trial_dirs[1], garbage)
    (garbage / "metrics.json").unlink()
    (garbage / "run.json").write_bytes(os.urandom(64))
    killed = root / "2026-12-01" / "killed"
    shutil.copytree(trial_dirs[2], killed)
    (killed / "metrics.json").unlink()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (killed / ".lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    running = root / "2026-12-01" / "running"
    shutil.copytree(trial_dirs[3], running)
    (running / "metrics.json").unlink()
    (running / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))  # alive: this one
    (root / "2026-12-01" / "bare").mkdir()
    (root / "2026-12-01" / "bare" / "train.log").write_text("")

    assert runs_main(["--root", str(root), "--json"]) == 0
    listed = {Path(r["dir"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert set(listed) == {p.name for p in trial_dirs} | {"cut", "garbage", "killed", "running", "bare"}
    assert {listed[p.name]["state"] for p in trial_dirs} == {"complete"}
    assert listed["cut"]["state"] == "damaged" and "metrics.json unreadable" in listed["cut"]["problems"][0]
    assert listed["garbage"]["state"] == "incomplete" and any("run.json" in p for p in listed["garbage"]["problems"])
    assert listed["killed"]["state"] == "killed" and listed["bare"]["state"] == "incomplete"
    assert listed["running"]["state"] == "running"
    one = listed[trial_dirs[0].name]
    assert one["model"] == "mlp" and one["data"] == "mnist" and one["epochs"] == 2 and one["sweep"] == sweep_dir.name
    assert "model.lr=0.003" in one["overrides"] and "seed=42" in one["overrides"]
    assert not any(o.startswith(("paths.", "sweep.", "run_id")) for o in one["overrides"])

    assert runs_main(["--root", str(root), "--where", "val/acc_best>0.5", "--state", "complete"]) == 0
    table = capsys.readouterr().out
    assert "0-r0" in table and "1-r0" not in table  # the dead learning rate's runs are filtered out
    assert runs_main(["--root", str(root), "--since", "2099-01-01"]) == 0
    assert "match" in capsys.readouterr().out
    assert runs_main(["--root", str(root), "--model", "cnn"]) == 0 and "match" in capsys.readouterr().out
    assert runs_main(["--root", str(root)]) == 0  # the damaged ones are listed and said
    table = capsys.readouterr().out
    assert "damaged !" in table and "! cut: metrics.json unreadable" in table
    assert runs_main(["--root", str(root), "--where", "test/acc>>1"]) == 2
    assert "KEY OP VALUE" in capsys.readouterr().err
    assert runs_main(["--root", str(root), "--since", "yesterday"]) == 2
    assert "give a date (2026-12-01)" in capsys.readouterr().err
    assert runs_main(["diff", trial_dirs[0].name, trial_dirs[3].name, "--root", str(root)]) == 0  # by name
    assert "model.lr: 0.003 -> 1e-09" in capsys.readouterr().out

    assert runs_main(["diff", str(trial_dirs[0]), str(trial_dirs[3]), "--root", str(root)]) == 0
    text = capsys.readouterr().out
    assert "model.lr: 0.003 -> 1e-09" in text and "seed: 42 -> 43" in text and "val/acc_best:" in text
    assert "dirpath" not in text and "run_id" not in text  # where each run lives is not a difference


# ------------------------------------------------------------------------------------------------ interruptions
@pytest.mark.slow
def test_a_sweep_interrupted_mid_replicate_resumes_only_what_is_unfinished(tmp_path, mnist_dir):
    args = [*SWEEP_TINY, f"paths.data_dir={mnist_dir}", f"paths.log_dir={tmp_path}", "hydra.sweeper.replicates=2",
            "trainer.max_epochs=3", "+callbacks.slow._target_=tests.helpers.SlowSteps",
            "+callbacks.slow.seconds=0.2"]  # fmt: skip
    proc = start("-m", *args, output=tmp_path / "sweep.out")  # one configuration, two seeds: nothing swept
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("sweeps/*/0-r1/checkpoints/last.ckpt")):
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "sweep.out").read_text()[-3000:]
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    sweep_dir = only_sweep(tmp_path)
    first = (sweep_dir / "0-r0" / "metrics.json").read_text()
    assert (sweep_dir / "report.html").is_file()  # an interrupted sweep's report: what it has so far
    study = load_study(f"sqlite:///{sweep_dir / 'study.db'}", sweep_dir.name)
    (t,) = study.trials
    assert t.state.name == "RUNNING" and replicates_of(t)[0]["state"] == "complete"
    assert replicates_of(t)[1]["state"] == "running" and not (sweep_dir / "0-r1" / "metrics.json").exists()

    rerun = train("-m", *args, timeout=600)
    said = rerun.stdout + rerun.stderr
    assert "Trial 0 replicate 1 (seed=43) (resumed" in said and "Trial 0 replicate 0" not in said
    assert (sweep_dir / "0-r0" / "metrics.json").read_text() == first  # the finished replicate is left alone
    resumed = json.loads((sweep_dir / "0-r1" / "metrics.json").read_text())
    assert resumed["resumed_from"].endswith("last.ckpt") and resumed["epochs"] == 3
    (t,) = load_study(f"sqlite:///{sweep_dir / 'study.db'}", sweep_dir.name).trials
    values = [json.loads((sweep_dir / d / "metrics.json").read_text())["val/acc_best"] for d in ("0-r0", "0-r1")]
    assert t.state.name == "COMPLETE" and t.value == pytest.approx(sum(values) / 2)


@pytest.mark.slow
def test_pruning_compares_replicate_means_and_a_pruned_trial_starts_no_more_replicates(tmp_path, mnist_dir):
    sweep(tmp_path, mnist_dir, *OPTUNA, "hydra.sweeper.n_trials=3", "hydra.sweeper.replicates=2")
    sweep_dir = only_sweep(tmp_path)
    study = load_study(f"sqlite:///{sweep_dir / 'study.db'}", sweep_dir.name)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    pruned = study.trials[2]
    assert set(replicates_of(pruned)) == {0} and replicates_of(pruned)[0]["state"] == "pruned"
    assert not (sweep_dir / "2-r1").exists()  # its second replicate never started
    for t in study.trials[:2]:
        curves = [t.user_attrs[f"curve:{k}"] for k in (0, 1)]
        for step, value in t.intermediate_values.items():
            assert value == pytest.approx((curves[0][str(step)] + curves[1][str(step)]) / 2)
    assert (sweep_dir / "plots" / "history.png").is_file() and (sweep_dir / "plots" / "intermediate.png").is_file()


@pytest.mark.slow
def test_resume_latest_continues_the_last_stopped_run_of_the_same_command(tmp_path, mnist_dir, capsys):
    args = [*SWEEP_TINY, f"paths.data_dir={mnist_dir}", f"paths.log_dir={tmp_path}", "trainer.max_epochs=2",
            "+callbacks.stop._target_=tests.helpers.SignalAt", "+callbacks.stop.step=3"]  # fmt: skip
    stopped = train(*args, check=False)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert runs_main(["--root", str(tmp_path), "--json"]) == 0
    (run,) = json.loads(capsys.readouterr().out)
    assert run["state"] == "stopped" and run["epochs"] == 0

    other = train(*args, "seed=7", "resume=latest", check=False)  # another command: nothing of its own to resume
    assert other.returncode == 1 and "resume=latest: no stopped or killed run of this command" in other.stderr
    assert "Traceback" not in other.stderr

    poison = ["+callbacks.poison._target_=tests.helpers.PoisonWeights", "+callbacks.poison.epoch=0"]
    failed = train(*args[:6], "trainer.max_epochs=1", "seed=3", *poison, check=False)  # SWEEP_TINY, data, outputs
    assert failed.returncode != 0
    assert runs_main(["--root", str(tmp_path), "--json", "--state", "failed"]) == 0
    (bad,) = json.loads(capsys.readouterr().out)
    assert "seed=3" in bad["overrides"] and bad["problems"] and bad["dir"] != run["dir"]

    resumed = train(*args, "resume=latest")
    assert f"continuing the stopped run in {run['dir']}" in resumed.stderr
    metrics = json.loads((Path(run["dir"]) / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["resumed_from"].endswith("last.ckpt")
    assert len(list(tmp_path.glob("*/*/run.json"))) == 2  # the failed run's and this one's: no third
    assert runs_main(["--root", str(tmp_path), "--json"]) == 0
    assert [r["state"] for r in json.loads(capsys.readouterr().out)] == ["complete", "failed"]  # oldest first


@pytest.mark.slow
def test_a_failed_replicate_fails_its_trial_and_another_replicate_count_is_refused(tmp_path, mnist_dir):
    poison = ["+callbacks.poison._target_=tests.helpers.PoisonWeights", "+callbacks.poison.epoch=0", "logger=csv"]
    sweep(tmp_path, mnist_dir, *poison, "trainer.max_epochs=1", "hydra.sweeper.replicates=2")
    sweep_dir = only_sweep(tmp_path)
    (row,) = read_csv(sweep_dir / "summary.csv")
    assert row["state"] == "fail" and row["error"].startswith("replicate 0: ")
    assert not (sweep_dir / "0-r1").exists()  # a failed trial starts no more replicates
    again = sweep(tmp_path, mnist_dir, *poison, "trainer.max_epochs=1", "hydra.sweeper.replicates=3", check=False)
    assert again.returncode != 0
    assert "hydra.sweeper.replicates=2" in again.stderr and "hydra.sweeper.replicates=3" in again.stderr


def test_a_replicate_reports_the_mean_of_the_replicates_and_stops_once_a_sibling_got_the_trial_pruned(tmp_path):
    from nnlab.pruning import PruneTrial

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="s", direction="maximize")
    study.set_user_attr("pruner", None)
    trial = study.ask()
    first, second = PruneTrial(url, "s", trial.number, replicate=0), PruneTrial(url, "s", trial.number, replicate=1)
    assert first.report_replicate(0.50, 0) is False and second.report_replicate(0.70, 0) is False
    assert second.report_replicate(0.80, 1) is False  # epoch 1: only the second replicate has reached it
    now = load_study(url, "s").trials[0]
    assert now.intermediate_values == {0: pytest.approx(0.60), 1: pytest.approx(0.80)}
    study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)  # as the first replicate would, pruned
    assert first.report_replicate(0.55, 1) is True  # the sibling stops at its next validation, as pruned


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, said",
    [
        ([], "nothing to sweep"),
        (["model.lr=1e-3,2e-3", "hydra.sweeper.replicates=0"], "hydra.sweeper.replicates=0: a whole number of runs"),
        (["model.lr=1e-3,2e-3", "hydra.sweeper.replicates=two"], "hydra.sweeper.replicates=two: a whole number"),
        ([*OPTUNA, "hydra.sweeper.n_trials=abc"], "hydra.sweeper.n_trials=abc: a whole number of trials, at least 1"),
        (["model.lr=1e-3,2e-3", "trainer.max_epochs=1.5"], "trainer.max_epochs=1.5: a whole number of epochs"),
        (["model.lr=1e-3,2e-3", "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs=0: must be at least 1"),
    ],
)
def test_a_sweep_setting_that_cannot_work_is_one_line(tmp_path, mnist_dir, overrides, said):
    proc = sweep(tmp_path, mnist_dir, *overrides, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert proc.returncode == 1 and len(errors) == 1 and said in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr


# ---------------------------------------------------------------------------------------- moved, empty, mistyped
@pytest.mark.slow
def test_the_report_of_a_moved_sweep_folder_finds_its_runs_where_they_are(replicated, tmp_path):
    _, sweep_dir, _ = replicated
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(sweep_dir, moved)
    run_module("nnlab.report", moved, timeout=300)
    runs = read_csv(moved / "runs.csv")
    assert all(Path(r["run_dir"]).parent == moved and Path(r["run_dir"]).is_dir() for r in runs)
    assert [r["test_mean"] for r in read_csv(moved / "summary.csv")] == [
        r["test_mean"] for r in read_csv(sweep_dir / "summary.csv")
    ]  # read from the runs' metrics.json where they are now
    page = (moved / "report.html").read_text()
    assert str(sweep_dir) not in page.split("<script>")[0] and '<a href="0-r0/">0-r0</a>' in page


def test_a_report_of_a_database_holding_no_study_says_so(tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    optuna.storages.RDBStorage(f"sqlite:///{sweep_dir / 'study.db'}")  # tables, no study: stopped before it began
    out = run_module("nnlab.report", sweep_dir, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"Error: {sweep_dir / 'study.db'} holds no study: the sweep stopped before its study began" in out.stderr
    assert "None" not in out.stderr


def test_report_plots_read_grid_values_as_numbers_and_show_every_trial():
    """A grid's values are its override strings ('1e-3'); the plots get numbers, and no trial is drawn white."""
    import optuna.visualization as V
    from plotly.colors import unlabel_rgb

    from nnlab.report import plottable, visible

    study = optuna.create_study(direction="maximize")
    lr = optuna.distributions.CategoricalDistribution(["1e-3", "3e-3", "1e-2", "3e-2"])
    for value, acc in (("1e-3", 0.9), ("3e-3", 0.95), ("1e-2", 0.7), ("3e-2", 0.1)):
        study.enqueue_trial({"model.lr": value})
        study.tell(study.ask({"model.lr": lr}), acc)
    drawn = plottable(study)
    assert [t.params["model.lr"] for t in drawn.trials] == [1e-3, 3e-3, 1e-2, 3e-2]
    assert drawn.trials[0].distributions["model.lr"].log  # learning rates over a factor of 30: a log axis
    parallel = visible(V.plot_parallel_coordinate(drawn))
    lines = [unlabel_rgb(t.line.color) for t in parallel.data if t.mode == "lines"]
    assert len(lines) == 4 and all(sum(c) / 3 < 215 for c in lines)  # the worst is light blue, not white (255)
    points = visible(V.plot_slice(drawn)).data[0]
    assert all(isinstance(x, float) for x in points.x) and points.marker.colorscale[0][1] == "#6baed6"
    assert study.trials[0].params["model.lr"] == "1e-3"  # the stored study as it was


def test_run_index_filters_say_what_a_value_must_be(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"test/acc": 0.991, "epochs": 3}))
    for where, said in (
        ("test/acc>abc", "'abc' is not a number; test/acc > compares numbers"),
        ("test/acc>=99", 'test/acc is a fraction (the table shows 0.9912 as 99.12%): write "test/acc>=0.99"'),
        ("epochs<x%", "'x%' is not a number"),
    ):
        assert runs_main(["--root", str(tmp_path), "--where", where]) == 2
        err = capsys.readouterr().err
        assert err.startswith("Error: --where") and said in err, err
    assert runs_main(["--root", str(tmp_path), "--where", "test/acc>=99%"]) == 0
    assert "99.10%" in capsys.readouterr().out  # 99% is 0.99
    assert runs_main(["--root", str(tmp_path), "--where", "test/acc>99.5%"]) == 0
    assert "match" in capsys.readouterr().out

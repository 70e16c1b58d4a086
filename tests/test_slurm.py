"""train.py on a real SLURM cluster started by the test tooling (tests/slurm_cluster.py)."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, read_wandb_records, start, user_env

# One cluster for these tests: pytest-xdist gives them all to the same worker, which starts it once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]
TINY = ["model=mlp", "data.val_size=100", "data.batch_size=64", "data.eval_batch_size=100"]
# What scripts/slurm/*.sbatch ask for: USR2 before the limit, requeueable, one output file across restarts.
PREEMPTIBLE = ["#SBATCH --signal=USR2@120", "#SBATCH --requeue", "#SBATCH --open-mode=append"]


def job_env(slurm, **more) -> dict:
    return user_env({**slurm, **more})


def sbatch(slurm, tmp_path, body: str, *sbatch_options: str, wait=False) -> tuple[str, int]:
    """Submit a batch script (a 10-minute limit, output in tmp_path/slurm-<job>.out, then body); returns the job id
    and, with wait=True, the job's exit code once it ended (else 0)."""
    script = tmp_path / "job.sbatch"
    script.write_text(f"#!/bin/bash\n#SBATCH --time=10\n#SBATCH --output={tmp_path}/slurm-%j.out\n{body}\n")
    job = (
        subprocess.run(
            ["sbatch", "--parsable", *sbatch_options, str(script)],
            cwd=ROOT,
            env=job_env(slurm),
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split(";")[0]
    )
    return job, ended(slurm, job) if wait else 0


def ended(slurm, job: str) -> int:
    """Wait for the job to end; its exit code. (Polled here: sbatch --wait asks after 2, 10, 42 s..., so a job that
    ends after 11 s returns after 42.)"""
    final_state(slurm, job)
    return int(re.search(r"ExitCode=(\d+)", slurm_run(slurm, "scontrol", "-o", "show", "job", job))[1])


def submit(slurm, tmp_path, body: str, *sbatch_options: str) -> tuple[int, str]:
    """Submit a batch script and wait for it; returns its exit code and its output file's text."""
    job, rc = sbatch(slurm, tmp_path, body, *sbatch_options, wait=True)
    return rc, (tmp_path / f"slurm-{job}.out").read_text()


def wait_for(what: str, ready, timeout: float = 300, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while not (value := ready()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"the sweep ended (exit code {proc.returncode}) before {what}:\n{proc.stdout.read()[-5000:]}"
            )
        time.sleep(0.3)
    return value


def wait_for_job(slurm, job: str, out, what: str, ready, timeout: float = 300):
    """wait_for, failing at once with the job's output if the job ends first."""

    def ready_or_ended():
        if value := ready():
            return value
        if job_state(slurm, job) in ENDED:
            raise AssertionError(f"job {job} ended before {what}:\n{out.read_text()[-5000:] if out.exists() else ''}")

    return wait_for(what, ready_or_ended, timeout)


def slurm_run(slurm, *cmd) -> str:
    return subprocess.run(cmd, env={**os.environ, **slurm}, capture_output=True, text=True, check=True).stdout


def job_state(slurm, job: str) -> str:
    """The job's state in the queue, else (finished) in the accounting database."""
    state = slurm_run(slurm, "squeue", "-h", "-j", job, "-o", "%T").strip()
    state = state or slurm_run(slurm, "sacct", "-n", "-X", "-P", "-j", job, "-o", "State").strip()
    return state.split(" ")[0]  # "CANCELLED by 0" -> CANCELLED


def restart_now(slurm, job: str):
    """SLURM makes a requeued job wait about two minutes before it may start again: let it start in 3 s. (Started
    within the second its previous run was killed in, slurmd refuses the job: "Job credential revoked".)"""
    wait_for(f"job {job} to be queued again", lambda: job_state(slurm, job) == "PENDING", 120)
    slurm_run(slurm, "scontrol", "update", f"JobId={job}", "StartTime=now+3")


def final_state(slurm, job: str) -> str:
    """Wait for the job to end (requeues included); its state."""
    return wait_for(f"job {job} to end", lambda: (state := job_state(slurm, job)) in ENDED and state, 300)


ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")


def newer_checkpoint(path, than: float) -> bool:
    return path.is_file() and path.stat().st_mtime > than


def test_two_task_ddp_job_started_by_srun(slurm, tmp_path, mnist_dir):
    run_dir = tmp_path / "run"
    train = [
        sys.executable,
        str(ROOT / "train.py"),
        *TINY,
        "trainer=ddp_cpu",
        "trainer.max_epochs=2",
        f"hydra.run.dir={run_dir}",
        f"paths.data_dir={mnist_dir}",
    ]
    rc, out = submit(
        slurm,
        tmp_path,
        "srun " + " ".join(train),
        "--nodes=1",
        "--ntasks-per-node=2",
        "--cpus-per-task=1",
        "--nodelist=n2",
    )  # srun from the second node's namespace
    assert rc == 0, out[-5000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["test/acc"] > 0.3
    info = json.loads((run_dir / "run.json").read_text())
    assert info["slurm"]["ntasks"] == "2" and info["host"] == "n2"
    assert out.count("Initializing distributed: GLOBAL_RANK: ") == 2  # the two srun tasks, nothing spawned
    assert "MEMBER: 2/2" in out
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # one W&B run, rank zero's


def test_tasks_that_do_not_match_the_trainer_fail_before_training(slurm, tmp_path, mnist_dir):
    train = f"{sys.executable} {ROOT / 'train.py'} {' '.join(TINY)} trainer=ddp_cpu paths.data_dir={mnist_dir}"
    rc, out = submit(
        slurm, tmp_path, f"srun {train} trainer.devices=1 hydra.run.dir={tmp_path}/a", "--ntasks-per-node=2"
    )
    assert rc != 0 and "--ntasks-per-node=1" in out and "trainer.devices=2" in out
    # A real two-node allocation (one task on each node) for a trainer that wants 2 devices on 1 node
    rc, out = submit(slurm, tmp_path, f"srun {train} hydra.run.dir={tmp_path}/c", "--nodes=2", "--ntasks-per-node=1")
    assert rc != 0 and "2 node(s) x 1 task(s) per node" in out and "trainer.num_nodes=1 x trainer.devices=2" in out
    assert "--nodes=1 --ntasks-per-node=2" in out and "trainer.num_nodes=2 trainer.devices=1" in out
    rc, out = submit(slurm, tmp_path, f"{train} hydra.run.dir={tmp_path}/b", "--ntasks=2")
    assert rc != 0 and f"start it with `srun python {ROOT / 'train.py'} ...`" in out
    assert not (tmp_path / "a" / "checkpoints").exists()


# scripts/slurm/multi_node.sbatch's GPU request taken off for this CPU-only cluster: 2 nodes x 1 task, 1 CPU each.
ON_CPU_NODES = ["--gpus-per-node=0", "--ntasks-per-node=1", "--cpus-per-task=1", "--mem=2G", "--time=10"]


def test_a_multi_node_job_trains_one_model_on_both_nodes_and_resumes_on_both_after_a_requeue(
    slurm, tmp_path, mnist_dir
):
    """scripts/slurm/multi_node.sbatch as written (trainer=ddp_cpu, one device per node): one rank on n1, one on n2,
    one run directory and W&B run, the same weights on both ranks; its requeue signal requeues the job, which resumes
    on both nodes from last.ckpt and ends at the step an uninterrupted run ends at."""
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    env = job_env(slurm, NNLAB_DATA_DIR=str(mnist_dir), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    job = subprocess.run(
        [
            "sbatch",
            "--parsable",
            *ON_CPU_NODES,
            f"--output={tmp_path}/slurm-%j.out",
            str(ROOT / "scripts" / "slurm" / "multi_node.sbatch"),
            *TINY,
            "trainer=ddp_cpu",
            "trainer.max_epochs=4",
            "+callbacks.slow._target_=tests.helpers.SlowSteps",
            "+callbacks.slow.seconds=0.25",
            f"hydra.run.dir={run}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    wait_for_job(slurm, job, tmp_path / f"slurm-{job}.out", "the first checkpoint", last.is_file)
    slurm_run(slurm, "scancel", "--signal=USR2", job)
    restart_now(slurm, job)
    state = final_state(slurm, job)

    out = (tmp_path / f"slurm-{job}.out").read_text()
    assert state == "COMPLETED", out[-5000:]
    for rank, node in ((0, "n1"), (1, "n2")):
        assert out.count(f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2") == 2  # both starts
        assert f"rank {rank}/2 on {node}: weights " in out
    digests = re.findall(r"rank \d/2 on n\d: weights (\w+)", out)
    assert len(digests) == 2 and len(set(digests)) == 1  # fit ended once, with one model on both ranks
    assert out.count(f"requeued SLURM job {job}") == 1 and out.count(f"SLURM restarted job {job}") == 2
    info = json.loads((run / "run.json").read_text())
    assert info["slurm"]["nnodes"] == "2" and info["slurm"]["restart_count"] == "1"
    assert info["torch_threads"]["threads"] == 1  # --cpus-per-task=1
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 4
    assert torch.load(last, weights_only=True)["global_step"] == 4 * 4  # 500 images / 64 / 2 ranks: 4 steps an epoch
    assert len({d.name.rsplit("-", 1)[1] for d in (run / "wandb").glob("offline-run-*")}) == 1
    assert sorted(p.name for p in run.glob("train*.log")) == ["train.log", "train.rank1.log"]


def test_a_sweep_through_the_slurm_launcher_runs_its_trials_as_one_job_array(slurm, tmp_path, mnist_dir):
    """Each trial a two-node DDP job (hydra.launcher.nodes=2, one task per node), the trials one job array."""
    env = job_env(slurm)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.timeout_min=10",
            "hydra.launcher.nodes=2",
            "hydra.launcher.cpus_per_task=1",
            "trainer=ddp_cpu",
            "trainer.devices=1",
            "trainer.num_nodes=2",
            *TINY,
            "trainer.max_epochs=1",
            "model.lr=1e-3,3e-3",
            f"paths.data_dir={mnist_dir}",
            f"paths.log_dir={tmp_path}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    assert [line.split(",")[2] for line in (sweep_dir / "summary.csv").read_text().splitlines()[1:]] == [
        "complete",
        "complete",
    ]
    tasks = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and "_" in p.name)
    assert len(tasks) == 2 and len({t.split("_")[0] for t in tasks}) == 1  # one array: <job>_0, <job>_1
    for trial in ("0", "1"):
        info = json.loads((sweep_dir / trial / "run.json").read_text())
        assert info["slurm"]["job_id"] and info["slurm"]["nnodes"] == "2"
        assert (sweep_dir / trial / "metrics.json").is_file() and (sweep_dir / trial / "train.rank1.log").is_file()
        assert len(list((sweep_dir / trial / "wandb").glob("offline-run-*"))) == 1
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").glob("*/*_log.out"))
    assert {"n1", "n2"} <= set(re.findall(r"rank \d/2 on (n\d): weights", logs))


def test_replicates_of_a_grid_go_to_slurm_as_one_job_array(slurm, tmp_path, mnist_dir):
    """2 trials x 2 replicates: four one-task jobs in one array, each replicate with its own seed and directory."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm", "hydra.launcher.timeout_min=10",
         "hydra.launcher.cpus_per_task=1", *TINY, "trainer.max_epochs=1", "model.lr=1e-3,3e-3",
         "hydra.sweeper.replicates=2", f"paths.data_dir={mnist_dir}", f"paths.log_dir={tmp_path}"],
        cwd=ROOT, env=job_env(slurm), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    with open(sweep_dir / "runs.csv", newline="") as f:
        runs = [(r["trial"], r["replicate"], r["seed"], r["state"]) for r in csv.DictReader(f)]
    assert runs == [(t, k, str(42 + int(k)), "complete") for t in ("0", "1") for k in ("0", "1")]
    tasks = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and "_" in p.name)
    assert len(tasks) == 4 and len({t.split("_")[0] for t in tasks}) == 1  # one array: <job>_0 .. <job>_3
    for run in ("0-r0", "0-r1", "1-r0", "1-r1"):
        info = json.loads((sweep_dir / run / "run.json").read_text())
        assert (
            info["slurm"]["job_id"] and f"seed: {42 + int(run[-1])}\n" in (sweep_dir / run / "config.yaml").read_text()
        )


def test_sweep_workers_of_a_job_array_share_one_study(slurm, tmp_path, mnist_dir):
    """scripts/slurm/sweep_worker.sbatch as written, with the GPU request taken off for this CPU-only cluster."""
    env = job_env(slurm, STUDY_STORAGE=str(tmp_path / "study.journal"), NNLAB_DATA_DIR=str(mnist_dir))
    job = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--array=0-1",
            "--gpus-per-node=0",
            "--cpus-per-task=1",
            "--mem=3G",
            "--time=10",
            f"--output={tmp_path}/slurm-%A_%a.out",
            str(ROOT / "scripts" / "slurm" / "sweep_worker.sbatch"),
            "hydra/sweeper=optuna",
            "model.lr=tag(log,interval(1e-3,1e-2))",
            "hydra.sweeper.n_trials=4",
            "hydra.sweeper.study_name=array",
            *TINY,
            "trainer.max_epochs=1",
            "logger=csv",
            f"paths.log_dir={tmp_path}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    codes = [ended(slurm, f"{job}_{task}") for task in (0, 1)]
    outputs = [p.read_text() for p in sorted(tmp_path.glob("slurm-*_*.out"))]
    assert codes == [0, 0] and len(outputs) == 2, "".join(o[-3000:] for o in outputs)
    from nnlab.sweep import load_study

    study = load_study(str(tmp_path / "study.journal"), "array")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    ran = [set(re.findall(r"Trial (\d+) complete:", out)) for out in outputs]
    assert all(ran) and not ran[0] & ran[1] and len(ran[0] | ran[1]) == 4  # both workers, never the same trial
    hosts = {json.loads(info.read_text())["host"] for info in tmp_path.glob("sweeps/array/*/run.json")}
    assert hosts == {"n1", "n2"}  # the array's two workers ran on both nodes


def test_a_job_signalled_before_its_limit_or_requeued_resumes_into_the_same_run(slurm, tmp_path, mnist_dir):
    """The signal sbatch --signal=USR2@<lead> sends before the time limit (delivered here with scancel --signal, as
    SLURM would), then `scontrol requeue` (what a preemption in requeue mode does): each time the job saves its
    checkpoint, goes back to the queue, and resumes in the same directory and W&B run."""
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    job, _ = sbatch(
        slurm,
        tmp_path,
        "\n".join(
            [
                *PREEMPTIBLE,
                "#SBATCH --cpus-per-task=1",
                f"srun {sys.executable} {ROOT / 'train.py'} {' '.join(TINY)} trainer.max_epochs=6 "
                f"paths.data_dir={mnist_dir} "
                f"+callbacks.slow._target_=tests.helpers.SlowSteps +callbacks.slow.seconds=0.25 hydra.run.dir={run}",
            ]
        ),
    )

    wait_for("the first checkpoint", last.is_file)
    signalled = time.time()
    slurm_run(slurm, "scancel", "--signal=USR2", job)
    restart_now(slurm, job)
    wait_for("a checkpoint after the first restart", lambda: newer_checkpoint(last, signalled + 5))
    requeued = time.time()
    slurm_run(slurm, "scontrol", "requeue", job)
    restart_now(slurm, job)
    state = final_state(slurm, job)

    out = (tmp_path / f"slurm-{job}.out").read_text()
    assert state == "COMPLETED", out[-5000:]
    assert "SIGUSR2 received: training stopped" in out and f"requeued SLURM job {job}" in out
    assert "SIGTERM received: training stopped" in out and out.count(f"SLURM restarted job {job}") == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 6 and metrics["resumed_from"] == str(last)
    assert json.loads((run / "run.json").read_text())["slurm"]["restart_count"] == "2"
    assert torch.load(last, weights_only=True)["global_step"] == 6 * 8  # 500 images / 64: no batch lost or repeated
    assert last.stat().st_mtime > requeued
    # One W&B run: three offline segments with one id (wandb sync joins them); the last one ends with exit code 0.
    segments = sorted((run / "wandb").glob("offline-run-*"))
    assert len(segments) == 3 and len({d.name.rsplit("-", 1)[1] for d in segments}) == 1
    (last_file,) = segments[-1].glob("run-*.wandb")
    exits = [r.exit.exit_code for r in read_wandb_records(last_file) if r.WhichOneof("record_type") == "exit"]
    assert exits == [0]


def test_a_two_task_ddp_job_stops_at_one_step_on_every_rank_and_requeues_once(slurm, tmp_path, mnist_dir):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    job, _ = sbatch(
        slurm,
        tmp_path,
        "\n".join(
            [
                *PREEMPTIBLE,
                "#SBATCH --ntasks-per-node=2",
                "#SBATCH --cpus-per-task=1",
                f"srun {sys.executable} {ROOT / 'train.py'} {' '.join(TINY)} trainer=ddp_cpu trainer.max_epochs=4 "
                f"paths.data_dir={mnist_dir} "
                "+callbacks.slow._target_=tests.helpers.SlowSteps +callbacks.slow.seconds=0.25 "
                f"hydra.run.dir={run}",
            ]
        ),
    )
    wait_for("the first checkpoint", last.is_file)
    slurm_run(slurm, "scancel", "--signal=USR2", job)
    restart_now(slurm, job)
    state = final_state(slurm, job)
    out = (tmp_path / f"slurm-{job}.out").read_text()
    assert state == "COMPLETED", out[-5000:]
    assert out.count(f"requeued SLURM job {job}") == 1  # rank 0 only
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 4
    assert torch.load(last, weights_only=True)["global_step"] == 4 * 4  # 500 images / 64 / 2 ranks: 4 steps an epoch
    assert len({d.name.rsplit("-", 1)[1] for d in (run / "wandb").glob("offline-run-*")}) == 1


def sweep_in_background(slurm, tmp_path, mnist_dir, *overrides):
    return start(
        "-m", "hydra/launcher=slurm", "hydra.launcher.timeout_min=10", *TINY, f"paths.data_dir={mnist_dir}",
        f"paths.log_dir={tmp_path}", "+callbacks.slow._target_=tests.helpers.SlowSteps", "+callbacks.slow.seconds=0.25",
        *overrides, env=slurm,
    )  # fmt: skip


def trial_job(sweep: subprocess.Popen, log_dir, trial: int) -> str:
    """The SLURM job id of a sweep's trial, once the trial has started (its run.json)."""

    def job():
        for info in log_dir.glob(f"sweeps/*/{trial}/run.json"):
            facts = json.loads(info.read_text())["slurm"]  # a task of an array is <array>_<task> to scancel
            return f"{facts['array_job_id']}_{facts['array_task_id']}" if "array_job_id" in facts else facts["job_id"]

    return wait_for(f"trial {trial} to start", job, proc=sweep)


def test_a_launcher_trial_requeues_itself_on_submitits_signal(slurm, tmp_path, mnist_dir):
    """Under hydra/launcher=slurm the trial, not submitit, owns the requeue: the trial answers the signal submitit
    asked SLURM for (USR2, signal_delay_s before the limit), and the sweep waits for the resumed job's result."""
    sweep = sweep_in_background(
        slurm,
        tmp_path,
        mnist_dir,
        "trainer.max_epochs=4",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=1",
        "model.lr=interval(1e-3,2e-3)",
    )
    last = wait_for(
        "the trial's first checkpoint",
        lambda: next(tmp_path.glob("sweeps/*/0/checkpoints/last.ckpt"), None),
        proc=sweep,
    )
    job = trial_job(sweep, tmp_path, 0)
    slurm_run(slurm, "scancel", "--signal=USR2", job)
    restart_now(slurm, job)
    out = sweep.communicate(timeout=300)[0]
    assert sweep.returncode == 0, out[-5000:]
    sweep_dir = last.parent.parent.parent
    assert (sweep_dir / "summary.csv").read_text().splitlines()[1].split(",")[2] == "complete"
    trial = last.parent.parent
    assert json.loads((trial / "metrics.json").read_text())["epochs"] == 4
    assert json.loads((trial / "run.json").read_text())["slurm"]["restart_count"] == "1"
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").glob("*/*_log.*"))
    assert f"requeued SLURM job {job}" in logs and "Caught signal" not in logs  # submitit's handler never ran
    assert len({d.name.rsplit("-", 1)[1] for d in (trial / "wandb").glob("offline-run-*")}) == 1


def test_a_cancelled_trial_fails_alone_and_an_interrupted_sweep_cancels_its_jobs(slurm, tmp_path, mnist_dir):
    """SLURM accounting tells submitit that a job ended without a result: that trial fails, its array goes on. An
    interrupted sweep cancels the jobs it submitted: nothing is left running that a rerun would resume twice."""
    sweep = sweep_in_background(slurm, tmp_path, mnist_dir, "trainer.max_epochs=3", "model.lr=1e-3,2e-3")
    cancelled = trial_job(sweep, tmp_path, 0)
    wait_for("trial 0's first checkpoint", lambda: any(tmp_path.glob("sweeps/*/0/checkpoints/last.ckpt")), proc=sweep)
    slurm_run(slurm, "scancel", cancelled)  # SIGTERM: the trial checkpoints and exits without a result
    out = sweep.communicate(timeout=300)[0]
    assert sweep.returncode == 0, out[-5000:]
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    rows = [line.split(",") for line in (sweep_dir / "summary.csv").read_text().splitlines()[1:]]
    assert [r[2] for r in rows] == ["fail", "complete"], out[-3000:]
    assert f"SLURM job {cancelled}" in out and "CANCELLED" in out

    interrupted = tmp_path / "interrupted"
    sweep = sweep_in_background(slurm, interrupted, mnist_dir, "trainer.max_epochs=20", "model.lr=1e-3,2e-3")
    jobs = [trial_job(sweep, interrupted, 0), trial_job(sweep, interrupted, 1)]
    sweep.send_signal(signal.SIGTERM)
    out = sweep.communicate(timeout=120)[0]
    assert sweep.returncode == 128 + signal.SIGTERM and "cancelling SLURM job" in out, out[-3000:]
    assert "Interrupted; resume with the same command" in out
    wait_for("the cancelled jobs to end", lambda: all(job_state(slurm, j) == "CANCELLED" for j in jobs), 120)


def test_a_sweep_worker_signalled_before_its_limit_requeues_itself_and_resumes_its_trial(slurm, tmp_path, mnist_dir):
    """scripts/slurm/sweep_worker.sbatch gets USR2 itself (--signal=B:USR2@120; here scancel --batch): it stops its
    trial (which checkpoints), releases it and requeues; the restarted worker resumes that trial and ends the study."""
    env = job_env(slurm, STUDY_STORAGE=str(tmp_path / "study.journal"), NNLAB_DATA_DIR=str(mnist_dir))
    job = (
        subprocess.run(
            [
                "sbatch",
                "--parsable",
                "--array=0",
                "--gpus-per-node=0",
                "--cpus-per-task=1",
                "--mem=3G",
                "--time=10",
                f"--output={tmp_path}/slurm-%A_%a.out",
                str(ROOT / "scripts" / "slurm" / "sweep_worker.sbatch"),
                "model.lr=1e-3,2e-3",
                "hydra.sweeper.study_name=requeued",
                *TINY,
                "trainer.max_epochs=3",
                "logger=csv",
                "+callbacks.slow._target_=tests.helpers.SlowSteps",
                "+callbacks.slow.seconds=0.25",
                f"paths.log_dir={tmp_path}",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        + "_0"
    )
    first = tmp_path / "sweeps" / "requeued" / "0"
    wait_for("trial 0's first checkpoint", (first / "checkpoints" / "last.ckpt").is_file)
    slurm_run(slurm, "scancel", "--batch", "--signal=USR2", job)
    restart_now(slurm, job)
    state = final_state(slurm, job)
    (out,) = [p.read_text() for p in tmp_path.glob("slurm-*_0.out")]
    assert state == "COMPLETED", out[-5000:]
    assert f"requeued SLURM job {job}" in out and "Trial 0 (resumed" in out
    from nnlab.sweep import load_study

    study = load_study(str(tmp_path / "study.journal"), "requeued")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    metrics = json.loads((first / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["resumed_from"].endswith("last.ckpt")


def test_a_lead_time_not_under_the_time_limit_is_refused_before_anything_is_submitted(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.timeout_min=2",
            "model=mlp",
            "model.lr=1e-3,2e-3",
            f"paths.log_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "hydra.launcher.signal_delay_s=120 is not under hydra.launcher.timeout_min=2 (120 s)" in proc.stderr
    assert not list(tmp_path.glob("sweeps/*/.submitit"))

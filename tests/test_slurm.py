"""train.py on a real SLURM cluster started by the test tooling (tests/slurm_cluster.py)."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow
TINY = ["model=mlp", "data.val_size=100", "data.batch_size=64", "data.eval_batch_size=100"]


def submit(slurm, tmp_path, body: str, *sbatch_options: str, timeout=600) -> tuple[int, str]:
    """sbatch --wait a batch script; returns its exit code and its output file's text."""
    script = tmp_path / "job.sbatch"
    script.write_text(f"#!/bin/bash\n#SBATCH --time=10\n#SBATCH --output={tmp_path}/slurm-%j.out\n{body}\n")
    env = {**os.environ, **slurm, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    proc = subprocess.run(["sbatch", "--wait", "--parsable", *sbatch_options, str(script)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    job = proc.stdout.strip().split(";")[0]
    assert job, proc.stderr
    return proc.returncode, (tmp_path / f"slurm-{job}.out").read_text()


def test_two_task_ddp_job_started_by_srun(slurm, tmp_path, mnist_dir):
    run_dir = tmp_path / "run"
    train = [sys.executable, str(ROOT / "train.py"), *TINY, "trainer=ddp_cpu", "trainer.max_epochs=2",
             f"hydra.run.dir={run_dir}", f"paths.data_dir={mnist_dir}"]
    rc, out = submit(slurm, tmp_path, "srun " + " ".join(train), "--nodes=1", "--ntasks-per-node=2",
                     "--cpus-per-task=1")
    assert rc == 0, out[-5000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["test/acc"] > 0.3
    info = json.loads((run_dir / "run.json").read_text())
    assert info["slurm"]["ntasks"] == "2"
    assert out.count("Initializing distributed: GLOBAL_RANK: ") == 2  # the two srun tasks, nothing spawned
    assert "MEMBER: 2/2" in out
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # one W&B run, rank zero's


def test_tasks_that_do_not_match_the_trainer_fail_before_training(slurm, tmp_path, mnist_dir):
    train = f"{sys.executable} {ROOT / 'train.py'} {' '.join(TINY)} trainer=ddp_cpu paths.data_dir={mnist_dir}"
    rc, out = submit(slurm, tmp_path, f"srun {train} trainer.devices=1 hydra.run.dir={tmp_path}/a",
                     "--ntasks-per-node=2")
    assert rc != 0 and "--ntasks-per-node=1" in out and "trainer.devices=2" in out
    rc, out = submit(slurm, tmp_path, f"{train} hydra.run.dir={tmp_path}/b", "--ntasks=2")
    assert rc != 0 and "start it with `srun python train.py ...`" in out
    assert not (tmp_path / "a" / "checkpoints").exists()


def test_a_sweep_through_the_slurm_launcher_runs_its_trials_as_one_job_array(slurm, tmp_path, mnist_dir):
    env = {**os.environ, **slurm, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm",
                           "hydra.launcher.timeout_min=10", *TINY, "trainer.max_epochs=1", "model.lr=1e-3,3e-3",
                           f"paths.data_dir={mnist_dir}", f"paths.log_dir={tmp_path}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    assert [line.split(",")[2] for line in (sweep_dir / "summary.csv").read_text().splitlines()[1:]] == \
        ["complete", "complete"]
    tasks = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and "_" in p.name)
    assert len(tasks) == 2 and len({t.split("_")[0] for t in tasks}) == 1  # one array: <job>_0, <job>_1
    for trial in ("0", "1"):
        info = json.loads((sweep_dir / trial / "run.json").read_text())
        assert info["slurm"]["job_id"] and (sweep_dir / trial / "metrics.json").is_file()
        assert len(list((sweep_dir / trial / "wandb").glob("offline-run-*"))) == 1


def test_sweep_workers_of_a_job_array_share_one_study(slurm, tmp_path, mnist_dir):
    """scripts/slurm/sweep_worker.sbatch as written, with the GPU request taken off for this CPU-only cluster."""
    env = {**os.environ, **slurm, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline",
           "STUDY_STORAGE": str(tmp_path / "study.journal"), "NNLAB_DATA_DIR": str(mnist_dir)}
    proc = subprocess.run(["sbatch", "--wait", "--parsable", "--array=0-1", "--gpus-per-node=0", "--cpus-per-task=1",
                           "--mem=3G", "--time=10", f"--output={tmp_path}/slurm-%A_%a.out",
                           str(ROOT / "scripts" / "slurm" / "sweep_worker.sbatch"), "hydra/sweeper=optuna",
                           "model.lr=tag(log,interval(1e-3,1e-2))", "hydra.sweeper.n_trials=4",
                           "hydra.sweeper.study_name=array", *TINY, "trainer.max_epochs=1", "logger=csv",
                           f"paths.log_dir={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    outputs = [p.read_text() for p in sorted(tmp_path.glob("slurm-*_*.out"))]
    assert proc.returncode == 0 and len(outputs) == 2, proc.stderr + "".join(o[-3000:] for o in outputs)
    from nnlab.sweep import load_study

    study = load_study(str(tmp_path / "study.journal"), "array")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    ran = [set(re.findall(r"Trial (\d+) complete:", out)) for out in outputs]
    assert all(ran) and not ran[0] & ran[1] and len(ran[0] | ran[1]) == 4  # both workers, never the same trial

"""train.py on a real SLURM cluster started by the test tooling (tests/slurm_cluster.py)."""

import json
import os
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

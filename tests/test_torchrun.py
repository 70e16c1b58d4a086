"""torchrun for clusters without SLURM: two agents, as on two machines, and an elastic restart after a lost worker."""

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

from tests.helpers import ROOT, TINY, user_env
from tests.slurm_cluster import free_port

pytestmark = pytest.mark.slow


def agent(port: int, run_dir: Path, data_dir: Path, log: Path, *overrides: str) -> subprocess.Popen:
    """One torchrun agent of a 2-node job (`--nnodes=2 --nproc-per-node=1`, c10d rendezvous on loopback), as a user
    starts it in a shell on each machine. The two agents share this machine's cores: one thread each."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc-per-node=1",
        "--max-restarts=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--rdzv-id=nnlab-test",
        str(ROOT / "train.py"),
        "model=mlp",
        *TINY,
        "trainer=ddp_cpu",
        "trainer.devices=1",
        "trainer.num_nodes=2",
        f"hydra.run.dir={run_dir}",
        f"paths.data_dir={data_dir}",
        *overrides,
    ]
    env = user_env({"OMP_NUM_THREADS": "1"})
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def worker_of_rank(rank: int, run_dir: Path) -> int | None:
    """The PID of the training process of global rank `rank` (not its agent) of the run in run_dir."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if (
            f"hydra.run.dir={run_dir}".encode() in cmdline
            and b"torch.distributed.run" not in cmdline
            and f"RANK={rank}".encode() in environ
        ):
            return int(proc.name)
    return None


def test_two_torchrun_agents_train_one_run_and_restart_both_workers_after_one_is_killed(tmp_path, mnist_dir):
    """Two agents, one worker each: one run directory, one W&B run, the same weights on both ranks. Rank 1's worker
    is SIGKILLed mid-epoch: both agents restart their workers (--max-restarts=1), which resume from last.ckpt with
    the same run id and end after the right number of epochs and steps."""
    run_dir, port = tmp_path / "run", free_port()
    last = run_dir / "checkpoints" / "last.ckpt"
    logs = [tmp_path / "agent0.log", tmp_path / "agent1.log"]
    slow = ["trainer.max_epochs=6", "+callbacks.slow._target_=tests.helpers.SlowSteps", "+callbacks.slow.seconds=0.5"]
    agents = [agent(port, run_dir, mnist_dir, log, *slow) for log in logs]
    try:
        deadline = time.monotonic() + 300
        while not (last.is_file() and torch.load(last, weights_only=True)["epoch"] >= 1):  # in epoch 2 or later
            assert time.monotonic() < deadline and all(a.poll() is None for a in agents), "".join(
                log.read_text()[-3000:] for log in logs
            )
            time.sleep(0.5)
        time.sleep(0.7)  # mid-epoch: 4 steps an epoch, half a second each
        os.kill(worker_of_rank(1, run_dir), signal.SIGKILL)
        for a in agents:
            a.wait(timeout=300)
    finally:
        for a in agents:
            a.kill()
    out = "".join(log.read_text() for log in logs)
    assert [a.returncode for a in agents] == [0, 0], out[-6000:]
    assert out.count("torchrun restarted the workers (restart 1): resuming") == 2  # both agents' workers resumed
    assert out.count("Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2") == 2
    digests = re.findall(r"rank \d/2 on \S+: weights (\w+)", out)
    assert len(digests) == 2 and len(set(digests)) == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 6 and metrics["resumed_from"] == str(last)
    assert torch.load(last, weights_only=True)["global_step"] == 6 * 4  # 500 images / 64 / 2 ranks
    segments = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and len({d.name.rsplit("-", 1)[1] for d in segments}) == 1  # one W&B run, resumed

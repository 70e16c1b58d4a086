"""Where a run's processes are: ranks and restarts (torchrun, SLURM, the processes Lightning starts for DDP), the
threads each process gets, the launches that cannot work (refused before anything is built), and the process group
left while the interpreter is whole."""

import functools
import logging
import os
import socket
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from nnlab import commands
from nnlab.atomic import write_atomic
from nnlab.errors import ConfigError
from nnlab.run.signals import in_slurm_batch_job, job_id

log = logging.getLogger("nnlab")


def env_rank() -> int:
    """This process's global rank as the launcher set it, before Lightning exists: torchrun's RANK, srun's
    SLURM_PROCID, or LOCAL_RANK/NODE_RANK for the processes Lightning starts itself; 0 for a plain process."""
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key])
    return int(os.environ.get("NODE_RANK", 0)) * 1000 + int(os.environ.get("LOCAL_RANK", 0))


def rank_zero_only(method):
    """`method` runs on global rank 0 only: Lightning's rank_zero_only, imported when the method is called (after the
    trainer is built, which sets the rank)."""

    @functools.wraps(method)
    def on_rank_zero(*args, **kwargs):
        from lightning.pytorch.utilities import rank_zero_only as lightning_rank_zero_only

        if lightning_rank_zero_only.rank == 0:
            return method(*args, **kwargs)
        return None

    return on_rank_zero


def restart_count(slurm_job: bool, out: Path) -> int:
    """How often SLURM requeued this job or torchrun restarted its workers: a restart continues the run."""
    if slurm_job and int(os.environ.get("SLURM_RESTART_COUNT", "0")):
        return int(os.environ["SLURM_RESTART_COUNT"])
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return max(int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")), agent_starts(out))
    return 0


def agent_marker(out: Path) -> Path:
    """`<run dir>/.torchrun/<rendezvous id>-<host>-<agent pid>`: how often this torchrun agent (the worker's parent
    process) started a worker of this run."""
    return out / ".torchrun" / f"{os.environ['TORCHELASTIC_RUN_ID']}-{socket.gethostname()}-{os.getppid()}"


def agent_starts(out: Path) -> int:
    """torchrun counts a restart (TORCHELASTIC_RESTART_COUNT) only on the agent whose worker failed; the other agents
    restart their workers too, with the count unchanged, when the failed one rejoins the rendezvous. A worker whose
    own agent started a worker of this run before is such a restart."""
    try:
        return int(agent_marker(out).read_text())
    except (OSError, ValueError):
        return 0


def count_agent_start(out: Path, restarts: int):
    if "TORCHELASTIC_RUN_ID" in os.environ:
        marker = agent_marker(out)
        marker.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(marker, str(restarts + 1))


def continue_restarted(restarts: int, slurm_job: bool):
    """A requeued job (ours, or SLURM's after a preemption or node failure) or torchrun's restarted workers continue:
    say who restarted them; a SLURM job's attempt takes a rendezvous port of its own."""
    who = (
        f"SLURM restarted job {job_id()}"
        if slurm_job and os.environ.get("SLURM_RESTART_COUNT")
        else "torchrun restarted the workers"
    )
    log.info(f"{who} (restart {restarts}): resuming")
    if slurm_job and "MASTER_PORT" not in os.environ:
        # Lightning's rendezvous port is 15000 + the job id's last 4 digits, the same for every attempt: a requeued
        # job that starts again on the same node within seconds found it still held by the attempt before
        # (EADDRINUSE). Each attempt takes its own, the same on every rank (SLURM_RESTART_COUNT).
        base = int(os.environ["SLURM_JOB_ID"][-4:])  # what Lightning takes
        os.environ["MASTER_PORT"] = str(15000 + (base + 1000 * restarts) % 10000)


def tasks_on_this_node() -> int:
    """How many tasks of this SLURM job step run on this node (SLURM_TASKS_PER_NODE reads like "2(x3),1")."""
    if "SLURM_NTASKS_PER_NODE" in os.environ:
        return int(os.environ["SLURM_NTASKS_PER_NODE"])
    counts = [int(c.split("(")[0]) for c in os.environ.get("SLURM_TASKS_PER_NODE", "1").split(",")]
    return max(counts)


def local_processes(cfg: DictConfig) -> int:
    """How many training processes of this run share this machine: torchrun's LOCAL_WORLD_SIZE, an srun step's
    tasks on this node, or the processes Lightning starts itself for DDP on this node's devices."""
    if "LOCAL_WORLD_SIZE" in os.environ:
        return int(os.environ["LOCAL_WORLD_SIZE"])
    if "SLURM_STEP_ID" in os.environ and "SLURM_NTASKS" in os.environ:
        return tasks_on_this_node()
    devices, strategy = cfg.trainer.get("devices", 1), str(cfg.trainer.get("strategy"))
    if "ddp" not in strategy:
        return 1
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, (list, str)) and devices not in ("auto", "-1"):
        return len(devices) if isinstance(devices, list) else len(devices.strip(",").split(","))
    import torch

    if cfg.trainer.get("accelerator") == "gpu" or torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    return 1


def set_cpu_threads(cfg: DictConfig) -> dict:
    """Give this process its share of the CPUs, so that several training processes on one machine do not run more
    OpenMP threads than there are cores (spinning threads slow each other down many times over): the CPUs this
    process may use (its affinity; under SLURM, what the job was given per task: --cpus-per-task, else the node's
    CPUs over its tasks) divided by the processes of this run on the machine; a single process outside SLURM keeps
    torch's default. OMP_NUM_THREADS, when set (by the user, or by torchrun: 1 per worker), is kept. Exported, so the
    processes Lightning starts inherit it. Returns what run.json records."""
    import torch

    if "OMP_NUM_THREADS" in os.environ:
        threads = max(1, int(os.environ["OMP_NUM_THREADS"]))
        torch.set_num_threads(threads)
        return {"threads": threads, "from": "OMP_NUM_THREADS"}
    cpus, processes, why = len(os.sched_getaffinity(0)), local_processes(cfg), "CPUs available"
    slurm = in_slurm_batch_job()
    if processes == 1 and not slurm:  # alone on the machine: torch's default (one thread per physical core)
        return {"threads": torch.get_num_threads(), "from": "torch's default"}
    if slurm:
        if os.environ.get("SLURM_CPUS_PER_TASK"):
            per_task = int(os.environ["SLURM_CPUS_PER_TASK"])
        else:
            per_task = int(os.environ.get("SLURM_CPUS_ON_NODE", cpus)) // max(1, tasks_on_this_node())
        if "SLURM_STEP_ID" in os.environ:  # the tasks are the processes: each gets its own CPUs
            cpus, processes = min(cpus, max(1, per_task)), 1
        else:
            cpus = min(cpus, max(1, int(os.environ.get("SLURM_CPUS_ON_NODE", cpus))))
        why = "CPUs SLURM allocated"
    threads = max(1, cpus // processes)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return {"threads": threads, "from": f"{cpus} {why} / {processes} process(es) on this machine"}


def warn_more_processes_than_cores(cfg: DictConfig):
    """DDP on the CPU with more processes than cores: each process gets a thread, and they slow each other down."""
    devices, accelerator = cfg.trainer.get("devices"), str(cfg.trainer.get("accelerator"))
    cores = len(os.sched_getaffinity(0))
    if not (isinstance(devices, int) and devices > cores and env_rank() == 0 and accelerator in ("cpu", "auto")):
        return
    import torch

    if accelerator == "cpu" or not torch.cuda.is_available():
        log.warning(
            f"trainer.devices={devices} starts {devices} training processes on the CPU, which has {cores} core(s) for "
            f"this run: they share them and train slower than {cores} would (trainer.devices={cores}, or 1)"
        )


def check_launch(cfg: DictConfig):
    """DDP that Lightning starts itself re-runs this process's command line: inside an in-process multirun that is
    the whole sweep again (Lightning issue 11300). The default trial launcher gives each trial its own command."""
    devices = cfg.trainer.get("devices", 1)
    many = devices in (-1, "auto") or (isinstance(devices, int) and devices > 1) or isinstance(devices, (list, str))
    started_outside = any(k in os.environ for k in ("LOCAL_RANK", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID"))
    if (
        HydraConfig.get().mode == RunMode.MULTIRUN
        and "ddp" in str(cfg.trainer.get("strategy"))
        and many
        and not started_outside
    ):
        launcher = HydraConfig.get().runtime.choices.get("hydra/launcher")
        raise ConfigError(
            f"trainer.strategy={cfg.trainer.strategy} with devices={devices} inside a multirun that "
            f"runs trials in this process (hydra/launcher={launcher}): DDP would re-run the whole sweep "
            "in every rank. Use the default hydra/launcher=trials (each trial its own process) or "
            "hydra/launcher=parallel."
        )


def check_slurm(cfg: DictConfig):
    """Under SLURM, srun starts one process per task and Lightning takes rank and world size from SLURM's environment.
    A job whose tasks do not match the trainer would hang in the rendezvous or spawn processes of its own: say so
    before anything is built."""
    env = os.environ
    interactive = env.get("SLURM_JOB_NAME") in ("bash", "interactive")  # Lightning starts its own processes there
    if "SLURM_NTASKS" not in env or interactive or int(env["SLURM_NTASKS"]) == 1:
        return
    ntasks, nodes = int(env["SLURM_NTASKS"]), int(env.get("SLURM_NNODES", "1"))
    if "SLURM_STEP_ID" not in env:
        raise ConfigError(
            f"this SLURM job has {ntasks} tasks, but train.py runs in the batch script itself: start it with "
            f"`srun {commands.line(commands.program())} ...`, which starts one process per task (scripts/slurm/)"
        )
    devices, num_nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1) or 1
    if isinstance(devices, int) and devices > 0 and (devices * num_nodes != ntasks or num_nodes != nodes):
        raise ConfigError(
            f"the SLURM job has {nodes} node(s) x {ntasks // nodes} task(s) per node, but the trainer "
            f"asks for trainer.num_nodes={num_nodes} x trainer.devices={devices}: Lightning runs one "
            f"process per device, each a SLURM task. Submit with --nodes={num_nodes} "
            f"--ntasks-per-node={devices} (and as many GPUs per node), or set trainer.num_nodes={nodes} "
            f"trainer.devices={ntasks // nodes}."
        )


SLURM_FACTS = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_NTASKS",
    "SLURM_NNODES",
    "SLURM_JOB_NODELIST",
    "SLURM_RESTART_COUNT",
)


def leave_process_group():
    """Under DDP, destroy the process group while the interpreter is still whole: left to interpreter shutdown, gloo's
    threads can abort the process ("terminate called without an active exception", PyTorch issue 190489; seen on a
    2-task SLURM job). Only on orderly ends, where every rank gets here."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def join_restarted_group(trainer, restarts: int):
    """After a torchrun restart, join the new round's process group under keys of its own. The agents keep one
    store for every round (TORCHELASTIC_USE_AGENT_STORE) and the workers' keys carry no round: a restarted worker
    would read the addresses its peers had in the round before and be refused there. Lightning then finds the
    group initialized and uses it. The first start is Lightning's own."""
    import torch

    env = os.environ
    if (
        not restarts
        or env.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
        or int(env.get("WORLD_SIZE", 1)) < 2
        or torch.distributed.is_initialized()
        or not hasattr(trainer.strategy, "_get_process_group_backend")
    ):
        return
    from datetime import timedelta

    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    timeout = getattr(trainer.strategy, "_timeout", None) or timedelta(minutes=30)
    store = torch.distributed.PrefixStore(
        f"/nnlab/round_{restarts}",
        torch.distributed.TCPStore(
            env["MASTER_ADDR"], int(env["MASTER_PORT"]), world, is_master=False, timeout=timeout
        ),
    )
    log.info(
        f"Initializing distributed: GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/{world} (torchrun round {restarts + 1})"
    )
    torch.distributed.init_process_group(
        trainer.strategy._get_process_group_backend(), store=store, rank=rank, world_size=world, timeout=timeout
    )

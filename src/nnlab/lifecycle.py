"""A run's life around train.py's recipe: its directory, its checks, its signals, its end.

`Run(cfg).execute(recipe)` owns everything that is not training itself:
- the run directory: a lock that only this run holds (DDP ranks, a resumed run and a requeued SLURM job are this
  run; a second process is refused), a resumed command checked against the run's recorded config before anything
  is written, `train.log` opened only then, the record (`config.yaml`, `run.json`, `.hydra/`) written once the run
  is known to start;
- settings that cannot work, refused before anything is built, naming the key and the fix;
- signals: SIGTERM, Ctrl-C and SLURM's requeue signal stop training at a batch end with a checkpoint
  (nnlab.preemption), and the run says how it continues;
- errors: a mistake (nnlab.errors.UserError) is one line on the screen and a traceback in train.log; anything else
  keeps its traceback (HYDRA_FULL_ERROR=1 shows every traceback);
- the end: W&B closed as finished, failed or preempted, the process group destroyed.
"""

import copy
import fcntl
import functools
import json
import logging
import os
import platform
import signal
import socket
import stat
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

from nnlab import commands
from nnlab.atomic import LinkError, append_no_follow, atomic_open, open_no_follow, refuse_links_in
from nnlab.cpu import cpu_has_bf16, cpu_name
from nnlab.errors import CheckpointError, ConfigError, UserError
from nnlab.preemption import SignalStop, Stopped, in_slurm_batch_job, job_id, requeue_job, requeue_signal
from nnlab.settings import check_model_settings

# Noise that says nothing to this project's users, silenced before Lightning is imported. torch and Lightning are
# imported only once a run's directory and settings are checked (train.py's recipe), so a refused command is answered
# at once: this module imports them only where it uses them.
warnings.filterwarnings("ignore", message=".*srun. command is available on your system but is not used")
warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
warnings.filterwarnings("ignore", message="The number of training batches .* is smaller than the logging interval")
os.environ.setdefault("WANDB_QUIET", "true")  # W&B's banner and history table; its warnings and errors remain

log = logging.getLogger("nnlab")
DETAILS = "nnlab.details"  # a logger whose records (the tracebacks behind warnings) go to train.log, not the screen
# Lightning's lines that are advertisements or internals, not information about this run.
QUIET_LIGHTNING = (
    "💡 Tip:",
    "Loading `train_dataloader` to estimate",
    "TPU available:",
    "HPU available:",
    "\nDetected KeyboardInterrupt",
)


def quiet_lightning(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(QUIET_LIGHTNING)


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


def shell_command(extra: list[str] = (), drop: tuple[str, ...] = ()) -> str:
    """This command as the user would type it again, without the overrides that start with `drop`, plus `extra`
    (made with nnlab.commands.override): it runs when pasted into a shell in the folder it was started from."""
    args = [a for a in sys.argv[1:] if not a.lstrip("+~").startswith(drop)]
    return commands.line(["python", sys.argv[0], *args, *extra])


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


# --------------------------------------------------------------------------------------------------- the directory
class RunLock:
    """An exclusive lock on a run directory (flock on `<dir>/.lock`, which the kernel releases when the process
    ends however it ends, so a killed run never leaves it stuck). The file names the holder; a holder that ended
    without removing it (SIGKILL, a lost node) is reported when the next run takes the directory over."""

    def __init__(self, out: Path):
        self.path = Path(out) / ".lock"
        self.fd: int | None = None

    def acquire(self, wait: bool = False):
        """Take the lock, or a ConfigError naming its holder; with `wait`, wait for the holder to end instead (a
        sweep's trial taken over from a killed sweep, whose run may still be winding down)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = open_no_follow(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            if wait:
                log.warning(
                    f"run directory {self.path.parent} is still held by process {holder.get('pid')} on "
                    f"{holder.get('host')}: waiting for it to end"
                )
                fcntl.flock(fd, fcntl.LOCK_EX)
                if not self.still_the_file(fd):  # the holder removed the file as it ended: take the lock anew
                    os.close(fd)
                    return self.acquire(wait)
                return self.acquire_held(fd)
            os.close(fd)
            who = (
                (
                    f"process {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')}: "
                    f"{holder.get('command')})"
                )
                if holder
                else "another process"
            )
            raise ConfigError(
                f"run directory {self.path.parent} is in use by {who}. Wait for that run to end, or "
                "give this one its own directory (leave out hydra.run.dir for a new one)"
            ) from None
        self.acquire_held(fd)

    def acquire_held(self, fd: int):
        if holder := self._holder(fd):
            log.warning(
                f"run directory {self.path.parent} was held by process {holder.get('pid')} on "
                f"{holder.get('host')}, which ended without releasing it (killed?): taking it over"
            )
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": shell_command(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self.fd = fd

    def still_the_file(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.lstat(self.path).st_ino
        except FileNotFoundError:
            return False

    @staticmethod
    def _holder(fd) -> dict:
        try:
            return json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            return {"pid": "?", "host": "?"}

    def release(self):
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # still holding the lock: no one else can have it now
            os.close(self.fd)
            self.fd = None


# Keys that may differ when a run is resumed: where things are, not what is trained.
RESUMABLE_DIFFERENCES = (
    "data.data_dir", "data.cache_dir", "data.download", "data.workers", "data.eval_batch_size", "model.compile",
)  # fmt: skip


# What sets the number of training steps, over which a learning-rate schedule runs.
SCHEDULE_LENGTH = ("max_epochs", "max_steps", "max_time", "limit_train_batches", "accumulate_grad_batches")


def differences(recorded, now, prefix="") -> list[str]:
    """`key: recorded -> now` for every leaf that differs; a value still unknown now (None) is not a difference."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        return [
            d
            for k in sorted(set(recorded) | set(now), key=str)
            for d in differences(recorded.get(k), now.get(k), f"{prefix}{k}.")
        ]
    key = prefix.rstrip(".")
    if now is None or recorded == now or key in RESUMABLE_DIFFERENCES:
        return []
    return [f"{key}: {recorded!r} in the run, {now!r} now"]


def check_same_run(out: Path, cfg: DictConfig):
    """A resumed command must train what the run in `out` trained: its model, its data, its seed."""
    record = out / "config.yaml"
    if not record.is_file():
        return
    try:
        recorded = OmegaConf.to_container(OmegaConf.load(record), resolve=False)
        assert isinstance(recorded, dict)
    except Exception as e:  # noqa: BLE001  hand-edited, cut short: the check cannot be made, the run can still go on
        log.warning(f"cannot read {record} ({type(e).__name__}): this command is not checked against the run's")
        return
    now = OmegaConf.to_container(cfg, resolve=True)
    diff = [d for key in ("model", "data", "seed") for d in differences({key: recorded.get(key)}, {key: now.get(key)})]
    if now["model"].get("scheduler", "none") != "none":  # the schedule spans the steps the run was started with
        trainer = {k: recorded.get("trainer", {}).get(k) for k in SCHEDULE_LENGTH}
        diff += differences({"trainer": trainer}, {"trainer": {k: now["trainer"].get(k) for k in SCHEDULE_LENGTH}})
        diff += differences({"budget": recorded.get("budget")}, {"budget": now.get("budget")})
    diff.sort(key=lambda d: d.split(":")[0].count("."))  # model.net before model.arch.conv
    if diff:
        original = out / ".hydra" / "overrides.yaml"
        overrides = commands.line(OmegaConf.load(original)) if original.is_file() else "(not recorded)"
        raise ConfigError(
            f"resume=true: this command does not train what the run in {out} trained ("
            f"{'; '.join(diff[:6])}{'; ...' if len(diff) > 6 else ''}). Resume it with its own "
            f"overrides ({overrides}), or leave out resume=true and hydra.run.dir for a new run"
        )


# What a new run's directory may hold before the run writes anything: its lock, what the other ranks of a torchrun or
# srun start write as they start beside rank 0, and a sweep trial's console.log (the trial launcher's).
OWN_AT_START = (".lock", ".torchrun")
RUN_FILES = ("run.json", "metrics.json", "checkpoints")  # a folder holding one of these holds a run


def check_own_directory(out: Path, sweep_trial: bool):
    """A new run starts only in a new or empty folder: it never writes over another run's files, or the user's."""
    held = [
        name for name in RUN_FILES if (out / name).is_file() or ((out / name).is_dir() and any((out / name).iterdir()))
    ]
    if held:
        raise ConfigError(
            f"{out} already holds a run ({', '.join(held)}): continue it with resume=true, or give this "
            "run its own directory (leave out hydra.run.dir for a new one)"
        )
    mine = (*OWN_AT_START, "console.log") if sweep_trial else OWN_AT_START
    others = sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in out.iterdir()
        if p.name not in mine and not (p.name.startswith("train.rank") and p.name.endswith(".log"))
    )
    if others:
        raise ConfigError(
            f"{out} is not empty ({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}): a run starts only in "
            "a new or empty folder, so it never writes over files there. Give hydra.run.dir a new folder, or leave "
            "it out for a new one under paths.log_dir"
        )


def complete_run(out: Path) -> Path | None:
    """The metrics.json of a run that finished (it is written last), if the directory holds one."""
    metrics = out / "metrics.json"
    return metrics if metrics.is_file() and not metrics.is_symlink() else None


class Complete(Exception):
    """resume=true (or a restart) on a run that finished: nothing is done, and nothing is written."""


def shared_root(out: Path, log_dir: Path) -> Path | None:
    """The first folder from the run directory's parent up to paths.log_dir that users other than its owner may write
    to: another user could plant files or links under the predictable names of runs there."""
    here, top = out.resolve().parent, log_dir.resolve()
    while True:
        try:
            if here.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return here
        except OSError:
            return None
        if here == top or top not in here.parents:
            return None
        here = here.parent


def latest_run(log_dir: Path) -> Path | None:
    runs = sorted(log_dir.glob("*/*/run.json"), key=lambda p: p.stat().st_mtime)
    return runs[-1].parent if runs else None


def git_state() -> dict:
    here = Path(__file__).resolve().parent
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=here, capture_output=True, text=True, check=True).stdout
        return {"commit": run("rev-parse", "HEAD").strip(), "dirty": bool(run("status", "--porcelain").strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


SLURM_FACTS = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_NTASKS",
    "SLURM_NNODES",
    "SLURM_JOB_NODELIST",
    "SLURM_RESTART_COUNT",
)


def write_atomic(path: Path, text: str):
    with atomic_open(path) as f:
        f.write(text.encode())


# ----------------------------------------------------------------------------------------------- settings checks
def positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_settings(cfg: DictConfig, explicit_run_dir: bool, restarted: bool):
    """Settings that would fail deep inside torch or Lightning, or silently do nothing, refused with the key."""
    for key in cfg.data:  # not items(): a ??? left unset (data.path) may be filled from a checkpoint
        if str(key).endswith("batch_size") and not positive_int(value := cfg.data[key]):
            raise ConfigError(f"data.{key}={value}: a batch size is a whole number of samples, at least 1")
    if cfg.resume and not explicit_run_dir and not restarted and cfg.sweep.trial is None:
        latest = latest_run(Path(cfg.paths.log_dir))
        hint = f" (the latest run here: {commands.path(commands.override('hydra.run.dir', latest))})" if latest else ""
        raise ConfigError(f"resume=true continues a run in its own directory: add hydra.run.dir=<run directory>{hint}")
    for key in ("data_dir", "cache_dir", "log_dir"):  # a file where a folder is meant fails deep inside otherwise
        where = Path(str(cfg.paths[key])).expanduser()
        if where.exists() and not where.is_dir():
            env = os.environ.get("NNLAB_DATA_DIR")
            named = f"NNLAB_DATA_DIR={env} (paths.data_dir)" if key == "data_dir" and env else f"paths.{key}={where}"
            fix = ": point it at the folder that holds MNIST/, aclImdb/, ..." if key == "data_dir" else ""
            raise ConfigError(f"{named} is a file, not a folder{fix}")
    if not cfg.train:
        if not cfg.ckpt_path:
            raise ConfigError("train=false tests a checkpoint: add ckpt_path=<path to a .ckpt file>")
        return
    t = cfg.trainer
    endless = t.get("max_epochs") == -1 and t.get("max_steps", -1) in (-1, None) and not t.get("max_time")
    if endless and cfg.model.get("scheduler", "none") != "none":
        raise ConfigError(
            f"model.scheduler={cfg.model.scheduler} runs over the whole training, but trainer.max_epochs=-1 with no "
            "trainer.max_steps or trainer.max_time trains without end: give one of the three (the schedule then "
            "spans it), or model.scheduler=none"
        )
    if t.get("max_epochs") is not None and (t.max_epochs == 0 or t.max_epochs < -1):
        raise ConfigError(
            f"trainer.max_epochs={t.max_epochs} trains nothing: give at least 1 (to test a checkpoint "
            "without training: train=false ckpt_path=<checkpoint>)"
        )
    if t.get("max_steps") == 0 or t.get("limit_train_batches") in (0, 0.0):
        key = "max_steps" if t.get("max_steps") == 0 else "limit_train_batches"
        raise ConfigError(f"trainer.{key}=0 trains nothing: give at least 1 (or leave it out)")
    m = cfg.model  # the model checks them itself when it is built; here before any data is read or downloaded
    check_model_settings(
        m.optimizer,
        m.lr,
        m.weight_decay,
        m.scheduler,
        m.warmup_pct,
        m.arch,
        m.get("label_smoothing", 0.0),
        m.get("anneal_to", 0.0),
        m.get("adversarial_share", 1.0),
    )
    check_devices(str(t.get("accelerator")), str(t.get("precision")), t.get("devices"))


def check_devices(accelerator: str, precision: str, devices):
    """A GPU asked for where torch finds none (or fewer), and bf16 on a CPU without bf16 instructions. torch is
    imported only where the answer needs it: a GPU asked for, or bf16 on whatever device there is."""
    if accelerator not in ("gpu", "cuda") and not precision.startswith("bf16"):
        return
    if accelerator == "cpu":
        cuda = False
    else:
        import torch

        cuda = torch.cuda.is_available()
    if accelerator in ("gpu", "cuda") and not cuda:
        raise ConfigError(
            f"trainer.accelerator={accelerator} (trainer=gpu or trainer=ddp) but this machine has no "
            "CUDA GPU that torch can use: leave out trainer= (the default uses a GPU when there is one, "
            "else the CPU), or trainer=cpu / trainer=ddp_cpu"
        )
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not cuda)
    if precision.startswith("bf16") and on_cpu and not cpu_has_bf16():
        raise ConfigError(
            f"trainer.precision={precision} on a CPU without bf16 instructions ({cpu_name()}: no AVX512_BF16 or AMX "
            "on x86, no BF16 on Arm): autocast would emulate bf16, 8 to 20 times slower than 32-true on such a CPU "
            "(README, Controls). Use trainer=cpu, or trainer=cpu_bf16 on a CPU that has them"
        )
    if accelerator in ("gpu", "cuda") and isinstance(devices, int) and devices > torch.cuda.device_count():
        raise ConfigError(
            f"trainer.devices={devices} but this machine has {torch.cuda.device_count()} GPU(s): "
            "give trainer.devices=-1 for all of them"
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
            f"this SLURM job has {ntasks} tasks, but train.py runs in the batch script itself: start "
            "it with `srun python train.py ...`, which starts one process per task (scripts/slurm/)"
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


def check_pairing(cfg: DictConfig, net: str):
    """The network reads the kind of data the data module provides (both declare it: nnlab.kinds)."""
    from hydra.utils import get_class

    from nnlab.nets import network

    reads, provides = network(net).reads, getattr(get_class(cfg.data._target_), "kind", None)
    if reads != provides:
        choices = HydraConfig.get().runtime.choices
        raise ConfigError(
            f"model={choices.get('model')} reads {reads!r} data but data={choices.get('data')} provides "
            f"{provides!r} data. Drop the data=... override (each model picks its own dataset) or pick a "
            "dataset of the kind the model reads."
        )


def without_regularisation(cfg: DictConfig) -> list[str]:
    """For trainer.overfit_batches: turn off in `cfg` what keeps a network from learning its batches by heart (the
    augmentation the data module and the network list in their `augmentation_off`; every dropout rate of the network;
    adversarial training). Returns what it changed, as overrides."""
    import yaml
    from hydra.utils import get_class

    from nnlab.nets import network

    changes = [f"data.{o}" for o in getattr(get_class(cfg.data._target_), "augmentation_off", ())]
    changes += [f"model.arch.{o}" for o in getattr(network(cfg.model.net), "augmentation_off", ())]  # SpecAugment
    changes += [f"model.arch.{k}=0" for k, v in cfg.model.arch.items() if str(k).endswith("dropout") and v]
    changes += ["model.adversarial=0"] if cfg.model.get("adversarial") else []
    changed = []
    for change in changes:
        key, value = change.split("=", 1)
        value = yaml.safe_load(value)
        if OmegaConf.select(cfg, key) not in (None, value):
            OmegaConf.update(cfg, key, value, merge=False)
            changed.append(change)
    return changed


# ------------------------------------------------------------------------------------------------------- the run
# Data settings that say where the data is on this machine, not what it is: never taken from a checkpoint.
WHERE_DATA_IS = ("data_dir", "cache_dir", "download", "workers")


def shape_settings(preprocessing: dict) -> dict:
    """The data settings that make inputs of the shape a checkpoint's preprocessing record describes."""
    keys = {k: preprocessing[k] for k in ("channels", "image_size", "fit", "sample_rate") if k in preprocessing}
    if "samples" in preprocessing and "sample_rate" in preprocessing:
        keys["clip_seconds"] = preprocessing["samples"] / preprocessing["sample_rate"]
    return keys


class NoFollowFileHandler(logging.FileHandler):
    """logging's FileHandler, opening its file with O_NOFOLLOW: a link planted as train.log is refused, not written
    through."""

    def _open(self):
        return append_no_follow(self.baseFilename, self.encoding or "utf-8")


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


class Run:
    """One run of train.py: see the module's docstring. `execute(recipe)` calls `recipe(cfg, run)`."""

    def __init__(self, cfg: DictConfig):
        hc = HydraConfig.get()
        self.cfg, self.out = cfg, Path(hc.runtime.output_dir)
        self.multirun = hc.mode == RunMode.MULTIRUN
        self.rank_zero = env_rank() == 0
        self.slurm_job = in_slurm_batch_job()
        self.restarts = restart_count(self.slurm_job, self.out)
        self.resuming = bool(cfg.resume or self.restarts)
        self.last_ckpt = Path(cfg.callbacks.last_checkpoint.dirpath) / "last.ckpt"
        self.explicit_run_dir = any(o.startswith("hydra.run.dir=") for o in hc.overrides.hydra)
        self.lock, self.stop, self.log_file, self.loggers = RunLock(self.out), None, None, []
        self.threads = None
        self.checkpoint: dict | None = None  # train=false: what the checkpoint records beside its weights
        self.described = False  # run.json written: this start is the run's record (a refused command never is)
        self.start = time.perf_counter()
        self.offline_why = offline_reason()  # now: opening an offline run sets WANDB_MODE itself

    # ----------------------------------------------------------------------------------------------- execute
    def execute(self, recipe):
        try:
            # Installed first: a signal while data loads must not kill the run before its checkpoint.
            requeue_on = requeue_signal(self.cfg.slurm.signal)  # a bad name fails anywhere
            self.stop = SignalStop(self.last_ckpt, requeue_on if self.slurm_job else None).install()
            self.open()
            return recipe(self.cfg, self)
        except (KeyboardInterrupt, SystemExit) as e:
            if self.stop is not None and self.stop.received == signal.SIGINT and not self.stop.training:
                # Ctrl-C before training started (Lightning turns the KeyboardInterrupt into SystemExit(1))
                self.finish_wandb(1)
                print(
                    "Interrupted before training started: nothing to resume; run the command again to start",
                    file=sys.stderr,
                )
                raise SystemExit(130) from None
            if isinstance(e, KeyboardInterrupt):
                raise SystemExit(130) from None
            raise
        except Complete as e:
            return self.complete(Path(str(e)))
        except UserError as e:
            self.fail(e, one_line=not os.environ.get("HYDRA_FULL_ERROR"))
        except MissingMandatoryValue as e:  # a `???` in the config (data.path of your own data) left unset
            key = e.full_key or "a key"
            self.fail(
                ConfigError(f"{key} has no value: give it on the command line ({key}=...)"),
                one_line=not os.environ.get("HYDRA_FULL_ERROR"),
            )
        except BaseException as e:  # noqa: BLE001  a bug: its traceback into train.log, then raised again
            self.fail(e, one_line=False)
        finally:
            if self.stop is not None:
                self.stop.uninstall()
            self.lock.release()
            if self.rank_zero and not self.explicit_run_dir:
                try:
                    self.out.rmdir()  # a refused command leaves no empty run directory behind (Hydra made it)
                except OSError:
                    pass  # not empty: the run's
            if self.log_file is not None:
                logging.getLogger().removeHandler(self.log_file)
                self.log_file.close()

    def open(self):
        """Own the directory, check the command, open train.log: in this order, so a refused command writes nothing."""
        cfg = self.cfg
        sweep_trial = cfg.get("sweep") is not None and cfg.sweep.trial is not None
        if self.rank_zero:
            if self.out.is_symlink() and (sweep_trial or not self.explicit_run_dir):
                raise LinkError(
                    f"run directory {self.out} is a symbolic link (to {os.readlink(self.out)}), which "
                    "nnlab did not make: remove it and run again"
                )
            # A sweep's trial taken over from a killed sweep waits for its run, which may still be stopping.
            self.lock.acquire(wait=sweep_trial and self.resuming)
            refuse_links_in(self.out, "run directory")
        if self.resuming and (metrics := complete_run(self.out)):
            raise Complete(metrics)
        check_settings(cfg, self.explicit_run_dir, self.restarts > 0)
        continues = self.resuming and any((self.out / name).exists() for name in RUN_FILES)
        if self.rank_zero and continues:
            check_same_run(self.out, cfg)
        elif self.rank_zero:  # a new run, or resume=true in a folder that holds none: a new or empty folder only
            check_own_directory(self.out, sweep_trial)
        self.threads = set_cpu_threads(cfg)  # imports torch: after every check that needs none
        if self.rank_zero and not continues:
            self.claim()
        self.attach_log_file()
        if self.rank_zero and (shared := shared_root(self.out, Path(cfg.paths.log_dir))):
            log.warning(
                f"{shared} can be written by other users: one of them could plant files or links under the names of "
                "runs there. nnlab refuses links it did not make, but keep runs in a folder only you can write to "
                "(paths.log_dir)"
            )
        warn_more_processes_than_cores(cfg)
        count_agent_start(self.out, self.restarts)
        if self.restarts:  # a requeued job (ours, or SLURM's after a preemption or node failure) continues
            who = (
                f"SLURM restarted job {job_id()}"
                if self.slurm_job and os.environ.get("SLURM_RESTART_COUNT")
                else "torchrun restarted the workers"
            )
            log.info(f"{who} (restart {self.restarts}): resuming")
            if self.slurm_job and "MASTER_PORT" not in os.environ:
                # Lightning's rendezvous port is 15000 + the job id's last 4 digits, the same for every attempt: a
                # requeued job that starts again on the same node within seconds found it still held by the attempt
                # before (EADDRINUSE). Each attempt takes its own, the same on every rank (SLURM_RESTART_COUNT).
                base = int(os.environ["SLURM_JOB_ID"][-4:])  # what Lightning takes
                os.environ["MASTER_PORT"] = str(15000 + (base + 1000 * self.restarts) % 10000)
        check_launch(cfg)
        check_slurm(cfg)
        import lightning  # noqa: F401  (the checks have passed: the run is going to train or test)

        logging.getLogger("lightning").handlers.clear()  # its own console handler, added on import: lines twice
        for handler in logging.getLogger().handlers:
            handler.addFilter(quiet_lightning)
            if not isinstance(handler, logging.FileHandler):
                handler.addFilter(lambda record: record.name != DETAILS)  # tracebacks of warnings: train.log only

    def claim(self):
        """Mark the directory as this run's before anything else is written there (train.log, a failure's end.json):
        a first run.json, which describe() completes once the run is built."""
        first = {"run_id": str(self.cfg.run_id), **self.start_facts()}
        write_atomic(self.out / "run.json", json.dumps(first, indent=2))
        self.described = True

    def start_facts(self) -> dict:
        """When, how and where this start of the run runs (run.json; a resumed run keeps earlier starts' too)."""
        return {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": [sys.executable, *sys.argv],
            "host": socket.gethostname(),
            "cpus": sorted(os.sched_getaffinity(0)),
            "torch_threads": self.threads,
            "slurm": {k[6:].lower(): os.environ[k] for k in SLURM_FACTS if k in os.environ},
        }

    def complete(self, metrics: Path):
        """The run finished before: say so, and return the metric it recorded for a sweeper (nothing is written)."""
        try:
            recorded = json.loads(metrics.read_text())
        except (OSError, ValueError):
            recorded = {}
        recorded = recorded if isinstance(recorded, dict) else {}
        if self.rank_zero:
            print(f"{self.out} holds a complete run: nothing to resume. Its metrics: {metrics}", flush=True)
        return None if recorded.get("trial_state") == "pruned" else recorded.get(self.cfg.optimized_metric)

    def attach_log_file(self):
        """train.log (rank 0; other ranks train.rank<N>.log), appended to across resumes, never through a link."""
        name = "train.log" if self.rank_zero else f"train.rank{env_rank()}.log"
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_file = NoFollowFileHandler(self.out / name)
        self.log_file.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        logging.getLogger().addHandler(self.log_file)

    def join_restarted_group(self, trainer):
        """After a torchrun restart, join the new round's process group under keys of its own. The agents keep one
        store for every round (TORCHELASTIC_USE_AGENT_STORE) and the workers' keys carry no round: a restarted worker
        would read the addresses its peers had in the round before and be refused there. Lightning then finds the
        group initialized and uses it. The first start is Lightning's own."""
        import torch

        env = os.environ
        if (
            not self.restarts
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
            f"/nnlab/round_{self.restarts}",
            torch.distributed.TCPStore(
                env["MASTER_ADDR"], int(env["MASTER_PORT"]), world, is_master=False, timeout=timeout
            ),
        )
        log.info(
            f"Initializing distributed: GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/{world} (torchrun round "
            f"{self.restarts + 1})"
        )
        torch.distributed.init_process_group(
            trainer.strategy._get_process_group_backend(), store=store, rank=rank, world_size=world, timeout=timeout
        )

    # ------------------------------------------------------------------------------------------------ config
    def settled(self, cfg: DictConfig) -> tuple[DictConfig, dict | None]:
        """The run's config with what is computed once, before anything is built, set in a copy (Hydra's stays as
        composed): the id a resumed run had (W&B continues that run), the classes a data set finds, a sweep trial's
        W&B tags, and for train=false the model and data settings the checkpoint records; the network and the data
        checked to be of one kind. Returns it, and for train=false the model the checkpoint holds (read once)."""
        from hydra.utils import instantiate

        from nnlab.checkpoint import model_from_checkpoint, read_checkpoint

        cfg, evaluated = copy.deepcopy(cfg), None
        given = {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
        with open_dict(cfg):
            if self.resuming and self.rank_zero and (run_id := self.recorded_run_id()):
                cfg.run_id = run_id
            if not cfg.train:  # evaluate what the checkpoint holds
                checkpoint = read_checkpoint(cfg.ckpt_path)
                evaluated = model_from_checkpoint(checkpoint, cfg.ckpt_path)
                self.checkpoint = {k: checkpoint.get(k) for k in ("hyper_parameters", "preprocessing", "nnlab")}
                cfg.model = {"_target_": "nnlab.module.Classifier", **checkpoint["hyper_parameters"]}
                recorded = checkpoint.get("nnlab", {}).get("data") or {}
                trained_on = checkpoint.get("nnlab", {}).get("choices", {}).get("data")
                if HydraConfig.get().runtime.choices.get("data") == trained_on or "data" not in given:
                    # the data settings it was trained with (a tokenizer's vocabulary, say), unless given now
                    for key, value in recorded.items():
                        # .keys(): `in` on a DictConfig is False for a ??? value (data.path), which this fills in
                        known = key in cfg.data.keys()  # noqa: SIM118
                        if known and key not in WHERE_DATA_IS and f"data.{key}" not in given:
                            cfg.data[key] = value
                else:  # other data: read as the checkpoint's inputs were (1-channel 28x28 for an MNIST model)
                    for key, value in shape_settings(checkpoint.get("preprocessing") or {}).items():
                        if key in cfg.data.keys() and f"data.{key}" not in given:  # noqa: SIM118
                            cfg.data[key] = value
            elif cfg.data.get("num_classes", 0) is None:  # a data set that finds its classes (word or class folders)
                cfg.data.num_classes = len(instantiate(cfg.data, _convert_="all").class_names_found())
            if cfg.train and cfg.trainer.get("overfit_batches"):
                off = without_regularisation(cfg)
                log.info(
                    f"trainer.overfit_batches={cfg.trainer.overfit_batches}: the same batches every epoch, with "
                    f"augmentation, dropout and adversarial training off ({' '.join(off) or 'none was on'})"
                )
            if (
                cfg.train
                and cfg.get("sweep") is not None
                and cfg.sweep.trial is not None
                and "wandb" in cfg.get("logger", {})
            ):  # a sweep trial's overrides as W&B tags
                skip = ("sweep.", "hydra.", "run_id=", "run_name=", "resume=", "paths.")
                tags = [
                    o.lstrip("+~")[:64] for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(skip)
                ]
                cfg.logger.wandb.tags = [*cfg.logger.wandb.tags, *tags]
        check_pairing(cfg, cfg.model.net)
        return cfg, evaluated

    def preflight(self, datamodule):
        """What can be checked before training, done before the config tree is shown, so that a failing run ends with
        its error on a short screen: the data is found and readable (rank 0 prepares it now: downloads, decodes and
        tokenises it into the cache fit reads), and a checkpoint to test (train=false) fits that data."""
        from nnlab.checkpoint import check_fits_data

        data = HydraConfig.get().runtime.choices.get("data")
        if self.checkpoint is not None and hasattr(datamodule, "vocabulary"):
            datamodule.vocabulary = (self.checkpoint.get("preprocessing") or {}).get("tokenizer")
        if self.rank_zero:
            datamodule.prepare_data()
        if self.checkpoint is not None:
            check_fits_data(self.checkpoint, self.cfg.ckpt_path, datamodule, data)

    @rank_zero_only
    def record_split(self, split: dict):
        """run.json records how the data was split (nnlab.data.split_record): the counts and a digest."""
        try:
            info = json.loads((self.out / "run.json").read_text())
        except (OSError, ValueError):
            return
        if isinstance(info, dict):
            write_atomic(self.out / "run.json", json.dumps({**info, "split": split}, indent=2))

    def trained_on(self):
        """train=false: the fingerprints of what the checkpoint trained on (None for checkpoints that have none)."""
        return ((self.checkpoint or {}).get("nnlab") or {}).get("trained_on")

    def recorded_run_id(self) -> str | None:
        """The run id in run.json, so W&B continues the same run instead of starting a second one."""
        if not (self.out / "run.json").is_file():
            return None
        try:
            return json.loads((self.out / "run.json").read_text())["run_id"]
        except (ValueError, KeyError) as e:
            log.warning(
                f"cannot read the run id from {self.out / 'run.json'} ({type(e).__name__}): W&B records "
                "the resumed run under a new id"
            )
            return None

    # ------------------------------------------------------------------------------------------------ resume
    def resume_from(self) -> tuple[str | None, dict | None]:
        """The checkpoint fit starts from, and its content (read once, checked): last.ckpt when resuming (or
        ckpt_path, when given with resume=true); else ckpt_path (fine-tuning from its weights and state)."""
        from nnlab.checkpoint import RESUME_KEYS, read_checkpoint

        cfg = self.cfg
        if not self.resuming:
            return (cfg.ckpt_path, read_checkpoint(cfg.ckpt_path, RESUME_KEYS)) if cfg.ckpt_path else (None, None)
        if cfg.ckpt_path and not Path(cfg.ckpt_path).is_file():  # asked for by name: it must be there
            raise CheckpointError(f"resume=true ckpt_path={cfg.ckpt_path}: that checkpoint does not exist")
        chosen = Path(cfg.ckpt_path) if cfg.ckpt_path else self.last_ckpt
        if not chosen.is_file():
            log.warning(
                f"{'resume=true' if cfg.resume else 'restarted'} but {chosen} does not exist: starting from "
                f"scratch in {self.out}"
            )
            return None, None
        try:
            return str(chosen), read_checkpoint(chosen, RESUME_KEYS)
        except CheckpointError as e:
            raise CheckpointError(f"{e}. {self.alternative(chosen)}") from None

    def alternative(self, damaged: Path) -> str:
        """What to resume from instead of a damaged checkpoint."""
        from nnlab.checkpoint import RESUME_KEYS, read_checkpoint

        best = self.last_ckpt.parent / "best.ckpt"
        if best != damaged and best.is_file():
            try:
                state = read_checkpoint(best, RESUME_KEYS)
                return (
                    f"best.ckpt (after epoch {state['epoch'] + 1}, step {state['global_step']}) is intact: "
                    f"continue from it with {shell_command([commands.override('ckpt_path', best)], ('ckpt_path=',))}"
                )
            except CheckpointError:
                pass
        return (
            f"No intact checkpoint is left in {damaged.parent}: start again in a new directory (leave out "
            "resume=true and hydra.run.dir)"
        )

    # ------------------------------------------------------------------------------------------------ record
    @rank_zero_only
    def describe(self, cfg: DictConfig, resumed_from: str | None):
        """The directory holds what reproduces the run: resolved config, commit, versions, command; the composed,
        unresolved config and the overrides in .hydra/ (Hydra's own copy is off: it would be written before the
        directory's lock and checks)."""
        import torch

        out, hc = self.out, HydraConfig.get()
        write_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        start = self.start_facts()
        try:
            previous = json.loads((out / "run.json").read_text()) if resumed_from else {}
        except (OSError, ValueError):
            previous = {}
        earlier = [{k: previous[k] for k in start if k in previous}] if previous else []
        info = {
            "run_id": cfg.run_id,
            **start,  # this start; a resumed run lists the starts before it
            "resumed_from": resumed_from,
            "earlier_starts": previous.get("earlier_starts", []) + earlier,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "git": git_state(),
            "packages": {
                d.metadata["Name"]: d.version
                for d in sorted(metadata.distributions(), key=lambda d: d.metadata["Name"].lower())
            },
        }
        write_atomic(out / "run.json", json.dumps(info, indent=2))
        (out / "end.json").unlink(missing_ok=True)  # how an earlier start of this run ended
        self.described = True
        write_atomic(out / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
        write_atomic(out / ".hydra" / "hydra.yaml", OmegaConf.to_yaml({"hydra": hc}))
        write_atomic(out / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(list(hc.overrides.task)))

    # --------------------------------------------------------------------------------------------------- end
    def fail(self, e: BaseException, one_line: bool):
        """Log the traceback into train.log, close W&B as failed, and either print one line and exit 1, or re-raise
        (a bug, or an in-process multirun, whose sweeper records the failure)."""
        if not one_line and self.described and not self.out.is_dir():  # not a bug: the folder went away
            e = ConfigError(
                f"the run directory {self.out} was moved or removed while the run ran ({type(e).__name__}: {e}); "
                "what the run wrote is wherever that folder is now"
            )
            one_line = not os.environ.get("HYDRA_FULL_ERROR")
        where = f" (details: {self.log_file.baseFilename})" if self.log_file else ""
        self.record_end("failed", error=f"{type(e).__name__}: {e}" if not isinstance(e, UserError) else str(e))
        if self.log_file is not None:
            record = logging.LogRecord("nnlab", logging.ERROR, __file__, 0, f"run failed: {e}", None, sys.exc_info())
            self.log_file.handle(record)  # the traceback into train.log only
        try:
            self.finish_wandb(1)
        except Exception as w:  # noqa: BLE001
            log.warning(f"could not close the W&B run ({w})")
        if one_line and not self.multirun:
            print(f"Error: {e}{where}", file=sys.stderr)
            raise SystemExit(1) from None
        if not one_line and self.log_file is not None:
            log.error(f"run failed; its directory: {self.out}")
        raise e

    def record_end(self, state: str, **facts):
        """end.json: how this start of the run ended when it did not finish (failed, stopped by a signal), for the
        run index (python -m nnlab.runs); a finished run has metrics.json, a killed one a .lock its process left."""
        if not self.rank_zero or not self.described or self.lock.fd is None:
            return  # a refused command, or a directory another run holds, is not written to
        try:
            write_atomic(self.out / "end.json", json.dumps({"state": state, "at": time.time(), **facts}))
        except OSError as w:  # a full disk: the run's own files matter more
            log.warning(f"could not record how the run ended ({w})")

    def finish_wandb(self, exit_code: int, preempted: bool = False):
        """Close the W&B run (marked failed on a non-zero exit code, preempted when it will be resumed) so the next
        run in this process is a new one. A run that never started one (it failed before training) has none."""
        if self.loggers:  # built with the trainer: Lightning is imported
            self.finish_wandb_run(exit_code, preempted)

    @rank_zero_only
    def finish_wandb_run(self, exit_code: int, preempted: bool):
        from lightning.pytorch.loggers import WandbLogger

        for lg in self.loggers:
            if isinstance(lg, WandbLogger) and lg._experiment is not None:
                run_dir = Path(lg.experiment.dir).parent
                offline = lg._offline
                if preempted:
                    lg.experiment.mark_preempting()
                lg.experiment.finish(exit_code=exit_code)
                if offline:
                    print(
                        f"W&B is offline ({self.offline_why}); upload this run with: wandb sync "
                        f"{commands.path(run_dir)}"
                    )

    def end_stopped(self, trainer):
        """Training stopped on a signal with its checkpoint written: close the W&B run as preempted, requeue the
        SLURM job if the signal asked for it, say how the run continues, and exit (0 when requeued, else 128 + the
        signal: 130 for Ctrl-C, 143 for SIGTERM)."""
        stop, cfg = self.stop, self.cfg
        requeue = stop.requeue_requested and cfg.slurm.requeue
        how = (
            ""
            if requeue
            else "; continue with: "
            + shell_command(
                ["resume=true", commands.override("hydra.run.dir", self.out)], ("resume=", "hydra.run.dir=")
            )
        )
        name = "Ctrl-C" if stop.received == signal.SIGINT else stop.received.name
        self.record_end("stopped", signal=stop.received.name, epoch=trainer.current_epoch, step=trainer.global_step)
        log.warning(
            f"{name} received: training stopped at epoch {trainer.current_epoch}, step {trainer.global_step}; "
            f"checkpoint {stop.checkpoint if stop.saved else 'not needed (fit was over)'}{how}"
        )
        try:
            self.finish_wandb(0 if requeue else 1, preempted=True)
        except Exception as e:  # noqa: BLE001  SLURM signals every process of the job: W&B's service may be gone
            log.warning(f"could not close the W&B run ({e}); the resumed run continues it")
        requeued = requeue and (not trainer.is_global_zero or requeue_job())
        leave_process_group()
        raise SystemExit(0 if requeued else 128 + stop.received)

    @contextmanager
    def stopping(self, trainer):
        """Around fit and test: a stop on a signal ends as end_stopped says; anything else goes on up."""
        try:
            yield
        except BaseException as e:
            if self.stopped(e):
                self.end_stopped(trainer)
            raise

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def stopped(self, e: BaseException) -> bool:
        """Whether an exception out of fit or test is this run's signal stop."""
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        return isinstance(e, (Stopped, SIGTERMException)) and self.stop.received is not None

    def plugins(self) -> list:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        from nnlab.callbacks import AtomicCheckpointIO

        plugins = [AtomicCheckpointIO()]
        if SLURMEnvironment.detect():  # ranks from SLURM; requeueing is SignalStop's alone (nnlab/preemption.py)
            plugins.append(SLURMEnvironment(auto_requeue=False))
        return plugins


def offline_reason() -> str:
    mode = os.environ.get("WANDB_MODE")
    if mode in ("offline", "dryrun"):
        return f"WANDB_MODE={mode}"
    return "no credentials found: wandb login, or WANDB_API_KEY"


def leave_process_group():
    """Under DDP, destroy the process group while the interpreter is still whole: left to interpreter shutdown, gloo's
    threads can abort the process ("terminate called without an active exception", PyTorch issue 190489; seen on a
    2-task SLURM job). Only on orderly ends, where every rank gets here."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

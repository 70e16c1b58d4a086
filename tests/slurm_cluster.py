"""A real single-node SLURM cluster on this machine, for the tests (and for trying the cluster path by hand).

    python -m tests.slurm_cluster start [DIR]   # prints the SLURM_CONF=... to export
    python -m tests.slurm_cluster stop [DIR]

Debian's slurm-wlm and munge, daemons started by hand (no systemd): munged, slurmctld and slurmd, all configured from
files in DIR (default /tmp/nnlab-slurm). What such a machine needs: ProctrackType=proctrack/linuxproc and
TaskPlugin=task/none (no cgroups to manage), SelectType=select/cons_tres (CPUs and memory as consumable resources),
EnforcePartLimits=ALL (an impossible request is refused at submission instead of pending forever), RealMemory from
/proc/meminfo. There is no accounting database (sacct fails).
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DIR = Path("/tmp/nnlab-slurm")
DAEMONS = ("slurmctld", "slurmd", "munged", "sinfo", "sbatch", "srun")


def missing_binaries() -> list[str]:
    return [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 1024  # leave 1 GiB to the system
    raise RuntimeError("no MemTotal in /proc/meminfo")


def write_config(root: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    for d in ("state", "spool", "log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=nnlab
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
EnforcePartLimits=ALL
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
# A requeued job starts again at once (default: 120 s after it ended).
MinJobAge=300
KillWait=10
# A job that does not say how much memory it needs gets its CPUs' share, not the whole node.
DefMemPerCPU={memory_mb() // os.cpu_count()}
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mb()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=60 State=UP
""")
    return conf


def run(*cmd, env=None):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)


def start_munge():
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
        return
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    run("runuser", "-u", "munge", "--", "/usr/sbin/munged")


def start(root: Path = DEFAULT_DIR, timeout: float = 60) -> Path:
    """Start munged, slurmctld and slurmd on a fresh config in root; returns the config (for SLURM_CONF)."""
    if missing_binaries():
        raise RuntimeError(f"SLURM is not installed ({', '.join(missing_binaries())} not found): "
                           "apt-get install slurm-wlm munge")
    stop(root)
    if root.exists():
        shutil.rmtree(root)
    conf = write_config(root)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    start_munge()
    run("/usr/sbin/slurmctld", "-f", str(conf), "-c", env=env)  # -c: no state from an earlier cluster
    run("/usr/sbin/slurmd", "-f", str(conf), env=env)
    deadline = time.monotonic() + timeout
    while True:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env).stdout.strip()
        if state == "idle":
            return conf
        if time.monotonic() > deadline:
            logs = "".join((root / "log" / f).read_text()[-2000:] for f in ("slurmctld.log", "slurmd.log")
                           if (root / "log" / f).exists())
            raise RuntimeError(f"the local SLURM node is {state or 'not answering'} after {timeout} s:\n{logs}")
        time.sleep(0.5)


def stop(root: Path = DEFAULT_DIR):
    """Stop the daemons started from root (munged stays: other users of this machine may need it)."""
    for name in ("slurmd", "slurmctld"):
        pid_file = root / f"{name}.pid"
        if pid_file.is_file():
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, 15)
                for _ in range(100):
                    os.kill(pid, 0)
                    time.sleep(0.1)
            except (ProcessLookupError, ValueError):
                pass
            pid_file.unlink(missing_ok=True)


if __name__ == "__main__":
    action = sys.argv[1] if len(sys.argv) > 1 else "start"
    where = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_DIR
    if action == "start":
        print(f"export SLURM_CONF={start(where)}")
    elif action == "stop":
        stop(where)
    else:
        sys.exit(f"usage: python -m tests.slurm_cluster start|stop [DIR] (not {action!r})")

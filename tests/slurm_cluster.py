"""A real single-node SLURM cluster on this machine, for the tests (and for trying the cluster path by hand).

    python -m tests.slurm_cluster start [DIR]   # prints the SLURM_CONF=... to export
    python -m tests.slurm_cluster stop [DIR]

Debian's slurm-wlm, slurmdbd, mariadb-server and munge, daemons started by hand (no systemd): munged, a MariaDB server
for accounting, slurmdbd, slurmctld and slurmd, all configured from files in DIR (default /tmp/nnlab-slurm). What such
a machine needs: ProctrackType=proctrack/linuxproc and TaskPlugin=task/none (no cgroups to manage),
SelectType=select/cons_tres (CPUs and memory as consumable resources), EnforcePartLimits=ALL (an impossible request is
refused at submission instead of pending forever), RealMemory from /proc/meminfo. Accounting is real (sacct works):
submitit asks sacct for the state of a job that ended without a result, which it cannot learn otherwise.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DIR = Path("/tmp/nnlab-slurm")
DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "mariadb-install-db", "sinfo", "sbatch", "srun",
           "sacctmgr")
INSTALL = "apt-get install slurm-wlm slurmdbd mariadb-server munge"


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


def write_config(root: Path, dbd_port: int) -> Path:
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
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={dbd_port}
SchedulerType=sched/backfill
# Finished jobs stay visible to squeue for 5 minutes; SIGKILL follows SIGTERM after 10 s.
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


def wait_for(what: str, ready, timeout: float, logs: list[Path]):
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tails = "".join(f"--- {f}\n{f.read_text()[-2000:]}" for f in logs if f.exists())
            raise RuntimeError(f"{what} did not start in {timeout} s:\n{tails}")
        time.sleep(0.3)


def start_accounting(root: Path, dbd_port: int, env: dict, timeout: float):
    """A MariaDB server on a free local port with a database user for slurmdbd, then slurmdbd on dbd_port."""
    data, sock, db_port = root / "mysql", root / "mysql.sock", free_port()
    run("mariadb-install-db", "--user=root", f"--datadir={data}", "--auth-root-authentication-method=socket",
        "--skip-test-db")
    log = root / "log" / "mariadb.log"
    subprocess.Popen(["/usr/sbin/mariadbd", "--no-defaults", "--user=root", f"--datadir={data}", f"--socket={sock}",
                      f"--port={db_port}", "--bind-address=127.0.0.1", f"--pid-file={root / 'mariadb.pid'}",
                      f"--log-error={log}", "--skip-name-resolve"], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    sql = lambda q: subprocess.run(["mariadb", f"--socket={sock}", "-u", "root", "-e", q],  # noqa: E731
                                   capture_output=True, text=True)
    wait_for("MariaDB", lambda: sql("SELECT 1").returncode == 0, timeout, [log])
    user = sql("CREATE USER 'slurm'@'%' IDENTIFIED BY 'nnlab'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'%';")
    if user.returncode != 0:
        raise RuntimeError(f"could not create slurmdbd's database user: {user.stderr.strip()}")
    dbd_conf = root / "slurmdbd.conf"  # beside slurm.conf, where slurmdbd looks; only its owner may read it
    dbd_conf.write_text(f"""\
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
PidFile={root}/slurmdbd.pid
LogFile={root}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser=slurm
StoragePass=nnlab
StorageLoc=slurm_acct_db
""")
    dbd_conf.chmod(0o600)
    run("/usr/sbin/slurmdbd", env=env)
    up = lambda: subprocess.run(["sacctmgr", "-n", "list", "cluster"], capture_output=True, env=env).returncode == 0  # noqa: E731
    wait_for("slurmdbd", up, timeout, [root / "log" / "slurmdbd.log"])
    run("sacctmgr", "-i", "add", "cluster", "nnlab", env=env)


def start(root: Path = DEFAULT_DIR, timeout: float = 60) -> Path:
    """Start munged, MariaDB, slurmdbd, slurmctld and slurmd on a fresh config in root; returns the config (for
    SLURM_CONF)."""
    if missing_binaries():
        raise RuntimeError(f"SLURM is not installed ({', '.join(missing_binaries())} not found): {INSTALL}")
    stop(root)
    if root.exists():
        shutil.rmtree(root)
    dbd_port = free_port()
    conf = write_config(root, dbd_port)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    start_munge()
    start_accounting(root, dbd_port, env, timeout)
    run("/usr/sbin/slurmctld", "-f", str(conf), "-c", env=env)  # -c: no state from an earlier cluster
    run("/usr/sbin/slurmd", "-f", str(conf), env=env)
    idle = lambda: subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,  # noqa: E731
                                  env=env).stdout.strip() == "idle"
    wait_for("the local SLURM node", idle, timeout, [root / "log" / f for f in ("slurmctld.log", "slurmd.log")])
    return conf


def stop(root: Path = DEFAULT_DIR):
    """Stop the daemons started from root (munged stays: other users of this machine may need it)."""
    for name in ("slurmd", "slurmctld", "slurmdbd", "mariadb"):
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

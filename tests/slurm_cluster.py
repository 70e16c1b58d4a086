"""A real SLURM cluster of one or more compute nodes on this one machine, for the tests (and for trying the cluster
path by hand).

    python -m tests.slurm_cluster start [--nodes 2] [DIR]   # prints the SLURM_CONF=... to export
    python -m tests.slurm_cluster stop [DIR]

Debian's slurm-wlm, slurmdbd, mariadb-server and munge, daemons started by hand (no systemd), all configured from
files in DIR (default /tmp/nnlab-slurm) and stopped by the PIDs recorded there: a munged of its own (its socket in
DIR, so other munge users of the machine are not touched), a MariaDB server for accounting, slurmdbd, slurmctld, and
one slurmd per node. What such a machine needs: ProctrackType=proctrack/linuxproc and TaskPlugin=task/none (no
cgroups to manage), SelectType=select/cons_tres (CPUs and memory as consumable resources), EnforcePartLimits=ALL (an
impossible request is refused at submission instead of pending forever), RealMemory from /proc/meminfo. Accounting is
real (sacct works): submitit asks sacct for the state of a job that ended without a result.

Several nodes on one machine: node i is named n<i> and has the address 127.0.0.<i>. Its slurmd runs in a mount and
UTS namespace of its own (`unshare --mount --uts`) whose hostname is n<i>, so the jobs it starts (they inherit the
namespace) see that hostname, as on a real node. Every node offers all of the machine's CPUs (the nodes share them)
and its share of the memory. The partition places a job on its least loaded node (LLN), so that jobs and array tasks
spread over the nodes as a busy cluster spreads them.

Loopback only: every address this cluster uses is in 127.0.0.0/8, and no name needs a DNS server.
- The daemons find each other by the addresses in slurm.conf (NodeAddr, SlurmctldHost, AccountingStorageHost,
  DbdAddr), all loopback. slurmctld listens on 127.0.0.1 only (NoCtldInAddrAny); slurmd and srun listen on every
  address, each on a port of its own: a connection from inside n2's namespace leaves from 127.0.0.1 (the kernel's
  source address for loopback) and is answered there, so with NoInAddrAny an srun on n2 listened on 127.0.0.2 alone
  and its tasks' I/O connection was refused ("Slurmd could not connect IO").
- Inside each node's namespace a bind mount puts DIR/hosts over /etc/hosts: localhost, this machine's name and the
  node names map to their loopback addresses, also in the ::ffff:127.x form that torch's TCPStore looks up in reverse;
  and DIR/resolv.conf over /etc/resolv.conf names a nameserver on 127.0.0.1, so a stray lookup stays on loopback.
  The machine's own /etc/hosts is never edited.
- A SLURM client without a configuration asks DNS for the controller (an SRV lookup): tests/conftest.py sets
  SLURM_CONF for the whole test session (to this cluster's slurm.conf, or to a file that does not exist, which makes
  a client fail instead of looking anywhere), and every process a test starts inherits it, the sbatch, squeue, sacct
  and scancel that submitit runs and the jobs' own srun included.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DEFAULT_DIR = Path("/tmp/nnlab-slurm")
DAEMONS = (
    "slurmctld",
    "slurmd",
    "slurmdbd",
    "munged",
    "mungekey",
    "mariadbd",
    "mariadb-install-db",
    "sinfo",
    "sbatch",
    "srun",
    "sacctmgr",
    "unshare",
)
INSTALL = "apt-get install slurm-wlm slurmdbd mariadb-server munge"
PIDS = "pids"  # in DIR: one line per process this module started, "<pid> <name>"


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


def node_names(nodes: int) -> list[str]:
    return [f"n{i}" for i in range(1, nodes + 1)]


def write_config(root: Path, nodes: int, dbd_port: int) -> Path:
    host = socket.gethostname().split(".")[0]
    for d in ("state", "log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    names = node_names(nodes)
    hosts = [f"127.0.0.1 localhost {host}", "::1 localhost ip6-localhost"]
    for i, name in enumerate(names, 1):
        hosts += [f"127.0.0.{i} {name}", f"::ffff:127.0.0.{i} {name}"]
    (root / "hosts").write_text("\n".join(hosts) + "\n")
    (root / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    memory = memory_mb() // nodes
    node_lines = "\n".join(
        f"NodeName={name} NodeAddr=127.0.0.{i} Port={free_port()} CPUs={os.cpu_count()} "
        f"RealMemory={memory} State=UNKNOWN"
        for i, name in enumerate(names, 1)
    )
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=nnlab
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge.sock
CommunicationParameters=NoCtldInAddrAny
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
EnforcePartLimits=ALL
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd_port}
AccountingStoragePass={root}/munge.sock
SchedulerType=sched/backfill
# Pending jobs looked at every 2 s (default 60 s): a requeued job whose start time came waits no longer.
SchedulerParameters=sched_interval=2,bf_interval=1
# Finished jobs stay visible to squeue for 5 minutes; SIGKILL follows SIGTERM after 10 s.
MinJobAge=300
KillWait=10
# A job that does not say how much memory it needs gets its CPUs' share, not the whole node.
DefMemPerCPU={memory // os.cpu_count()}
{node_lines}
PartitionName=debug Nodes=ALL Default=YES MaxTime=60 LLN=YES State=UP
""")
    return conf


def run(*cmd, env=None):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)


def started(root: Path, pid: int, name: str):
    with open(root / PIDS, "a") as f:
        f.write(f"{pid} {name}\n")


def pid_from(file: Path, timeout: float = 10) -> int:
    """The PID a daemon wrote to its pid file once it had forked into the background."""
    deadline = time.monotonic() + timeout
    while not (file.is_file() and file.read_text().strip()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{file} was not written in {timeout} s")
        time.sleep(0.05)
    return int(file.read_text().strip())


def start_munge(root: Path):
    """A munged of the cluster's own, on a socket in root, with a key made for it."""
    key = root / "munge.key"
    run("mungekey", "--create", f"--keyfile={key}")
    key.chmod(0o600)
    run(
        "/usr/sbin/munged",
        "--force",
        f"--socket={root}/munge.sock",
        f"--key-file={key}",
        f"--pid-file={root}/munged.pid",
        f"--log-file={root}/log/munged.log",
        f"--seed-file={root}/munged.seed",
    )
    started(root, pid_from(root / "munged.pid"), "munged")


def wait_for(what: str, ready, timeout: float, logs: list[Path]):
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tails = "".join(f"--- {f}\n{f.read_text()[-2000:]}" for f in logs if f.exists())
            raise RuntimeError(f"{what} did not start in {timeout} s:\n{tails}")
        time.sleep(0.2)


def start_accounting(root: Path, dbd_port: int, env: dict, timeout: float):
    """A MariaDB server on a free local port with a database user for slurmdbd, then slurmdbd on dbd_port."""
    data, sock, db_port = root / "mysql", root / "mysql.sock", free_port()
    run(
        "mariadb-install-db",
        "--user=root",
        f"--datadir={data}",
        "--auth-root-authentication-method=socket",
        "--skip-test-db",
    )
    log = root / "log" / "mariadb.log"
    db = subprocess.Popen(
        [
            "/usr/sbin/mariadbd",
            "--no-defaults",
            "--user=root",
            f"--datadir={data}",
            f"--socket={sock}",
            f"--port={db_port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={root / 'mariadb.pid'}",
            f"--log-error={log}",
            "--skip-name-resolve",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    started(root, db.pid, "mariadbd")
    sql = lambda q: subprocess.run(
        ["mariadb", f"--socket={sock}", "-u", "root", "-e", q],
        capture_output=True,
        text=True,
    )
    wait_for("MariaDB", lambda: sql("SELECT 1").returncode == 0, timeout, [log])
    user = sql("CREATE USER 'slurm'@'%' IDENTIFIED BY 'nnlab'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'%';")
    if user.returncode != 0:
        raise RuntimeError(f"could not create slurmdbd's database user: {user.stderr.strip()}")
    dbd_conf = root / "slurmdbd.conf"  # beside slurm.conf, where slurmdbd looks; only its owner may read it
    dbd_conf.write_text(f"""\
AuthType=auth/munge
AuthInfo=socket={root}/munge.sock
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
    started(root, pid_from(root / "slurmdbd.pid"), "slurmdbd")
    up = lambda: subprocess.run(["sacctmgr", "-n", "list", "cluster"], capture_output=True, env=env).returncode == 0
    wait_for("slurmdbd", up, timeout, [root / "log" / "slurmdbd.log"])
    run("sacctmgr", "-i", "add", "cluster", "nnlab", env=env)


def start_node(root: Path, conf: Path, name: str, env: dict):
    """slurmd for node `name` in a mount and UTS namespace of its own: hostname `name`, the cluster's hosts and
    resolv.conf bind-mounted over the machine's (the mounts are private to the namespace)."""
    inside = (
        f"mount --bind {root}/hosts /etc/hosts && mount --bind {root}/resolv.conf /etc/resolv.conf && "
        f"hostname {name} && exec /usr/sbin/slurmd -D -f {conf}"
    )
    with open(root / "log" / f"slurmd-{name}.stderr", "w") as log:  # the daemon keeps its own copy of the file
        proc = subprocess.Popen(
            ["unshare", "--mount", "--uts", "sh", "-c", inside],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    started(root, proc.pid, f"slurmd {name}")  # exec: the same process from unshare to slurmd


def start(root: Path = DEFAULT_DIR, nodes: int = 2, timeout: float = 60) -> Path:
    """Start munged, MariaDB, slurmdbd, slurmctld and one slurmd per node on a fresh config in root; returns the
    config (for SLURM_CONF)."""
    if missing_binaries():
        raise RuntimeError(f"SLURM is not installed ({', '.join(missing_binaries())} not found): {INSTALL}")
    stop(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    dbd_port = free_port()
    conf = write_config(root, nodes, dbd_port)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    start_munge(root)
    start_accounting(root, dbd_port, env, timeout)
    run("/usr/sbin/slurmctld", "-f", str(conf), "-c", env=env)  # -c: no state from an earlier cluster
    started(root, pid_from(root / "slurmctld.pid"), "slurmctld")
    for name in node_names(nodes):
        start_node(root, conf, name, env)
    states = lambda: subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%t"],
        capture_output=True,
        text=True,
        env=env,
    ).stdout.split()
    wait_for(
        f"{nodes} idle SLURM nodes",
        lambda: states() == ["idle"] * nodes,
        timeout,
        [
            root / "log" / f
            for f in (
                "slurmctld.log",
                *(f"slurmd-{n}.log" for n in node_names(nodes)),
                *(f"slurmd-{n}.stderr" for n in node_names(nodes)),
            )
        ],
    )
    return conf


def stop(root: Path = DEFAULT_DIR, timeout: float = 15):
    """Stop every process start() recorded, by PID: SIGTERM to all, the last started first; SIGKILL to any still
    running after `timeout` seconds."""
    pids_file = root / PIDS
    if not pids_file.is_file():
        return
    pids = [int(line.split()[0]) for line in reversed(pids_file.read_text().splitlines())]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            while time.monotonic() < deadline:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:  # a child of this process (slurmd, MariaDB): reaped
                    break
                os.kill(pid, 0)
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        except ChildProcessError:  # not a child of this process: wait until it is gone
            try:
                while time.monotonic() < deadline:
                    os.kill(pid, 0)
                    time.sleep(0.1)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        except ProcessLookupError:
            pass
    pids_file.unlink()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.slurm_cluster", description="a local SLURM cluster")
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("dir", nargs="?", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--nodes", type=int, default=2, help="compute nodes n1..nN at 127.0.0.1..N (default 2)")
    args = parser.parse_intermixed_args()
    if args.action == "start":
        print(f"export SLURM_CONF={start(args.dir, args.nodes)}")
    else:
        stop(args.dir)

"""A real Slurm cluster on localhost for the tests, as shared/reference/clusters.md says:
munged, slurmctld and two slurmd "nodes" (n1, n2) on 127.0.0.1, started in the
foreground and stopped by PID; the Debian packages are installed when missing."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from daemons import daemon, install_missing


def install_slurm() -> None:
    install_missing("slurmctld", "slurmd", "sbatch", "munged")


def slurm_conf(folder: Path, host: str) -> str:
    return f"""ClusterName=ftx
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool-%n
SlurmctldPidFile={folder}/run/slurmctld.pid
SlurmdPidFile={folder}/run/slurmd-%n.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=60
SlurmctldPort={_free()}
NodeName=n1 NodeHostname={host} NodeAddr=127.0.0.1 Port={_free()} CPUs=1 RealMemory=4000
NodeName=n2 NodeHostname={host} NodeAddr=127.0.0.1 Port={_free()} CPUs=1 RealMemory=4000
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def munged(folder: Path) -> Iterator[None]:
    """munged for Slurm's credentials, on its own socket (stopped by PID)."""
    socket_path = folder / "munge.socket"
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["mungekey", "--create"], check=True, capture_output=True)
    command = [
        "munged",
        "--foreground",
        "--force",
        f"--socket={socket_path}",
        f"--pid-file={folder / 'munged.pid'}",
        f"--seed-file={folder / 'munge.seed'}",
        f"--log-file={folder / 'munged.log'}",
    ]
    with daemon(command, folder / "munged.out", socket_path.exists):
        yield


@contextlib.contextmanager
def slurm_cluster(folder: Path) -> Iterator[dict[str, str]]:
    """slurmctld + slurmd n1, n2; yields the environment clients need (SLURM_CONF)."""
    install_slurm()
    for sub in ("state", "run", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    host = socket.gethostname()
    conf.write_text(slurm_conf(folder, host))
    env = {"SLURM_CONF": str(conf)}
    os.environ.update(env)

    def idle() -> bool:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
        return out.returncode == 0 and out.stdout.split() == ["idle"]

    with contextlib.ExitStack() as stack:
        stack.enter_context(munged(folder))
        stack.enter_context(
            daemon(["slurmctld", "-D", "-f", str(conf)], folder / "slurmctld.out", conf.exists)
        )
        for node in ("n1", "n2"):
            stack.enter_context(
                daemon(
                    ["slurmd", "-D", "-f", str(conf), "-N", node],
                    folder / f"slurmd-{node}.out",
                    conf.exists,
                )
            )
        deadline = time.time() + 60
        while not idle():
            if time.time() > deadline:
                raise RuntimeError((folder / "log" / "slurmctld.log").read_text()[-2000:])
            time.sleep(0.2)
        yield env
    os.environ.pop("SLURM_CONF", None)

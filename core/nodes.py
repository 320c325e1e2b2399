"""The node contract: what every node of a multi-node run must be told to start its
launcher, whoever starts it (a user per node, Slurm, a Kubernetes operator).

A multi-node plan is written once. Its launch.sh reads this node's rank and the
master's address and port from ``FTX_NODE_RANK``, ``FTX_MASTER_ADDR`` and
``FTX_MASTER_PORT`` (the recipe's values when unset), so the same plan runs on every
node. ``ftx launch OUT`` fills them in from the scheduler's environment: Slurm's
(``SLURM_NODEID``, ``SLURM_JOB_NODELIST`` expanded by ``scontrol show hostnames``),
Kubeflow Trainer's (``PET_*``), MindCluster's (``MS_SCHED_HOST``, ``MS_NODE_RANK``), or
Volcano's and other operators' torch-style variables (``MASTER_ADDR``, ``MASTER_PORT``,
``RANK``, ``WORLD_SIZE`` counted in pods).
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ftx.core.errors import FtxError
from ftx.core.scripts import default_export

if TYPE_CHECKING:
    from ftx.core.recipe.schema import ParallelSection

NODES_FILE = "nodes.json"  # OUT/plan/nodes.json: the plan's contract (the recipe's values)
NODE_RANK = "FTX_NODE_RANK"
MASTER_ADDR = "FTX_MASTER_ADDR"
MASTER_PORT = "FTX_MASTER_PORT"
PER_NODE = (NODE_RANK, MASTER_ADDR, MASTER_PORT)  # what differs from the plan per node/job


def var(name: str) -> str:
    """A launch command argument's reference to a node contract variable."""
    return "${" + name + "}"


@dataclass(frozen=True)
class NodeContract:
    """One node's view of a multi-node run."""

    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int
    nproc_per_node: int

    @classmethod
    def of_recipe(cls, parallel: ParallelSection) -> NodeContract:
        """The recipe's ``parallel`` section as a contract (this node's, by its node_rank)."""
        return cls(
            parallel.nnodes,
            parallel.node_rank,
            parallel.master_addr,
            parallel.master_port,
            parallel.nproc_per_node,
        )

    @classmethod
    def plan_of(cls, parallel: ParallelSection) -> NodeContract:
        """The plan's contract: node 0's, so that every node's plan is the same file; each
        node's launch gives its own rank in the environment."""
        return replace(cls.of_recipe(parallel), node_rank=0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def read(cls, plan: Path) -> NodeContract:
        return cls(**json.loads((plan / NODES_FILE).read_text()))

    def environment(self) -> dict[str, str]:
        """The variables launch.sh reads."""
        return {
            NODE_RANK: str(self.node_rank),
            MASTER_ADDR: self.master_addr,
            MASTER_PORT: str(self.master_port),
        }

    def preamble(self) -> str:
        """launch.sh's lines that give each variable the plan's value unless set."""
        lines = [
            "# The node contract: `ftx launch` (Slurm, Kubernetes) sets these per node;\n"
            "# unset, they are the recipe's.\n"
        ]
        lines += [default_export(name, value) for name, value in self.environment().items()]
        return "".join(lines)

    def from_scheduler(self, env: Mapping[str, str]) -> tuple[NodeContract, str]:
        """This node's contract from the scheduler's environment (explicit ``FTX_*``
        first, then Kubeflow's ``PET_*``, torch-style operator variables, Slurm's);
        returns it and the source's name. The plan's values fill what none gives."""
        if NODE_RANK in env:
            found = replace(
                self,
                node_rank=int(env[NODE_RANK]),
                master_addr=env.get(MASTER_ADDR, self.master_addr),
                master_port=int(env.get(MASTER_PORT, self.master_port)),
            )
            return self._checked(found, self.nnodes, "FTX_* variables"), "FTX_* variables"
        if "PET_NODE_RANK" in env:
            found = replace(
                self,
                node_rank=int(env["PET_NODE_RANK"]),
                master_addr=env.get("PET_MASTER_ADDR", self.master_addr),
                master_port=int(env.get("PET_MASTER_PORT", self.master_port)),
            )
            nnodes = int(env.get("PET_NNODES", self.nnodes))
            return self._checked(found, nnodes, "Kubeflow Trainer (PET_*)"), "Kubeflow Trainer"
        if "MS_NODE_RANK" in env and "MS_SCHED_HOST" in env:  # MindCluster's AscendJob
            found = replace(
                self,
                node_rank=int(env["MS_NODE_RANK"]),
                master_addr=env["MS_SCHED_HOST"],
                master_port=int(env.get("MS_SCHED_PORT", self.master_port)),
            )
            workers, local = int(env.get("MS_WORKER_NUM", 0)), int(env.get("MS_LOCAL_WORKER", 0))
            nnodes = workers // local if workers and local else self.nnodes
            return self._checked(found, nnodes, "MindCluster (MS_*)"), "MindCluster"
        if "MASTER_ADDR" in env and "RANK" in env and "SLURM_JOB_ID" not in env:
            found = replace(
                self,
                node_rank=int(env["RANK"]),
                master_addr=env["MASTER_ADDR"],
                master_port=int(env.get("MASTER_PORT", self.master_port)),
            )
            nnodes = int(env.get("WORLD_SIZE", self.nnodes))
            return self._checked(found, nnodes, "MASTER_ADDR/RANK"), "MASTER_ADDR/RANK"
        if "SLURM_JOB_ID" in env:
            hosts = expand_nodelist(env.get("SLURM_JOB_NODELIST") or env["SLURM_NODELIST"])
            found = replace(
                self,
                node_rank=int(env["SLURM_NODEID"]),
                master_addr=host_address(hosts[0]),
                master_port=slurm_port(self.master_port, env),
            )
            nnodes = int(env.get("SLURM_NNODES", len(hosts)))
            return self._checked(found, nnodes, "Slurm (SLURM_NNODES)"), "Slurm"
        if self.nnodes > 1:
            raise FtxError(
                f"this plan runs on {self.nnodes} nodes, and nothing says which one this is",
                where="ftx launch",
                fix="run it under a scheduler (srun, a Kubernetes operator), or set"
                f" {NODE_RANK} (and {MASTER_ADDR}, {MASTER_PORT}) on each node",
            )
        return self, "the plan"

    def _checked(self, found: NodeContract, nnodes: int, source: str) -> NodeContract:
        if nnodes != self.nnodes:
            raise FtxError(
                f"{source} gives {nnodes} nodes; the plan was written for {self.nnodes}",
                where="parallel.nnodes",
                fix=f"submit with --nodes {self.nnodes} (or plan again with"
                f" parallel.nnodes={nnodes})",
            )
        if not 0 <= found.node_rank < self.nnodes:
            raise FtxError(
                f"{source} gives node rank {found.node_rank}, outside 0..{self.nnodes - 1}",
                where="ftx launch",
                fix="check the scheduler's task layout: one task per node",
            )
        return found


def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's compressed host list (``n[1-2],gpu07``) as host names, by ``scontrol``."""
    result = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True
    )
    hosts = result.stdout.split()
    if result.returncode != 0 or not hosts:
        raise FtxError(
            f"scontrol could not expand the node list '{nodelist}': {result.stderr.strip()}",
            where="SLURM_JOB_NODELIST",
            fix="run `ftx launch` inside a Slurm allocation with scontrol on PATH",
        )
    return hosts


def host_address(host: str) -> str:
    """An address the other nodes reach ``host`` at: DNS, else Slurm's NodeAddr."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        pass
    result = subprocess.run(["scontrol", "show", "node", host], capture_output=True, text=True)
    for field in result.stdout.split():
        if field.startswith("NodeAddr="):
            return field.removeprefix("NodeAddr=")
    raise FtxError(
        f"cannot find the address of node {host}",
        where="SLURM_JOB_NODELIST",
        fix="make node names resolvable, or give NodeAddr in slurm.conf",
    )


def slurm_port(planned: int, env: Mapping[str, str]) -> int:
    """The recipe's master port, unless it is the default: then one derived from the job
    id, so two jobs sharing a node do not meet on the same port."""
    if planned != 29500:
        return planned
    return 20000 + int(env["SLURM_JOB_ID"]) % 20000 * 2  # even: the preflight takes port + 1


def plan_digest(plan: Path) -> str:
    """What every node must agree on: OUT/plan's files (written once, or by each node
    from the same recipe: the same files, since a node's rank is not in them)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in plan.iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()

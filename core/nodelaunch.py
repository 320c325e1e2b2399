"""What a node of a Kubernetes job runs in the backend's image (standard library only:
an image holds its lock's packages and ftx, not the core's dependencies):

    python -m ftx.core.nodelaunch OUT

This node's contract from the operator's variables (ftx.core.nodes), the multi-node
preflight, then OUT/plan/launch.sh under ftx.core.supervise (signals reach the workers,
which checkpoint). Node 0 writes OUT/logs/launch.log, node N launch.nodeN.log.
`ftx launch` (with the core installed: Slurm, hosts) does the same and keeps run.json.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ftx.core.contract import RunLayout
from ftx.core.errors import FtxError
from ftx.core.nodes import NODES_FILE, NodeContract, plan_digest
from ftx.core.preflight import Topology, run_preflight
from ftx.core.supervise import supervise


def node_of(layout: RunLayout) -> tuple[NodeContract, str]:
    """This node's contract: the plan's, with what the scheduler says about this node."""
    planned = (
        NodeContract.read(layout.plan)
        if (layout.plan / NODES_FILE).exists()
        else NodeContract(1, 0, "127.0.0.1", 29500, 1)
    )
    return planned.from_scheduler(os.environ)


def node_log(layout: RunLayout, node: NodeContract) -> Path:
    return (
        layout.launch_log
        if node.node_rank == 0
        else layout.logs / f"launch.node{node.node_rank}.log"
    )


def main(out: Path) -> int:
    layout = RunLayout(out.resolve())
    node, source = node_of(layout)
    print(f"[ftx] node {node.node_rank} of {node.nnodes} (from {source}), master"
          f" {node.master_addr}:{node.master_port}", flush=True)  # fmt: skip
    if node.nnodes > 1:
        run_preflight(Topology.of(node), plan_digest(layout.plan))
    layout.logs.mkdir(parents=True, exist_ok=True)
    with node_log(layout, node).open("a") as handle:

        def tee(line: str) -> None:
            handle.write(line)
            handle.flush()
            print(line, end="", flush=True)

        env = {**os.environ, **node.environment(), "PYTHONUNBUFFERED": "1"}
        return supervise(["bash", str(layout.launch_script)], env, layout.root, tee)


if __name__ == "__main__":
    try:
        sys.exit(main(Path(sys.argv[1])))
    except FtxError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        sys.exit(exc.exit_code)

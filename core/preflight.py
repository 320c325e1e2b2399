"""Multi-node preflight: before launching, every node checks it can reach the master and
that all nodes run the same recipe, so a job fails in seconds with a reason instead of
hanging in a rendezvous.

Node 0 listens on ``master_port + 1``; every other node connects, sends its node rank
and recipe hash, and gets back the master's verdict. Node 0 waits until all
``nnodes - 1`` peers have reported (or the timeout), then answers each of them.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass

from ftx.core.errors import FtxError
from ftx.core.nodes import NodeContract


@dataclass(frozen=True)
class Topology:
    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int

    @classmethod
    def of(cls, contract: NodeContract) -> Topology:
        return cls(contract.nnodes, contract.node_rank, contract.master_addr, contract.master_port)

    @property
    def preflight_port(self) -> int:
        return self.master_port + 1


def run_preflight(topology: Topology, recipe_hash: str, timeout: float = 300.0) -> None:
    """Raise FtxError unless every node can meet and agrees on the recipe hash."""
    if topology.nnodes == 1:
        return
    if topology.node_rank == 0:
        _serve(topology, recipe_hash, timeout)
    else:
        _report(topology, recipe_hash, timeout)


def _serve(topology: Topology, recipe_hash: str, timeout: float) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("", topology.preflight_port))
    except OSError as exc:
        raise FtxError(
            f"node 0 cannot listen on port {topology.preflight_port} ({exc.strerror})",
            where="parallel.master_port",
            fix="pick a master_port whose next port is free on the master node",
        ) from None
    with server:
        _check_free(topology.master_port)
        server.listen(topology.nnodes)
        server.settimeout(1.0)
        peers: dict[int, tuple[socket.socket, str]] = {}
        deadline = time.time() + timeout
        while len(peers) < topology.nnodes - 1:
            if time.time() > deadline:
                for conn, _ in peers.values():
                    conn.close()
                missing = sorted(set(range(1, topology.nnodes)) - set(peers))
                raise FtxError(
                    f"node(s) {missing} did not reach the master at"
                    f" {topology.master_addr}:{topology.preflight_port} within {timeout:.0f} s",
                    where="parallel.master_addr",
                    fix="start ftx on every node, and check that master_addr is this node's"
                    " address as the others see it and that the port is open in the firewall",
                )
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(10)
            message = json.loads(conn.makefile().readline())
            peers[int(message["node_rank"])] = (conn, message["recipe_hash"])
        mismatched = sorted(rank for rank, (_, h) in peers.items() if h != recipe_hash)
        verdict = {"ok": not mismatched, "mismatched": mismatched, "hash": recipe_hash}
        for conn, _ in peers.values():
            conn.sendall((json.dumps(verdict) + "\n").encode())
            conn.close()
    if mismatched:
        raise _mismatch(mismatched, recipe_hash)


def _report(topology: Topology, recipe_hash: str, timeout: float) -> None:
    deadline = time.time() + timeout
    last_error = ""
    while time.time() < deadline:
        try:
            with socket.create_connection(
                (topology.master_addr, topology.preflight_port), timeout=5
            ) as conn:
                conn.sendall(
                    (
                        json.dumps({"node_rank": topology.node_rank, "recipe_hash": recipe_hash})
                        + "\n"
                    ).encode()
                )
                conn.settimeout(max(1.0, deadline - time.time()))
                verdict = json.loads(conn.makefile().readline())
            if not verdict["ok"]:
                raise _mismatch(verdict["mismatched"], verdict["hash"])
            return
        except (OSError, json.JSONDecodeError) as exc:
            last_error = str(exc)
            time.sleep(1.0)
    raise FtxError(
        f"node {topology.node_rank} cannot reach the master at"
        f" {topology.master_addr}:{topology.preflight_port} ({last_error})",
        where="parallel.master_addr",
        fix="start ftx on node 0 too, and check master_addr, the port and the firewall",
    )


def _check_free(port: int) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("", port))
    except OSError:
        raise FtxError(
            f"port {port} is already in use on the master node",
            where="parallel.master_port",
            fix="pick another master_port (the same on every node)",
        ) from None
    finally:
        listener.close()


def _mismatch(ranks: list[int], master_hash: str) -> FtxError:
    return FtxError(
        f"node(s) {ranks} run a different recipe than node 0 (recipe sha256 {master_hash[:12]}"
        " on node 0)",
        where="recipe",
        fix="use the same recipe file and overrides on every node (only parallel.node_rank"
        " may differ)",
    )

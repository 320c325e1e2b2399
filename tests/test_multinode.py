"""Multi-node preflight: the nodes agree on the plan, or the job fails naming the node
(the backend suite trains two "nodes" on localhost on every backend)."""

from __future__ import annotations

import socket
import threading

import pytest

from ftx.core.errors import FtxError
from ftx.core.preflight import Topology, run_preflight


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nodes(hashes: list[str], timeout: float = 20) -> list[Exception | None]:
    port = free_port()
    results: list[Exception | None] = [None] * len(hashes)

    def node(rank: int) -> None:
        try:
            run_preflight(Topology(len(hashes), rank, "127.0.0.1", port), hashes[rank], timeout)
        except FtxError as exc:
            results[rank] = exc

    threads = [threading.Thread(target=node, args=(r,)) for r in range(len(hashes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_preflight_passes_when_all_nodes_agree() -> None:
    assert nodes(["abc", "abc", "abc"]) == [None, None, None]


def test_preflight_names_the_node_with_another_recipe() -> None:
    results = nodes(["abc", "abc", "xyz"])
    assert all(isinstance(r, FtxError) for r in results)
    assert "node(s) [2] run a different recipe" in str(results[0])
    assert "node(s) [2]" in str(results[1])


def test_preflight_times_out_with_a_diagnosis() -> None:
    port = free_port()
    with pytest.raises(FtxError, match=r"cannot reach the master at 127.0.0.1"):
        run_preflight(Topology(2, 1, "127.0.0.1", port), "abc", timeout=2)
    with pytest.raises(FtxError, match=r"node\(s\) \[1\] did not reach the master"):
        run_preflight(Topology(2, 0, "127.0.0.1", port), "abc", timeout=2)

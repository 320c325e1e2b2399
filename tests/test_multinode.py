"""Multi-node: preflight agreement and a real two-"node" torchrun job on localhost."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from conftest import FTX, ROOT, run_nodes
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


@pytest.mark.slow
def test_two_nodes_train_together_through_torchrun(tmp_path: Path, tiny_llama: Path) -> None:
    port = free_port()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{path: {tiny_llama}}}\n"
        f"data: {{datasets: [{ROOT / 'recipes/data/quickstart_train.jsonl'}], max_seq_len: 64,"
        " max_samples: 32}\n"
        "method: {finetuning: full}\n"
        "train: {max_steps: 2, micro_batch_size: 2, logging_steps: 1}\n"
        f"parallel: {{nnodes: 2, nproc_per_node: 1, master_addr: 127.0.0.1, master_port: {port}}}\n"
    )
    run = [str(FTX), "run", str(recipe)]
    run_nodes(
        [[*run, "--out", str(tmp_path / f"node{r}"), f"parallel.node_rank={r}"] for r in (0, 1)],
        tmp_path / "logs",
    )
    launch = (tmp_path / "node1/plan/launch.sh").read_text()
    # one plan for every node: the rank comes from the node contract's variables
    assert "--nnodes=2" in launch and '"--node_rank=${FTX_NODE_RANK}"' in launch
    assert launch == (tmp_path / "node0/plan/launch.sh").read_text()
    rows = [json.loads(x) for x in (tmp_path / "node0/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert (tmp_path / "node0/final/model.safetensors").exists()

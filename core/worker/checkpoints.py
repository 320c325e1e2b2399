"""``OUT/checkpoints/checkpoint-<step>``: staged folders renamed into place when complete,
rotation, the resume point, and the host's RNG state (Python's and numpy's) beside the
framework's own state."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftx.core.contract import ContractError, RunLayout, read_record, write_record
from ftx.core.fsutil import publish_tree
from ftx.core.worker.framework import Rank

HOST_RNG = "rng_state.json"  # Python's and numpy's generators, as JSON (no pickle to read back)


@dataclass(frozen=True)
class TrainerState:
    """What a checkpoint's trainer_state.json records about the loop."""

    step: int
    tokens: int


class Checkpoints:
    """The run's checkpoints. The framework's part is one ``write(folder)`` call that saves
    weights, optimizer, schedule and RNG state into a folder; every rank makes it."""

    STATE = "trainer_state.json"

    def __init__(self, layout: RunLayout, keep: int | None):
        self.root = layout.checkpoints
        self.keep = keep

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        found = [p for p in self.root.glob("checkpoint-*") if (p / self.STATE).exists()]
        return sorted(found, key=lambda p: int(p.name.split("-")[-1]))

    def resume_point(self, setting: str | None) -> Path | None:
        """The checkpoint to resume from: 'auto' = the newest here, a path, or None."""
        if not setting:
            return None
        if setting == "auto":
            found = self.complete()
            return found[-1] if found else None
        return Path(setting)

    def save(
        self, step: int, state: TrainerState, rank: Rank, write: Callable[[Path], None]
    ) -> None:
        def complete(folder: Path) -> None:  # rank 0, once every rank has written
            write_record(folder / self.STATE, state)

        staged_on_every_rank(self.root / f"checkpoint-{step}", rank, write, complete)
        if rank.main:
            for old in self.complete()[: -self.keep] if self.keep else []:
                shutil.rmtree(old, ignore_errors=True)
        rank.barrier()

    @classmethod
    def state_of(cls, folder: Path) -> TrainerState:
        state = read_record(TrainerState, folder / cls.STATE)
        if state is None:
            raise ContractError(f"{folder}: not a complete checkpoint (no readable {cls.STATE})")
        return state


def staged_on_every_rank(
    final: Path,
    rank: Rank,
    write: Callable[[Path], None],
    complete: Callable[[Path], None] | None = None,
) -> None:
    """``final``, written by ``write(folder)`` on every rank into one staged folder (a fixed
    name, so every rank finds it) and renamed into place by rank 0 once all are done, so
    ``final`` is complete or absent."""
    tmp = final.with_name(f".{final.name}.partial")
    if rank.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    rank.barrier()
    write(tmp)
    rank.barrier()
    if rank.main:
        if complete is not None:
            complete(tmp)
        publish_tree(tmp)  # frameworks write some files private (0600)
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
    rank.barrier()


def save_host_rng(folder: Path) -> None:
    """Python's and numpy's global generators into ``folder``/rng_state.json."""
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    record = {
        "python": [version, list(state), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    (folder / HOST_RNG).write_text(json.dumps(record))


def load_host_rng(folder: Path) -> None:
    """Restore what :func:`save_host_rng` wrote."""
    record = json.loads((folder / HOST_RNG).read_text())
    version, state, gauss = record["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = record["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def seed_host(seed: int) -> None:
    """Seed Python's and numpy's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)

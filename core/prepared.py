"""The prepared-data format, readable with numpy alone (backend workers use it).

A prepared folder holds ``manifest.json`` and one sub-folder per split
(``train``, ``val``): ``input_ids.npy`` and ``labels.npy`` (int32, all examples
concatenated) and ``offsets.npy`` (int64, example i is ``offsets[i]:offsets[i+1]``).
Labels are aligned with input_ids (not shifted), -100 where not learned.
Packed splits add ``position_ids.npy`` (restarting at 0 for every packed example)
and ``segment_ids.npy`` (1, 2, ... per example of the row).
``eval.jsonl`` holds generation prompts: ``{"input_ids": [...], "reference": "..."}``.

Preference splits (stages dpo, rm) hold two aligned sub-splits, ``chosen/`` and
``rejected/``: pair i is row i of each (the same prompt, then each answer), read as a
:class:`PairedSplit`. Feedback splits (stage kto) are plain splits with ``kto_tag.npy``
(1: a desirable answer) and a ``kl/`` sub-split, row i being row i's prompt with another
row's answer (KTO's KL estimate), read as a :class:`FeedbackSplit`. Both add
``prompt_lengths.npy``: the prompt tokens of each example, before its answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ftx.core.errors import FtxError

FORMAT_VERSION = 4
KL_ROWS = "kl"  # a feedback split's mismatched rows
IGNORE_INDEX = -100  # the label of a token that is not learned


class PreparedSplit:
    """Random access to one split's examples."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._columns: dict[str, np.ndarray] = {}
        self.input_ids = np.load(folder / "input_ids.npy", mmap_mode="r")
        self.labels = np.load(folder / "labels.npy", mmap_mode="r")
        self.offsets = np.load(folder / "offsets.npy")
        packed = (folder / "position_ids.npy").exists()
        self.position_ids = np.load(folder / "position_ids.npy", mmap_mode="r") if packed else None
        self.segment_ids = np.load(folder / "segment_ids.npy", mmap_mode="r") if packed else None

    @property
    def packed(self) -> bool:
        return self.position_ids is not None

    def positions(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """position_ids and segment_ids of a packed row."""
        assert self.position_ids is not None and self.segment_ids is not None
        start, end = self.offsets[index], self.offsets[index + 1]
        return np.asarray(self.position_ids[start:end]), np.asarray(self.segment_ids[start:end])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def column(self, name: str) -> np.ndarray | None:
        """A per-example array written beside the split (``kto_tag``, ``prompt_lengths``,
        ``reference_logps``), read once it exists."""
        return _column(self.folder, self._columns, name)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.offsets[index], self.offsets[index + 1]
        return np.asarray(self.input_ids[start:end]), np.asarray(self.labels[start:end])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def padded(self, indices: Sequence[int], pad_id: int) -> dict[str, np.ndarray]:
        """A micro-batch as int64 arrays right-padded to its longest row: input_ids (pad_id on
        padding), labels (-100 there), token_mask (1 on real tokens) and, for packed splits,
        position_ids and segment_ids (0 on padding). Every worker's collate starts here."""
        batch = padded_rows([self[i] for i in indices], pad_id)
        if self.packed:
            for name in ("position_ids", "segment_ids"):
                batch[name] = np.zeros_like(batch["input_ids"])
            for r, index in enumerate(indices):
                positions, segments = self.positions(index)
                batch["position_ids"][r, : len(positions)] = positions
                batch["segment_ids"][r, : len(segments)] = segments
        return batch


def padded_rows(
    rows: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int
) -> dict[str, np.ndarray]:
    """(ids, labels) rows as int64 arrays right-padded to the longest: input_ids (pad_id on
    padding), labels (-100 there) and token_mask (1 on real tokens)."""
    width = max(len(ids) for ids, _ in rows)
    batch = {
        "input_ids": np.full((len(rows), width), pad_id, dtype=np.int64),
        "labels": np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64),
        "token_mask": np.zeros((len(rows), width), dtype=np.int64),
    }
    for r, (ids, labels) in enumerate(rows):
        batch["input_ids"][r, : len(ids)] = ids
        batch["labels"][r, : len(labels)] = labels
        batch["token_mask"][r, : len(ids)] = 1
    return batch


def write_split(
    folder: Path,
    examples: Sequence[tuple[Sequence[int], Sequence[int]]],
    groups: list[list[int]] | None = None,
) -> None:
    """Write examples (input_ids, labels) as one split. With ``groups`` (example indices
    per packed row) the rows are the groups' examples end to end, with position_ids
    restarting per example and segment_ids numbering the examples 1.. within a row."""
    folder.mkdir(parents=True, exist_ok=True)
    order = list(range(len(examples))) if groups is None else [i for g in groups for i in g]
    lengths = np.fromiter((len(examples[i][0]) for i in order), dtype=np.int64, count=len(order))
    if groups is None:
        row_lengths = lengths
    else:
        ends = np.cumsum([len(g) for g in groups], dtype=np.int64)  # last example of each row
        row_lengths = np.diff(np.concatenate([[0], np.cumsum(lengths)[ends - 1]]))
        starts = np.cumsum(lengths) - lengths
        total = int(lengths.sum())
        positions = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
        segment = np.concatenate([np.arange(1, len(g) + 1) for g in groups]) if groups else []
        np.save(folder / "position_ids.npy", positions.astype(np.int32))
        np.save(folder / "segment_ids.npy", np.repeat(segment, lengths).astype(np.int32))
    offsets = np.concatenate([[0], np.cumsum(row_lengths)]).astype(np.int64)
    np.save(folder / "input_ids.npy", _flat([examples[i][0] for i in order]))
    np.save(folder / "labels.npy", _flat([examples[i][1] for i in order]))
    np.save(folder / "offsets.npy", offsets)


class PairedSplit:
    """A preference split: pair i is the chosen and the rejected row i (one prompt)."""

    packed = False

    def __init__(self, folder: Path):
        self.folder = folder
        self._columns: dict[str, np.ndarray] = {}
        self.chosen = PreparedSplit(folder / "chosen")
        self.rejected = PreparedSplit(folder / "rejected")
        if len(self.chosen) != len(self.rejected):
            raise ValueError(
                f"{folder}: {len(self.chosen)} chosen rows, {len(self.rejected)} rejected"
            )

    def __len__(self) -> int:
        return len(self.chosen)

    def __getitem__(self, index: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        return self.chosen[index], self.rejected[index]

    def lengths(self) -> np.ndarray:
        """The longer answer's row length of each pair."""
        return np.maximum(self.chosen.lengths(), self.rejected.lengths())

    def column(self, name: str) -> np.ndarray | None:
        """A per-pair array beside the split (``prompt_lengths``, ``reference_logps``), read
        once it exists."""
        return _column(self.folder, self._columns, name)


def _column(folder: Path, cache: dict[str, np.ndarray], name: str) -> np.ndarray | None:
    if name not in cache:
        path = folder / f"{name}.npy"
        if not path.exists():
            return None  # not cached: precomputed reference log-probs appear later
        cache[name] = np.load(path)
    return cache[name]


class FeedbackSplit(PreparedSplit):
    """A KTO split: each row tagged (``kto_tag``), with its KL row in :attr:`kl`."""

    def __init__(self, folder: Path):
        super().__init__(folder)
        self.kl = PreparedSplit(folder / KL_ROWS)
        if len(self.kl) != len(self):
            raise ValueError(f"{folder}: {len(self)} rows, {len(self.kl)} KL rows")


def write_pairs(
    folder: Path,
    pairs: Sequence[
        tuple[tuple[Sequence[int], Sequence[int]], tuple[Sequence[int], Sequence[int]]]
    ],
    prompt_lengths: Sequence[int],
) -> None:
    """Write preference pairs ((chosen ids, labels), (rejected ids, labels)) as a split."""
    write_split(folder / "chosen", [chosen for chosen, _ in pairs])
    write_split(folder / "rejected", [rejected for _, rejected in pairs])
    np.save(folder / "prompt_lengths.npy", np.asarray(prompt_lengths, dtype=np.int32))


def _flat(rows: list[Sequence[int]]) -> np.ndarray:
    """All rows (int arrays or lists) end to end as one int32 array."""
    if not rows:
        return np.zeros(0, dtype=np.int32)
    return np.concatenate([np.asarray(r, dtype=np.int32) for r in rows])


def read_manifest(root: Path) -> dict[str, Any]:
    """A prepared folder's manifest.json; an FtxError when it is missing or unreadable."""
    path = root / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FtxError(
            "not a prepared data folder (no manifest.json)",
            where=str(root),
            fix="point at a folder written by `ftx data prepare`, or give the recipe instead",
        ) from None
    except (ValueError, OSError) as exc:
        raise FtxError(
            f"the manifest cannot be read ({exc})",
            where=str(path),
            fix="prepare the data again with `ftx data prepare --force`",
        ) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise FtxError(
            "the manifest is not a prepared-data manifest",
            where=str(path),
            fix="prepare the data again with `ftx data prepare --force`",
        )
    return manifest


def load_split(root: Path, name: str) -> PreparedSplit | PairedSplit | None:
    """A split of a prepared folder (a :class:`PairedSplit` for preference data, a
    :class:`FeedbackSplit` for KTO's), or None when it has no such split."""
    folder = root / name
    if (folder / "chosen" / "offsets.npy").exists():
        return PairedSplit(folder)
    if (folder / KL_ROWS / "offsets.npy").exists():
        return FeedbackSplit(folder)
    return PreparedSplit(folder) if (folder / "offsets.npy").exists() else None


def read_eval_prompts(root: Path) -> list[dict[str, Any]]:
    path = root / "eval.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

"""Pack examples into rows of max_seq_len with first-fit-decreasing over the whole dataset.

Each packed row keeps its examples' boundaries: position_ids restart at 0 for
every example and segment_ids number the examples of the row from 1 (0 is
padding), so a backend can keep attention inside each example. The rows themselves
are laid out by ``ftx.core.prepared.write_split`` from the groups chosen here.
"""

from __future__ import annotations

import numpy as np


class _FirstFit:
    """Bins with a max-tree over their free space: the leftmost bin that fits in O(log n)."""

    def __init__(self, capacity: int, max_bins: int):
        self.capacity = capacity
        self.size = 1
        while self.size < max_bins:
            self.size *= 2
        self.tree = np.full(2 * self.size, capacity, dtype=np.int64)

    def place(self, length: int) -> int:
        """Index of the leftmost bin with room for ``length``; reserves the room."""
        node = 1
        while node < self.size:
            node = 2 * node if self.tree[2 * node] >= length else 2 * node + 1
        index = node - self.size
        self.tree[node] -= length
        node //= 2
        while node:
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])
            node //= 2
        return index


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Groups of example indices, each group's total length <= capacity.

    Longest first; ties keep dataset order, so the result is deterministic.
    """
    if any(n > capacity for n in lengths):
        raise ValueError("an example is longer than the row; truncate before packing")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins = _FirstFit(capacity, max(1, len(lengths)))
    groups: dict[int, list[int]] = {}
    for i in order:
        groups.setdefault(bins.place(lengths[i]), []).append(i)
    return [groups[b] for b in sorted(groups)]


def padding_efficiency(lengths: list[int], batch_size: int) -> float:
    """Real tokens / padded tokens when batches are padded to their longest example
    (in dataset order), the baseline packing is compared with."""
    total = padded = 0
    for start in range(0, len(lengths), batch_size):
        batch = lengths[start : start + batch_size]
        total += sum(batch)
        padded += max(batch) * len(batch)
    return total / max(1, padded)

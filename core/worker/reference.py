"""``method.preference.reference: precomputed``: the reference's log-probabilities of every
example, computed once before training by the model as it starts (the reference itself),
and kept beside the prepared split as ``reference_logps.npy`` ([examples, 2]: a pair's
chosen and rejected rows, a KTO row and its KL row), so training holds one model. A
resumed run reads them back."""

from __future__ import annotations

import numpy as np

from ftx.core.fsutil import staged_file
from ftx.core.prepared import FeedbackSplit, PairedSplit
from ftx.core.worker.framework import Framework, Rank
from ftx.core.worker.objectives import Feedback, PairPreference

FILE = "reference_logps.npy"


def precompute_reference(
    framework: Framework,
    objective: PairPreference | Feedback,
    split: PairedSplit | FeedbackSplit,
    pad_id: int,
    batch_size: int,
    rank: Rank,
) -> None:
    """Write ``split``'s reference log-probabilities unless a run has already (every rank
    scores its share of the examples; each rank whose OUT still lacks the file writes the
    whole, since every node prepares the data in its own OUT and launchers disagree on
    what a node's first rank is: ranks that share an OUT write the same bytes, each by an
    atomic rename). Whether to score is decided by every rank together, so no rank waits
    in a collective that another skips (a node whose OUT has the file and one whose OUT
    does not)."""
    path = split.folder / FILE
    missing = framework.all_reduce_sum([0.0 if path.exists() else 1.0])[0]
    if missing:
        found = np.zeros((len(split), 2), dtype=np.float64)
        mine = list(range(rank.rank, len(split), rank.world))
        for start in range(0, len(mine), batch_size):
            indices = mine[start : start + batch_size]
            batch = objective.reference_rows(split, indices, pad_id)
            rows = framework.row_logps(batch, reference=False)
            found[indices, 0], found[indices, 1] = rows[: len(indices)], rows[len(indices) :]
        summed = framework.all_reduce_sum(found.reshape(-1).tolist())
        if not path.exists():
            values = np.asarray(summed, dtype=np.float32).reshape(len(split), 2)
            with staged_file(path) as tmp, tmp.open("wb") as handle:
                np.save(handle, values)
        rank.barrier()
    rank.say(f"reference log-probabilities of {len(split)} examples in {path}")

"""What every converter shares, imported by the checkpoint and the adapter converters alike
(and by workers, which copy a base's side files beside what they write): the safetensors
metadata each framework expects, the side files copied with the weights, and the cached
2-D transpose."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

METADATA = {"hf": "pt", "paddle": "np", "mindspore": "ms"}  # safetensors' "format" value
COPIED = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
)


def copy_side_files(src: Path, dst: Path, names: tuple[str, ...] = COPIED) -> None:
    """Copy the tokenizer and generation files that exist in ``src``."""
    for name in names:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


def transpose_2d(array: np.ndarray, tile: int = 256) -> np.ndarray:
    """A contiguous transpose done tile by tile: several times faster than numpy's
    strided copy of a large matrix, because each tile stays in the CPU cache. Bands of
    rows go to one thread per core (numpy releases the GIL while it copies a tile).

    The source is first read in one sequential pass (a memory map read tile by tile
    would fault its pages in column order).
    """
    if array.ndim != 2:
        return np.ascontiguousarray(array.T)
    source = np.array(array, copy=True) if isinstance(array, np.memmap) else array
    rows, cols = source.shape
    out = np.empty((cols, rows), dtype=source.dtype)

    def band(first: int, last: int) -> None:
        for i in range(first, last, tile):
            for j in range(0, cols, tile):
                out[j : j + tile, i : i + tile] = source[i : i + tile, j : j + tile].T

    workers = min(os.cpu_count() or 1, 8, max(1, rows // (4 * tile)))
    if workers == 1:
        band(0, rows)
        return out
    step = -(-rows // workers // tile) * tile  # whole tiles per band
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda first: band(first, min(first + step, rows)), range(0, rows, step)))
    return out

"""Float32 views of stored weights, and back, bit-exactly for bfloat16 (kept as raw uint16)."""

from __future__ import annotations

import numpy as np


def to_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    """``array`` (stored as safetensors dtype ``dtype``) as float32 values."""
    if dtype == "BF16":
        return (np.asarray(array, dtype=np.uint32) << 16).view(np.float32)
    return np.asarray(array, dtype=np.float32)


def from_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values stored as ``dtype``; bfloat16 rounds to nearest even, as torch does."""
    if dtype == "BF16":
        bits = array.astype(np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return array.astype({"F32": np.float32, "F16": np.float16, "F64": np.float64}[dtype])

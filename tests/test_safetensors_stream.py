"""Streaming safetensors I/O (the base of checkpoint conversion): exact, and clear on
truncated or corrupt files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from ftx.core.convert.safetensors_stream import SafetensorsReader, TensorInfo, write_safetensors
from ftx.core.errors import FtxError


def test_round_trip_is_bit_exact_including_bf16_bits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        "w": rng.standard_normal((7, 5)).astype(np.float32),
        "h": rng.standard_normal(9).astype(np.float16),
        "i": np.arange(6, dtype=np.int64).reshape(2, 3),
    }
    save_file(tensors, str(tmp_path / "a.safetensors"), metadata={"format": "pt"})
    reader = SafetensorsReader(tmp_path / "a.safetensors")
    assert reader.metadata == {"format": "pt"} and sorted(reader.names) == ["h", "i", "w"]
    bf16 = TensorInfo("b", "BF16", (4,))
    raw = np.array([0x3F80, 0x4000, 0xBF80, 0x7F80], dtype=np.uint16)  # 1, 2, -1, inf
    items = [(reader.info(n), (lambda n=n: reader.read(n))) for n in reader.names]
    write_safetensors(tmp_path / "b.safetensors", [*items, (bf16, lambda: raw)], {"format": "np"})
    again = SafetensorsReader(tmp_path / "b.safetensors")
    assert again.metadata == {"format": "np"} and again.info("b").dtype == "BF16"
    assert np.array_equal(again.read("b"), raw)
    with safe_open(str(tmp_path / "b.safetensors"), framework="numpy") as ref:  # the library
        assert sorted(ref.keys()) == ["b", "h", "i", "w"]
        for name, value in tensors.items():
            loaded = ref.get_tensor(name)
            assert np.array_equal(loaded, value) and loaded.dtype == value.dtype


def test_truncated_and_corrupt_files_name_file_and_tensor(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"big": np.ones((64, 64), np.float32)}, str(path))
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    with pytest.raises(FtxError, match=r"cut.safetensors: truncated file: tensor big"):
        SafetensorsReader(tmp_path / "cut.safetensors")
    (tmp_path / "head.safetensors").write_bytes(data[:4])
    with pytest.raises(FtxError, match="no header"):
        SafetensorsReader(tmp_path / "head.safetensors")
    with pytest.raises(FtxError, match="produced shape"):
        write_safetensors(
            tmp_path / "bad.safetensors",
            [(TensorInfo("x", "F32", (2, 2)), lambda: np.zeros((3,), np.float32))],
        )

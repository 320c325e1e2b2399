"""safetensors read and written one tensor at a time.

Reading memory-maps each tensor's byte range; writing computes the header from
the tensors' dtypes and shapes first, then streams each tensor's bytes. Peak
memory is one tensor, whatever the model size. bfloat16 has no numpy dtype: it
travels as raw uint16 values (bit-exact).
"""

from __future__ import annotations

import json
import math
import os
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftx.core.convert.bytecopy import ByteRange, ReadAhead, copy_ranges, write_all
from ftx.core.errors import FtxError
from ftx.core.fsutil import regular_file

# safetensors dtype -> (numpy dtype used to carry it, bytes per element)
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bits
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "U16": np.dtype("<u2"),
    "U32": np.dtype("<u4"),
    "U64": np.dtype("<u8"),
    "BOOL": np.dtype("?"),
}


class DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different (json keeps the last of a repeated one)."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise DuplicateKey(key)
        found[key] = value
    return found


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors name: F32, BF16, ...
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        # Python integers: a damaged header's huge shape is an error later, not an overflow
        return math.prod(int(d) for d in self.shape) * DTYPES[self.dtype].itemsize


class WeightFile(ABC):
    """What every weight-file reader offers: tensor names, their dtype/shape, and
    ``read(name)``. ``entries`` maps a name to a tuple whose first item is its TensorInfo."""

    entries: dict[str, tuple]

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def info(self, name: str) -> TensorInfo:
        return self.entries[name][0]

    @abstractmethod
    def read(self, name: str) -> np.ndarray:
        """The tensor's values (without loading the rest of the file)."""

    def byte_ranges(self, name: str) -> list[ByteRange] | None:
        """Where the tensor's raw little-endian bytes lie in files, in order (None when
        they are not stored raw, as in a pickle)."""
        return None


class SafetensorsReader(WeightFile):
    """The header of a safetensors file, and its tensors on demand (memory-mapped)."""

    def __init__(self, path: Path):
        self.path = regular_file(path, "weight file")
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise FtxError("truncated safetensors file (no header)", where=str(path))
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                raise FtxError("truncated safetensors file (header cut short)", where=str(path))
            try:
                header = json.loads(handle.read(length), object_pairs_hook=_unique_keys)
            except DuplicateKey as exc:
                raise FtxError(
                    f"corrupt safetensors header: '{exc.key}' is named twice (which one is"
                    " meant cannot be told)",
                    where=str(path),
                    fix="re-export the file",
                ) from None
            except (ValueError, RecursionError):  # not JSON, not UTF-8
                raise FtxError("corrupt safetensors header (not JSON)", where=str(path)) from None
        if not isinstance(header, dict):
            raise FtxError("corrupt safetensors header (not an object)", where=str(path))
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise FtxError("corrupt safetensors header (__metadata__)", where=str(path))
        self.metadata: dict[str, str] = metadata
        self.data_start = 8 + length
        self.entries: dict[str, tuple[TensorInfo, int, int]] = {}
        for name, entry in header.items():
            info, start, end = _entry(name, entry, path)
            if end - start != info.nbytes:
                raise FtxError(
                    f"tensor {name}: {end - start} bytes for shape {list(info.shape)}"
                    f" {info.dtype} (expected {info.nbytes})",
                    where=str(path),
                    fix="the file is corrupt: re-export it",
                )
            if self.data_start + end > size:
                raise FtxError(
                    f"truncated file: tensor {name} ends past the end of the file",
                    where=str(path),
                    fix="copy or download the file again",
                )
            self.entries[name] = (info, start, end)

    def byte_ranges(self, name: str) -> list[ByteRange]:
        _, start, end = self.entries[name]
        return [ByteRange(self.path, self.data_start + start, end - start)]

    def read(self, name: str) -> np.ndarray:
        """The tensor as a read-only memory map (BF16 as raw uint16)."""
        info, start, end = self.entries[name]
        if end == start:
            return np.zeros(info.shape, dtype=DTYPES[info.dtype])
        return np.memmap(
            self.path,
            dtype=DTYPES[info.dtype],
            mode="r",
            offset=self.data_start + start,
            shape=info.shape,
        )


def _entry(name: str, entry: Any, path: Path) -> tuple[TensorInfo, int, int]:
    """One header entry, checked: dtype, shape, data offsets."""

    def whole(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 62

    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("dtype"), str)
        or (entry["dtype"] not in DTYPES)
    ):
        dtype = entry.get("dtype") if isinstance(entry, dict) else entry
        raise FtxError(
            f"tensor {name}: unsupported or missing dtype {dtype!r}",
            where=str(path),
            fix=f"ftx reads {', '.join(DTYPES)}",
        )
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and all(whole(d) for d in shape) and len(shape) <= 16):
        raise FtxError(f"tensor {name}: corrupt shape {shape!r}", where=str(path))
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(whole(o) for o in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise FtxError(f"tensor {name}: corrupt data_offsets {offsets!r}", where=str(path))
    return TensorInfo(name, entry["dtype"], tuple(shape)), offsets[0], offsets[1]


def write_safetensors(
    path: Path,
    tensors: Iterable[tuple[TensorInfo, Callable[[], np.ndarray]]],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write tensors produced one at a time; ``path`` must be a temporary path the
    caller renames once everything is written."""
    items = list(tensors)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for info, _ in items:
        header[info.name] = {
            "dtype": info.dtype,
            "shape": list(info.shape),
            "data_offsets": [offset, offset + info.nbytes],
        }
        offset += info.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with path.open("wb", buffering=0) as handle, ReadAhead() as ahead:
        fd = handle.fileno()
        write_all(fd, struct.pack("<Q", len(text)) + text)
        i = 0
        while i < len(items):
            info, produce = items[i]
            run = list(_unchanged_run(items, i))
            if run:  # tensors whose bytes lie back to back in one source: one kernel copy
                ahead.wait()  # one sequential stream from the disk at a time
                first = run[0]
                copy_ranges([ByteRange(first.path, first.offset, sum(r.length for r in run))], fd)
                i += len(run)
                continue
            i += 1
            ahead.next(items[i][1] if i < len(items) else None)  # read while this one is made
            array = np.ascontiguousarray(produce(), dtype=DTYPES[info.dtype])
            if array.shape != info.shape:
                raise FtxError(
                    f"tensor {info.name}: produced shape {list(array.shape)},"
                    f" expected {list(info.shape)}",
                    where=str(path),
                )
            if array.size:  # an empty tensor has no bytes (and no byte view)
                write_all(fd, array)
        os.fsync(handle.fileno())


def _passthrough_range(info: TensorInfo, produce: Any) -> ByteRange | None:
    """The one source range an unchanged tensor's bytes are copied from, if it has one."""
    if not getattr(produce, "passthrough", False):
        return None
    ranges = produce.source_ranges
    if len(ranges) != 1 or ranges[0].length != info.nbytes:
        return None
    return ranges[0]


def _unchanged_run(items: list[tuple[TensorInfo, Any]], start: int) -> Iterator[ByteRange]:
    """The source ranges of the unchanged tensors from ``start`` on that follow each other
    in one file without a gap (a rename keeps the order: the whole data region)."""
    previous: ByteRange | None = None
    for info, produce in items[start:]:
        found = _passthrough_range(info, produce)
        if found is None or (
            previous is not None
            and (found.path != previous.path or found.offset != previous.offset + previous.length)
        ):
            return
        yield found
        previous = found

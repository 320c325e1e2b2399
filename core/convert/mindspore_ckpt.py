"""MindSpore ``.ckpt`` files read and written without mindspore.

The format is protobuf (mindspore/ccsrc/utils/checkpoint.proto, proto2)::

    message Checkpoint  { repeated Value value = 1; }
    message Value       { required string tag = 1; required TensorProto tensor = 2; }
    message TensorProto { repeated int64 dims = 1; required string tensor_type = 2;
                          required bytes tensor_content = 3; }

A file is a series of serialised Checkpoint messages; a large tensor is split along
its first axis into several Values with the same tag, joined again on load. An
optional trailer ``b"crc_num"`` + 10-byte big-endian CRC32 covers everything before
it. Both directions stream: the reader memory-maps the file and records where each
tensor's bytes are; the writer emits one tensor (slice) at a time.
"""

from __future__ import annotations

import binascii
import math
import mmap
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ftx.core.convert.bytecopy import ByteRange, ReadAhead, copy_ranges, write_all
from ftx.core.convert.safetensors_stream import DTYPES, TensorInfo, WeightFile
from ftx.core.errors import FtxError

# MindSpore tensor_type <-> safetensors dtype name
MS_TYPES = {
    "Float64": "F64",
    "Float32": "F32",
    "Float16": "F16",
    "BFloat16": "BF16",
    "Int64": "I64",
    "Int32": "I32",
    "Int16": "I16",
    "Int8": "I8",
    "UInt8": "U8",
    "UInt16": "U16",
    "UInt32": "U32",
    "UInt64": "U64",
    "Bool": "BOOL",
}
TO_MS = {v: k for k, v in MS_TYPES.items()}
SLICE_BYTES = 512 * 1024 * 1024  # MindSpore splits tensors above this
CRC_MARK = b"crc_num"


def _varint(buf: memoryview | bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(buf: memoryview, start: int, end: int):
    """(field number, wire type, value or (offset, length)) of a protobuf message."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = _varint(buf, pos)
            yield number, wire, (pos, length)
            pos += length
        else:
            raise ValueError(f"unexpected wire type {wire}")


class CkptReader(WeightFile):
    """Tensors of a .ckpt file, located without loading them."""

    def __init__(self, path: Path, *, check_crc: bool = True):
        self.path = path
        self.metadata: dict[str, str] = {}
        self._file = path.open("rb")
        end = path.stat().st_size
        self._file.seek(max(0, end - 17))
        tail = self._file.read(17)
        if len(tail) == 17 and tail[:7] == CRC_MARK:
            end -= 17
            if check_crc and self._crc(end) != int.from_bytes(tail[7:], "big"):
                raise FtxError(
                    "CRC check failed: the checkpoint is corrupt",
                    where=str(path),
                    fix="copy the file again",
                )
        self.entries: dict[str, tuple[TensorInfo, list[tuple[int, int]]]] = {}
        if end == 0:
            return
        # The map is only walked for the small protobuf headers; tensor bytes are read
        # with plain reads later, so mapped pages never pile up in this process.
        with mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            buf = memoryview(mapped)
            try:
                self._index(buf, end)
            finally:
                buf.release()
        for tag, (info, parts) in self.entries.items():
            if sum(length for _, length in parts) != info.nbytes:
                raise FtxError(
                    f"tensor {tag}: {sum(n for _, n in parts)} bytes for shape"
                    f" {list(info.shape)} {info.dtype}",
                    where=str(path),
                    fix="the file is truncated or corrupt: copy it again",
                )

    def _crc(self, end: int) -> int:
        checksum, done = 0, 0
        self._file.seek(0)
        while done < end:
            chunk = self._file.read(min(64 << 20, end - done))
            if not chunk:
                break
            checksum = binascii.crc32(chunk, checksum)
            done += len(chunk)
        return checksum

    def _index(self, buf: memoryview, end: int) -> None:
        previous = None
        try:
            for number, wire, span in _fields(buf, 0, end):
                if number != 1 or wire != 2:
                    raise ValueError("not a Checkpoint message")
                tag, dims, kind, content = self._value(buf, *span)
                if content[0] + content[1] > end:
                    raise ValueError("tensor bytes past the end")
                if tag == previous:  # a further slice of the same tensor
                    self.entries[tag][1].append(content)
                    continue
                if kind not in MS_TYPES:
                    raise FtxError(f"tensor {tag}: unsupported type {kind}", where=str(self.path))
                shape = () if dims == [0] else tuple(dims)
                self.entries[tag] = (TensorInfo(tag, MS_TYPES[kind], shape), [content])
                previous = tag
        except (ValueError, IndexError):
            raise FtxError(
                "not a readable MindSpore checkpoint (truncated or corrupt protobuf)",
                where=str(self.path),
                fix="re-save or copy the checkpoint again",
            ) from None

    @staticmethod
    def _value(buf: memoryview, start: int, length: int):
        tag, tensor = "", None
        for number, _, span in _fields(buf, start, start + length):
            if number == 1:
                tag = bytes(buf[span[0] : span[0] + span[1]]).decode()
            elif number == 2:
                tensor = span
        if tensor is None:
            raise ValueError("value without tensor")
        dims: list[int] = []
        kind, content = "", (0, 0)
        for number, wire, span in _fields(buf, tensor[0], tensor[0] + tensor[1]):
            if number == 1 and wire == 0:
                dims.append(span)
            elif number == 1:  # packed dims
                pos, stop = span[0], span[0] + span[1]
                while pos < stop:
                    dim, pos = _varint(buf, pos)
                    dims.append(dim)
            elif number == 2:
                kind = bytes(buf[span[0] : span[0] + span[1]]).decode()
            elif number == 3:
                content = span
        return tag, dims, kind, content

    def byte_ranges(self, name: str) -> list[ByteRange]:
        return [ByteRange(self.path, offset, length) for offset, length in self.entries[name][1]]

    def read(self, name: str) -> np.ndarray:
        """The tensor's bytes, read (and its slices joined) into a fresh array."""
        info, parts = self.entries[name]
        array = np.empty(info.shape, dtype=DTYPES[info.dtype])
        view = memoryview(array.reshape(-1)).cast("B")
        position = 0
        for offset, length in parts:
            self._file.seek(offset)
            if self._file.readinto(view[position : position + length]) != length:
                raise FtxError(f"tensor {name}: the file ended early", where=str(self.path))
            position += length
        return array


def _message(field: int, payload_length: int) -> bytes:
    return _encode_varint((field << 3) | 2) + _encode_varint(payload_length)


def _slice_shapes(info: TensorInfo) -> list[tuple[int, ...]]:
    """The shapes MindSpore splits a tensor into: along the first axis, in parts of at most
    SLICE_BYTES (as numpy.array_split does: the first parts one row longer)."""
    if info.nbytes <= SLICE_BYTES or not info.shape:
        return [info.shape]
    parts = math.ceil(info.nbytes / SLICE_BYTES)
    rows, rest = divmod(info.shape[0], parts)
    return [(rows + (i < rest), *info.shape[1:]) for i in range(parts)]


def write_ckpt(
    path: Path,
    tensors: Iterable[tuple[TensorInfo, Callable[[], np.ndarray]]],
    *,
    crc: bool = False,
) -> None:
    """Write tensors one at a time (split like MindSpore above 512 MB)."""
    checksum = 0
    items = list(tensors)
    with path.open("wb", buffering=0) as handle, ReadAhead() as ahead:
        fd = handle.fileno()
        for index, (info, produce) in enumerate(items):
            ahead.next(items[index + 1][1] if index + 1 < len(items) else None)
            # Bytes unchanged and no checksum to compute: the kernel copies them.
            direct = getattr(produce, "passthrough", False) and not crc
            array = None if direct else np.ascontiguousarray(produce(), dtype=DTYPES[info.dtype])
            start = 0
            for shape in _slice_shapes(info):
                length = math.prod(shape) * DTYPES[info.dtype].itemsize  # () -> one item
                dims = b"".join(b"\x08" + _encode_varint(d) for d in (shape or (0,)))
                kind = TO_MS[info.dtype].encode()
                tensor_len = len(dims) + len(_message(2, len(kind))) + len(kind)
                tensor_len += len(_message(3, length)) + length
                tag = info.name.encode()
                value_len = len(_message(1, len(tag))) + len(tag)
                value_len += len(_message(2, tensor_len)) + tensor_len
                head = (
                    _message(1, value_len)
                    + _message(1, len(tag))
                    + tag
                    + _message(2, tensor_len)
                    + dims
                    + _message(2, len(kind))
                    + kind
                    + _message(3, length)
                )
                write_all(fd, head)
                if array is None:
                    copy_ranges(produce.source_ranges, fd, start, length)
                else:
                    content = array.reshape(-1).view(np.uint8)[start : start + length]
                    if length:
                        write_all(fd, content)
                    if crc:
                        checksum = binascii.crc32(content, binascii.crc32(head, checksum))
                start += length
        if crc:
            write_all(fd, CRC_MARK + checksum.to_bytes(10, "big"))
        os.fsync(handle.fileno())

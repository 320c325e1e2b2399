"""Pickle-based weight files: Paddle ``.pdparams`` and torch ``pytorch_model*.bin``.

Unlike safetensors and .ckpt these cannot be read one tensor at a time: unpickling
materialises the whole file, so peak memory is the file's size. Pickle can run code
while loading, so ``.pdparams`` are read only when the user says ``--trust-pickle``
(and even then through an unpickler that admits numpy arrays and nothing else);
``.bin`` files are read by torch itself with ``weights_only=True``.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ftx.core.convert.safetensors_stream import DTYPES, TensorInfo, WeightFile
from ftx.core.errors import FtxError

# numpy dtype -> safetensors dtype name; Paddle stores bfloat16 as uint16.
FROM_NUMPY = {dtype.str: name for name, dtype in DTYPES.items() if name != "U16"}
FROM_NUMPY["|b1"] = "BOOL"
# What a .pdparams pickle may construct: numpy arrays and plain containers.
ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("collections", "OrderedDict"),
}
PADDLE_INDEX_KEY = "StructuredToParameterName@@"


class _NumpyOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _info(name: str, array: np.ndarray, path: Path) -> TensorInfo:
    kind = FROM_NUMPY.get(array.dtype.str)
    if kind is None:
        raise FtxError(f"tensor {name}: unsupported dtype {array.dtype}", where=str(path))
    return TensorInfo(name, kind, tuple(array.shape))


class PdparamsReader(WeightFile):
    """A Paddle ``paddle.save`` state dict (numpy arrays; uint16 holds bfloat16)."""

    def __init__(self, path: Path, *, trust_pickle: bool):
        self.path = path
        self.metadata: dict[str, str] = {"format": "np"}
        if not trust_pickle:
            raise FtxError(
                "this checkpoint is a pickle (.pdparams), and loading a pickle can run code",
                where=str(path),
                fix="if you trust where it came from, pass --trust-pickle",
            )
        try:
            with path.open("rb") as handle:
                state = _NumpyOnly(handle).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise FtxError(
                f"not a readable .pdparams state dict ({exc})",
                where=str(path),
                fix="re-save it with paddle.save(model.state_dict(), path), or copy it again",
            ) from None
        if not isinstance(state, dict):
            raise FtxError("a .pdparams file must hold a state dict", where=str(path))
        state.pop(PADDLE_INDEX_KEY, None)
        self.arrays: dict[str, np.ndarray] = {}
        for name, value in state.items():
            if isinstance(value, tuple) and len(value) == 2:  # older paddle: (name, array)
                value = value[1]
            if not isinstance(value, np.ndarray):
                raise FtxError(f"entry {name} is not a tensor", where=str(path))
            self.arrays[name] = value
        self.entries = {n: (_info(n, a, path),) for n, a in self.arrays.items()}

    def read(self, name: str) -> np.ndarray:
        return self.arrays[name]


def write_pdparams(
    path: Path, tensors: Iterable[tuple[TensorInfo, Callable[[], np.ndarray]]]
) -> None:
    """A state dict ``paddle.load`` reads (bfloat16 as uint16, as paddle.save writes it)."""
    state = {i.name: np.ascontiguousarray(make(), dtype=DTYPES[i.dtype]) for i, make in tensors}
    with path.open("wb") as handle:
        pickle.dump(state, handle, protocol=4)
        handle.flush()
        os.fsync(handle.fileno())


class TorchBinReader(WeightFile):
    """A ``pytorch_model*.bin`` read by torch with ``weights_only=True`` (memory-mapped)."""

    def __init__(self, path: Path):
        self.path = path
        self.metadata: dict[str, str] = {"format": "pt"}
        try:
            import torch
        except ImportError:
            raise FtxError(
                "reading pytorch_model*.bin needs torch, which this environment lacks",
                where=str(path),
                fix="run the command with the torch environment's ftx"
                " ($FTX_HOME/envs/torch/bin/ftx, made by `ftx env create torch`), or"
                " convert the folder to safetensors there first",
            ) from None
        # torch.save's zip archive is memory-mapped; the legacy (pre-1.6, non-zip) format
        # cannot be, so it is read whole, still with weights_only.
        zipped = zipfile.is_zipfile(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
        except Exception as exc:  # torch raises several types for a corrupt archive
            kind = "a torch zip archive" if zipped else "a legacy (non-zip) torch file"
            raise FtxError(
                f"torch could not read it as {kind} ({type(exc).__name__}: {str(exc)[:200]})",
                where=str(path),
                fix="the file is damaged or not a weights-only state dict: copy it again, or"
                " re-save it with torch.save in a current torch",
            ) from None
        if not isinstance(state, dict):
            raise FtxError(
                f"holds a {type(state).__name__}, not a state dict of tensors",
                where=str(path),
                fix="save the model's state_dict() instead",
            )
        self.tensors = {n: t for n, t in state.items() if isinstance(t, torch.Tensor)}
        self.entries = {n: (_info(n, self._numpy(t), path),) for n, t in self.tensors.items()}

    @staticmethod
    def _numpy(tensor: Any) -> np.ndarray:
        import torch

        tensor = tensor.detach().contiguous()
        if tensor.dtype == torch.bfloat16:
            return tensor.view(torch.int16).numpy().view(np.uint16)
        return tensor.numpy()

    def read(self, name: str) -> np.ndarray:
        return self._numpy(self.tensors[name])

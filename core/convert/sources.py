"""Where a checkpoint folder keeps its weights: one reader per output shard.

A folder holds one of: safetensors (sharded with an index or not), MindSpore .ckpt
files, MindSpore per-rank folders (``rank_0/...ckpt``: pure data parallel only),
Paddle ``model_state.pdparams`` or tensor-parallel ``model_state.tpXX_ppYY.pdparams``
sets (merged on the fly), or torch ``pytorch_model*.bin`` files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ftx.core.convert.names import NameMap, tensor_parallel_axis
from ftx.core.convert.safetensors_stream import SafetensorsReader, TensorInfo, WeightFile
from ftx.core.errors import FtxError
from ftx.core.fsutil import inside

# Training state that MindSpore and Paddle save beside the weights; conversion drops it.
TRAINING_STATE = re.compile(
    r"^(adam_[mv]\.|moment[12]\.|accu_grads\.|global_step$|epoch_num$|step_num$|loss_scale$"
    r"|scale_sense$|current_iterator_step$|last_overflow_iterator_step$|learning_rate$"
    r"|beta[12]_power$)"
)
TP_FILE = re.compile(r"^model_state\.tp(\d+)_pp(\d+)\.pdparams$")
RANK_DIR = re.compile(r"^rank_(\d+)$")


def open_weights(path: Path, *, trust_pickle: bool = False) -> WeightFile:
    """A reader for one weight file, whatever its format (all share one interface)."""
    if path.suffix == ".ckpt":
        from ftx.core.convert.mindspore_ckpt import CkptReader

        return CkptReader(path)
    if path.suffix == ".pdparams":
        from ftx.core.convert.pickled import PdparamsReader

        return PdparamsReader(path, trust_pickle=trust_pickle)
    if path.suffix == ".bin":
        from ftx.core.convert.pickled import TorchBinReader

        return TorchBinReader(path)
    return SafetensorsReader(path)


def weight_files(
    folder: Path, config: dict[str, Any], *, trust_pickle: bool = False
) -> list[WeightFile]:
    """The checkpoint's weights as readers, one per output shard."""
    ranks = sorted(
        (p for p in folder.iterdir() if p.is_dir() and RANK_DIR.match(p.name)),
        key=lambda p: int(p.name.split("_")[1]),
    )
    if ranks:
        return [data_parallel_ranks(folder, ranks)]
    ckpts = sorted(folder.glob("*.ckpt"))
    if ckpts:
        return [open_weights(p) for p in ckpts]
    tp_files = sorted(p for p in folder.glob("*.pdparams") if TP_FILE.match(p.name))
    if tp_files:
        return tensor_parallel_sets(tp_files, config, trust_pickle)
    if (folder / "model_state.pdparams").exists():
        return [open_weights(folder / "model_state.pdparams", trust_pickle=trust_pickle)]
    for index_name, pattern in (
        ("model.safetensors.index.json", "*.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model*.bin"),
    ):
        files = indexed_files(folder, index_name) or sorted(folder.glob(pattern))
        if files:
            return [open_weights(p) for p in files]
    raise FtxError(
        "no weights found (safetensors, .ckpt, .pdparams or pytorch_model*.bin)",
        where=str(folder),
        fix="point at a checkpoint folder (for example model.safetensors + config.json)",
    )


def indexed_files(folder: Path, index_name: str) -> list[Path]:
    """The files an index names, each checked to exist; [] without an index."""
    index = folder / index_name
    if not index.exists():
        return []
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = sorted(set(weight_map.values()))
        paths = [inside(folder, name, f"{index}: weight_map") for name in files]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise FtxError(
            "not a valid index (a JSON object whose 'weight_map' maps tensor names to files)",
            where=str(index),
            fix="rewrite the index, or remove it so the shards are found by name",
        ) from None
    for name, path in zip(files, paths, strict=True):
        if not path.is_file():
            tensor = next(t for t, f in weight_map.items() if f == name)
            raise FtxError(
                f"shard {name} named in the index (for tensor {tensor}) is missing",
                where=str(index),
                fix="copy the missing shard next to the index",
            )
    return paths


class TensorParallelMerge(WeightFile):
    """One pipeline stage of a PaddleNLP tensor-parallel checkpoint, its ranks' slices
    concatenated back along the axes PaddleNLP split them."""

    def __init__(self, parts: list[WeightFile], config: dict[str, Any]):
        self.parts = parts
        self.path = parts[0].path
        self.metadata = {"format": "np"}
        names = NameMap(config["model_type"], "paddle", "hf")
        self.entries: dict[str, tuple[TensorInfo, int | None]] = {}
        for name in parts[0].names:
            for part in parts[1:]:
                if name not in part.entries:
                    raise FtxError(
                        f"tensor {name} is in {parts[0].path.name} but not in {part.path.name}",
                        where=str(part.path),
                        fix="merge a complete set of model_state.tpXX_ppYY.pdparams files",
                    )
            mapped = names.map(name)
            axis = tensor_parallel_axis(mapped.rule, config, len(parts)) if mapped else None
            info = parts[0].info(name)
            shape = list(info.shape)
            if axis is not None:
                shape[axis] = sum(p.info(name).shape[axis] for p in parts)
            self.entries[name] = (TensorInfo(name, info.dtype, tuple(shape)), axis)

    def read(self, name: str) -> np.ndarray:
        axis = self.entries[name][1]
        if axis is None:
            return self.parts[0].read(name)
        return np.concatenate([p.read(name) for p in self.parts], axis=axis)


def tensor_parallel_sets(
    files: list[Path], config: dict[str, Any], trust_pickle: bool
) -> list[WeightFile]:
    """model_state.tpXX_ppYY.pdparams: ranks of one stage merged, one reader per stage."""
    stages: dict[int, dict[int, Path]] = {}
    for path in files:
        tp, pp = (int(x) for x in TP_FILE.match(path.name).groups())
        stages.setdefault(pp, {})[tp] = path
    degree = max(len(s) for s in stages.values())
    for pp, ranks in stages.items():
        if sorted(ranks) != list(range(degree)):
            raise FtxError(
                f"pipeline stage {pp} has tensor-parallel ranks {sorted(ranks)}, expected"
                f" 0..{degree - 1}",
                where=str(files[0].parent),
                fix="copy every model_state.tpXX_ppYY.pdparams file of the checkpoint",
            )
    return [
        TensorParallelMerge(
            [open_weights(stages[pp][tp], trust_pickle=trust_pickle) for tp in range(degree)],
            config,
        )
        for pp in sorted(stages)
    ]


def data_parallel_ranks(folder: Path, ranks: list[Path]) -> WeightFile:
    """MindSpore per-rank checkpoints saved under pure data parallelism: every rank holds
    the whole model, so rank 0's newest .ckpt is the model. Sharded saves are refused."""
    strategies = [p for p in folder.rglob("*") if "strategy" in p.name]
    if strategies:
        raise FtxError(
            "these per-rank checkpoints come with a parallel strategy file, so each rank"
            " holds a slice that only MindSpore can reassemble",
            where=str(strategies[0]),
            fix="merge them with mindspore.transform_checkpoints (or MindFormers'"
            " auto_trans_ckpt) into one rank, then convert that",
        )
    from ftx.core.convert.mindspore_ckpt import CkptReader

    readers = []
    for rank in ranks:
        ckpts = sorted(rank.glob("*.ckpt"), key=_ckpt_step)
        if not ckpts:
            raise FtxError("no .ckpt file in this rank's folder", where=str(rank))
        readers.append(CkptReader(ckpts[-1]))
    first = readers[0]
    for reader in readers[1:]:
        for name in first.names:
            if name not in reader.entries or reader.info(name) != first.info(name):
                raise FtxError(
                    f"tensor {name} differs in shape between {first.path} and this rank:"
                    " the ranks are model-parallel slices, not data-parallel copies",
                    where=str(reader.path),
                    fix="merge them with mindspore.transform_checkpoints and its strategy file",
                )
    return first


def _ckpt_step(path: Path) -> tuple[int, int, str]:
    """MindFormers names saves ``{prefix}_rank_{i}-{epoch}_{step}.ckpt``."""
    found = re.search(r"-(\d+)_(\d+)\.ckpt$", path.name)
    return (int(found[1]), int(found[2]), path.name) if found else (-1, -1, path.name)

"""`ftx convert`: rename (and where needed transpose) every tensor, one at a time.

Source shards are memory-mapped and each output tensor is produced just before it
is written, so peak memory is about one tensor. The output is assembled in a
temporary folder beside the destination and renamed into place when complete.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftx.core.convert.names import FAMILIES, NameMap
from ftx.core.convert.safetensors_stream import SafetensorsReader, TensorInfo, write_safetensors
from ftx.core.errors import FtxError
from ftx.core.fsutil import staged_dir
from ftx.core.models.formats import detect_format

METADATA = {"hf": "pt", "paddle": "np", "mindspore": "ms"}
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


@dataclass(frozen=True)
class Planned:
    source: SafetensorsReader
    source_name: str
    target: TensorInfo
    transpose: bool


def shards(folder: Path) -> list[Path]:
    """The weight files of a checkpoint (safetensors, checked against its index when it has
    one; or MindSpore .ckpt)."""
    ckpts = sorted(folder.glob("*.ckpt"))
    if ckpts:
        return ckpts
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
        for name in files:
            if not (folder / name).exists():
                tensor = next(t for t, f in weight_map.items() if f == name)
                raise FtxError(
                    f"shard {name} named in the index (for tensor {tensor}) is missing",
                    where=str(index),
                    fix="copy the missing shard next to the index",
                )
        return [folder / f for f in files]
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        raise FtxError(
            "no safetensors weights found",
            where=str(folder),
            fix="convert a folder with model.safetensors (or shards and an index)",
        )
    return found


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.exists():
        raise FtxError("config.json is missing", where=str(folder), fix="copy the model's config")
    config = json.loads(path.read_text())
    if config.get("model_type") not in FAMILIES:
        raise FtxError(
            f"unknown architecture {config.get('model_type')!r}",
            where=str(path),
            fix=f"ftx converts: {', '.join(FAMILIES)}",
        )
    return config


def plan_tensors(src: Path, source: str, target: str, config: dict) -> list[list[Planned]]:
    """Per source shard, the output tensors in order (names mapped, shapes checked)."""
    names = NameMap(config["model_type"], source, target)
    planned = []
    for shard in shards(src):
        reader = open_weights(shard)
        group = []
        for name in reader.names:
            mapped = names.map(name)
            if mapped is None:
                raise FtxError(
                    f"tensor {name} has no {target} name in the {config['model_type']} table",
                    where=str(shard),
                    fix="check that the checkpoint matches config.json's model_type",
                )
            info = reader.info(name)
            shape = info.shape[::-1] if mapped.transpose else info.shape
            target_info = TensorInfo(mapped.name, info.dtype, shape)
            group.append(Planned(reader, name, target_info, mapped.transpose))
        planned.append(group)
    return planned


def open_weights(path: Path) -> Any:
    """A reader for one weight file: safetensors or MindSpore .ckpt (same interface)."""
    if path.suffix == ".ckpt":
        from ftx.core.convert.mindspore_ckpt import CkptReader

        return CkptReader(path)
    return SafetensorsReader(path)


def transpose_2d(array: np.ndarray, tile: int = 256) -> np.ndarray:
    """A contiguous transpose done tile by tile: several times faster than numpy's
    strided copy of a large matrix, because each tile stays in the CPU cache.

    The source is first read in one sequential pass (a memory map read tile by tile
    would fault its pages in column order).
    """
    if array.ndim != 2:
        return np.ascontiguousarray(array.T)
    source = np.array(array, copy=True) if isinstance(array, np.memmap) else array
    rows, cols = source.shape
    out = np.empty((cols, rows), dtype=source.dtype)
    for i in range(0, rows, tile):
        for j in range(0, cols, tile):
            out[j : j + tile, i : i + tile] = source[i : i + tile, j : j + tile].T
    return out


def _produce(item: Planned):
    def make() -> np.ndarray:
        array = item.source.read(item.source_name)
        return transpose_2d(array) if item.transpose else array

    return make


def convert(
    src: Path,
    dst: Path,
    to: str,
    *,
    file_format: str = "safetensors",
    force: bool = False,
    verify: bool = False,
) -> dict:
    """Convert the checkpoint folder ``src`` to format ``to`` in ``dst``
    (``file_format`` "ckpt" writes a MindSpore .ckpt instead of safetensors)."""
    if file_format == "ckpt" and to != "mindspore":
        raise FtxError("--format ckpt is MindSpore's", fix="use it with --to mindspore")
    if dst.exists() and any(dst.iterdir()) and not force:
        raise FtxError(
            "the destination exists and is not empty", where=str(dst), fix="pass --force"
        )
    source = detect_format(src)
    if source == to:
        raise FtxError(f"{src} is already in {to} format", fix="pick another --to")
    config = read_config(src)
    planned = plan_tensors(src, source, to, config)
    total = 0
    with staged_dir(dst, replace=True) as tmp:
        weight_map: dict[str, str] = {}
        for i, group in enumerate(planned):
            items = [(item.target, _produce(item)) for item in group]
            if file_format == "ckpt":
                from ftx.core.convert.mindspore_ckpt import write_ckpt

                name = "model.ckpt" if len(planned) == 1 else f"model-{i + 1:05d}.ckpt"
                write_ckpt(tmp / name, items)
            else:
                name = (
                    "model.safetensors"
                    if len(planned) == 1
                    else f"model-{i + 1:05d}-of-{len(planned):05d}.safetensors"
                )
                write_safetensors(tmp / name, items, {"format": METADATA[to]})
            for item in group:
                weight_map[item.target.name] = name
                total += item.target.nbytes
        if len(planned) > 1 and file_format != "ckpt":
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        (tmp / "config.json").write_text(json.dumps(convert_config(config, to), indent=2) + "\n")
        for name in COPIED:
            if (src / name).exists():
                shutil.copy2(src / name, tmp / name)
        if verify:
            checked = verify_folder(planned, tmp)
    summary = {"from": source, "to": to, "tensors": sum(len(g) for g in planned), "bytes": total}
    if verify:
        summary["verified"] = checked
    return summary


def convert_config(config: dict, to: str) -> dict:
    """HF config.json for every format (PaddleNLP reads HF keys; `dtype` beside
    `torch_dtype` for it); MindSpore folders get the MindFormers model_config too."""
    out = dict(config)
    dtype = config.get("torch_dtype") or config.get("dtype")
    if to == "paddle" and dtype:
        out["dtype"] = dtype
    if to == "mindspore":
        out["mindformers_model_config"] = mindformers_model_config(config)
    return out


def mindformers_model_config(config: dict) -> dict:
    """The `model.model_config` section of a legacy MindFormers YAML for this model."""
    return {
        "type": "LlamaConfig",
        "hidden_size": config["hidden_size"],
        "num_layers": config["num_hidden_layers"],
        "num_heads": config["num_attention_heads"],
        "n_kv_heads": config.get("num_key_value_heads") or config["num_attention_heads"],
        "intermediate_size": config["intermediate_size"],
        "vocab_size": config["vocab_size"],
        "rms_norm_eps": config.get("rms_norm_eps", 1e-6),
        "theta": config.get("rope_theta", 10000.0),
        "max_position_embedding": config.get("max_position_embeddings", 2048),
        "qkv_has_bias": config["model_type"] == "qwen2",
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "bos_token_id": config.get("bos_token_id"),
        "eos_token_id": config.get("eos_token_id"),
        "pad_token_id": config.get("pad_token_id"),
    }


def verify_folder(planned: list[list[Planned]], out: Path) -> int:
    """Re-read every written tensor and compare it with its source (transposes included)."""
    checked = 0
    written: dict[str, Any] = {}
    for path in [*out.glob("*.safetensors"), *out.glob("*.ckpt")]:
        reader = open_weights(path)
        for name in reader.names:
            written[name] = reader
    for group in planned:
        for item in group:
            reader = written.get(item.target.name)
            if reader is None:
                raise FtxError(f"verify: tensor {item.target.name} is missing", where=str(out))
            expected = item.source.read(item.source_name)
            expected = expected.T if item.transpose else expected
            got = reader.read(item.target.name)
            same = (
                got.shape == expected.shape
                and got.dtype == expected.dtype
                and np.ascontiguousarray(expected).tobytes() == np.asarray(got).tobytes()
            )
            if not same:
                raise FtxError(
                    f"verify: tensor {item.target.name} differs from {item.source_name}",
                    where=str(out),
                )
            checked += 1
    return checked

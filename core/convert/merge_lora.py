"""`ftx merge-lora BASE ADAPTER OUT`: fold a PEFT LoRA adapter into the base weights.

W' = W + (B @ A) * scaling, computed in float32 and cast back to W's dtype, tensor by
tensor; scaling = alpha / r (alpha / sqrt(r) with rsLoRA). The output has the base's
format (hf, paddle or mindspore names and layout) and is staged, then renamed into place.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np

from ftx.core.convert.convert import COPIED, open_weights, read_config, shards, transpose_2d
from ftx.core.convert.names import NameMap
from ftx.core.convert.safetensors_stream import SafetensorsReader, TensorInfo, write_safetensors
from ftx.core.errors import FtxError
from ftx.core.fsutil import staged_dir
from ftx.core.models.formats import detect_format

PEFT_PREFIX = "base_model.model."


def to_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (np.asarray(array, dtype=np.uint32) << 16).view(np.float32)
    return np.asarray(array, dtype=np.float32)


def from_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":  # round to nearest even, as torch does
        bits = array.astype(np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return array.astype({"F32": np.float32, "F16": np.float16, "F64": np.float64}[dtype])


def adapter_deltas(adapter: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], float]:
    """HF weight name -> (A, B) in float32, and the scaling."""
    config_path = adapter / "adapter_config.json"
    weights_path = adapter / "adapter_model.safetensors"
    for path in (config_path, weights_path):
        if not path.exists():
            raise FtxError(
                f"{path.name} is missing",
                where=str(adapter),
                fix="point ADAPTER at a PEFT LoRA folder (adapter_config.json +"
                " adapter_model.safetensors)",
            )
    config = json.loads(config_path.read_text())
    if config.get("use_dora"):
        raise FtxError(
            "DoRA adapters cannot be merged as a plain low-rank sum",
            where=str(config_path),
            fix="merge DoRA with peft's merge_and_unload",
        )
    rank, alpha = config["r"], config["lora_alpha"]
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    reader = SafetensorsReader(weights_path)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for name in reader.names:
        for part in ("lora_A", "lora_B"):
            marker = f".{part}.weight"
            if name.endswith(marker):
                base = name.removeprefix(PEFT_PREFIX).removesuffix(marker) + ".weight"
                pairs.setdefault(base, {})[part] = to_float32(
                    reader.read(name), reader.info(name).dtype
                )
    incomplete = [n for n, p in pairs.items() if len(p) != 2]
    if incomplete:
        raise FtxError(
            f"adapter weights for {incomplete[0]} lack lora_A or lora_B", where=str(weights_path)
        )
    return {n: (p["lora_A"], p["lora_B"]) for n, p in pairs.items()}, scaling


def merge_lora(base: Path, adapter: Path, out: Path, *, force: bool = False) -> dict:
    """Write base + adapter to ``out`` in the base's format; return a summary."""
    if out.exists() and any(out.iterdir()) and not force:
        raise FtxError(
            "the destination exists and is not empty", where=str(out), fix="pass --force"
        )
    fmt = detect_format(base)
    config = read_config(base)
    deltas, scaling = adapter_deltas(adapter)
    to_base = NameMap(config["model_type"], "hf", fmt)
    targets = {}
    for hf_name, pair in deltas.items():
        mapped = to_base.map(hf_name)
        if mapped is None:
            raise FtxError(
                f"adapter targets {hf_name}, which the base does not have", where=str(adapter)
            )
        targets[mapped.name] = (pair, mapped.transpose)
    merged = 0
    with staged_dir(out, replace=True) as tmp:
        for shard in shards(base):
            if shard.suffix == ".ckpt":
                raise FtxError(
                    "merging into a .ckpt base is not supported yet",
                    where=str(shard),
                    fix="convert the base to safetensors first",
                )
            reader = open_weights(shard)

            def produce(name: str, info: TensorInfo, reader=reader):
                def make() -> np.ndarray:
                    weight = reader.read(name)
                    if name not in targets:
                        return weight
                    (a, b), flip = targets[name]
                    delta = (b @ a) * scaling
                    delta = transpose_2d(delta) if flip else delta
                    return from_float32(to_float32(weight, info.dtype) + delta, info.dtype)

                return make

            items = [(reader.info(n), produce(n, reader.info(n))) for n in reader.names]
            merged += sum(1 for n in reader.names if n in targets)
            write_safetensors(tmp / shard.name, items, reader.metadata)
        missing = set(targets) - {n for s in shards(base) for n in open_weights(s).names}
        if missing:
            raise FtxError(f"the base has no tensor {sorted(missing)[0]}", where=str(base))
        for name in ("config.json", "model.safetensors.index.json", *COPIED):
            if (base / name).exists():
                shutil.copy2(base / name, tmp / name)
    return {"format": fmt, "merged": merged, "scaling": scaling}

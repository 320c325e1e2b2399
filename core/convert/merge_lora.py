"""`ftx merge-lora BASE ADAPTER OUT`: fold a LoRA adapter into the base weights.

W' = W + (B @ A) * scaling, computed in float32 and cast back to W's dtype, tensor by
tensor; scaling = alpha / r (alpha / sqrt(r) with rsLoRA). The adapter may be PEFT,
PaddleNLP or MindFormers; the base any format ftx reads. The output has the base's
format and file kind (names, layout, safetensors/.ckpt/.pdparams), staged, then renamed.

A PEFT ``SEQ_CLS`` adapter (a reward model: its score head saved whole, as
``modules_to_save``) merges into a Hugging Face causal LM base as the
``*ForSequenceClassification`` model (:mod:`ftx.core.convert.reward_model`): the head
added, ``lm_head`` dropped, the config changed; the pad token that finds each row's last
token is the base config's, else its tokenizer's pad (or end-of-text) token.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ftx.core.convert.adapters import read_adapter
from ftx.core.convert.configs import load_config
from ftx.core.convert.convert import write_weights
from ftx.core.convert.floats import from_float32, to_float32
from ftx.core.convert.layout import copy_side_files, transpose_2d
from ftx.core.convert.names import NameMap
from ftx.core.convert.reward_model import LM_HEAD, sequence_classifier_config
from ftx.core.convert.safetensors_stream import TensorInfo, WeightFile
from ftx.core.convert.sources import weight_files
from ftx.core.errors import FtxError
from ftx.core.fsutil import claim_destination, staged_dir
from ftx.core.models.formats import detect_format


def base_file_format(readers: list[WeightFile]) -> str:
    suffix = readers[0].path.suffix
    return {".ckpt": "ckpt", ".pdparams": "pdparams"}.get(suffix, "safetensors")


def merge_lora(
    base: Path,
    adapter_dir: Path,
    out: Path,
    *,
    force: bool = False,
    trust_pickle: bool = False,
    pad_token_id: int | None = None,
) -> dict:
    """Write base + adapter to ``out`` in the base's format; return a summary.
    ``pad_token_id`` overrides how a reward model finds each row's last token."""
    claim_destination(out, force=force, inputs=[base, adapter_dir])
    fmt = detect_format(base)
    config = load_config(base)
    adapter = read_adapter(adapter_dir, trust_pickle=trust_pickle)
    reward = adapter.task_type == "SEQ_CLS"
    if (adapter.modules or reward) and fmt != "hf":
        raise FtxError(
            f"the adapter trains whole modules ({', '.join(adapter.modules) or 'a score head'}),"
            f" which ftx merges into a Hugging Face base only, and this base is {fmt}",
            where=str(base),
            fix=f"convert the base first: ftx convert {base} BASE-HF --to hf",
        )
    to_base = NameMap(config["model_type"], "hf", fmt)
    targets = {}
    for hf_name, pair in adapter.pairs.items():
        mapped = to_base.map(hf_name)
        if mapped is None:
            raise FtxError(
                f"adapter targets {hf_name}, which the base does not have", where=str(adapter_dir)
            )
        targets[mapped.name] = (pair, mapped.transpose)
    readers = weight_files(base, config, trust_pickle=trust_pickle)
    present = {name for reader in readers for name in reader.names}
    missing = sorted(set(targets) - present)
    if missing:
        raise FtxError(f"the base has no tensor {missing[0]}", where=str(base))
    for reader in readers:
        for name in set(reader.names) & set(targets):
            pair, flip = targets[name]
            a, b = pair["A"].info.shape, pair["B"].info.shape
            rows, cols = reader.info(name).shape[::-1] if flip else reader.info(name).shape
            if len(a) != 2 or len(b) != 2 or a[0] != b[1] or (b[0], a[1]) != (rows, cols):
                raise FtxError(
                    f"the adapter's {name} has A {list(a)} and B {list(b)}, which do not make"
                    f" the base weight's [{rows}, {cols}]",
                    where=str(adapter_dir),
                    fix="merge the adapter into the base model it was trained on",
                )

    def produce(reader: WeightFile, name: str, info: TensorInfo):
        def make() -> np.ndarray:
            weight = reader.read(name)
            if name not in targets:
                return weight
            pair, flip = targets[name]
            a = to_float32(pair["A"].read(), pair["A"].info.dtype)
            b = to_float32(pair["B"].read(), pair["B"].info.dtype)
            delta = (b @ a) * np.float32(adapter.scaling)
            delta = transpose_2d(delta) if flip else delta
            return from_float32(to_float32(weight, info.dtype) + delta, info.dtype)

        return make

    dropped = {LM_HEAD} if reward else set()
    groups = [
        [
            (reader.info(n), produce(reader, n, reader.info(n)))
            for n in reader.names
            if n not in dropped and n not in adapter.modules
        ]
        for reader in readers
    ]
    groups[-1] += [
        (TensorInfo(name, factor.info.dtype, factor.info.shape), factor.read)
        for name, factor in adapter.modules.items()
    ]
    if reward:
        score = adapter.modules.get("score.weight")
        if score is None:
            raise FtxError(
                "the SEQ_CLS adapter saves no score head (base_model.model.score.weight)",
                where=str(adapter_dir),
                fix="merge the adapter that the reward-model run wrote",
            )
        pad = pad_token_id if pad_token_id is not None else reward_pad_id(base, config)
        config = sequence_classifier_config(config, score.info.shape[0], pad)
    with staged_dir(out, replace=True) as tmp:
        write_weights(tmp, [g for g in groups if g], fmt, base_file_format(readers))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        copy_side_files(base, tmp)
    return {"format": fmt, "merged": len(targets), "scaling": adapter.scaling}


def reward_pad_id(base: Path, config: dict) -> int:
    """The pad id a reward model trained on ``base`` used: the config's, else the
    tokenizer's pad token, else its end of text (ftx's data rule)."""
    if config.get("pad_token_id") is not None:
        return int(config["pad_token_id"])
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(base))
    except Exception:  # no transformers here, or no tokenizer in the folder
        tokenizer = None
    found = None if tokenizer is None else tokenizer.pad_token_id
    found = found if found is not None else (tokenizer.eos_token_id if tokenizer else None)
    found = found if found is not None else config.get("eos_token_id")
    if isinstance(found, list):
        found = found[0] if found else None
    if found is None:
        raise FtxError(
            "cannot tell the reward model's pad token: the base config has no pad_token_id"
            " or eos_token_id and no tokenizer",
            where=str(base / "config.json"),
            fix="set pad_token_id in the base's config.json",
        )
    return int(found)

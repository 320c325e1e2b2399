"""A reward model in Hugging Face's form, from a causal LM and a score head kept apart.

ftx's rm stage (:class:`ftx.core.worker.objectives.PairwiseReward`) scores a row with a
linear head on the last hidden state. torch trains transformers'
``*ForSequenceClassification`` itself; the paddle and mindformers workers train their
framework's causal LM with the head beside it, and their OUT/final becomes the same
thing torch writes:

- full weights: the causal LM's tensors without ``lm_head.weight``, plus ``score.weight``
  [num_labels, hidden], and a config.json whose ``architectures`` name the
  ``*ForSequenceClassification`` class, with ``num_labels`` (``id2label``) and the
  ``pad_token_id`` that finds each row's last token;
- a LoRA adapter: PEFT's ``SEQ_CLS`` form, the head saved whole beside the factors
  (``base_model.model.score.weight``, ``modules_to_save``), which peft loads over a base
  built with ``AutoModelForSequenceClassification``;
- the framework's own files (``output.save_format both|native``): the head as
  ``score.safetensors`` beside them, since neither framework has a place for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ftx.core.convert.layout import METADATA
from ftx.core.convert.safetensors_stream import TensorInfo, write_safetensors
from ftx.core.convert.sources import weight_files
from ftx.core.errors import FtxError

SCORE = "score.weight"  # transformers' name of the head in every *ForSequenceClassification
LM_HEAD = "lm_head.weight"  # a causal LM's output layer, which a reward model does not have
SCORE_FILE = "score.safetensors"  # the head beside a framework's own files
PEFT_SCORE = f"base_model.model.{SCORE}"
# what peft records for a SEQ_CLS adapter: the heads it saves whole
SEQ_CLS_MODULES = ["classifier", "score"]
DTYPE_NAMES = {np.dtype("float32"): "F32", np.dtype("float16"): "F16"}


def sequence_classifier_config(config: dict[str, Any], labels: int, pad_token_id: int) -> dict:
    """``config`` (a causal LM's config.json) as its *ForSequenceClassification's."""
    updated = dict(config)
    updated["architectures"] = [
        name.removesuffix("ForCausalLM") + "ForSequenceClassification"
        for name in config.get("architectures") or []
    ]
    if not updated["architectures"]:
        raise FtxError(
            "config.json names no architectures, so the reward model's class is unknown",
            where="config.json",
            fix="add the causal LM's class (for example LlamaForCausalLM) to architectures",
        )
    updated["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
    updated["label2id"] = {f"LABEL_{i}": i for i in range(labels)}
    updated["pad_token_id"] = int(pad_token_id)
    return updated


def _score_item(score: np.ndarray) -> tuple[TensorInfo, Any]:
    array = np.ascontiguousarray(score)
    if array.ndim != 2 or array.dtype not in DTYPE_NAMES:
        raise FtxError(f"a score head is a float [labels, hidden] matrix, not {array.shape}")
    return TensorInfo(SCORE, DTYPE_NAMES[array.dtype], tuple(array.shape)), lambda: array


def write_reward_model(folder: Path, score: np.ndarray, pad_token_id: int) -> None:
    """Turn the causal LM in ``folder`` (HF safetensors and config.json, an unpublished
    folder this run is writing) into the reward model with ``score`` as its head."""
    from ftx.core.convert.convert import write_weights

    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    readers = weight_files(folder, config)
    groups = [
        [(reader.info(n), _read(reader, n)) for n in reader.names if n != LM_HEAD]
        for reader in readers
    ]
    groups[-1].append(_score_item(score))
    staged = folder / ".reward-model"
    staged.mkdir()
    write_weights(staged, [g for g in groups if g], "hf", "safetensors")
    for reader in readers:
        reader.path.unlink()
    (folder / "model.safetensors.index.json").unlink(missing_ok=True)
    for item in staged.iterdir():
        item.replace(folder / item.name)
    staged.rmdir()
    labels = int(score.shape[0])
    config_path.write_text(
        json.dumps(sequence_classifier_config(config, labels, pad_token_id), indent=2) + "\n"
    )


def _read(reader: Any, name: str) -> Any:
    return lambda: reader.read(name)


def add_score_to_adapter(folder: Path, score: np.ndarray) -> None:
    """Make the PEFT (causal LM) adapter in ``folder`` a SEQ_CLS adapter saving ``score``."""
    from ftx.core.convert.safetensors_stream import SafetensorsReader

    weights = folder / "adapter_model.safetensors"
    reader = SafetensorsReader(weights)
    info, produce = _score_item(score)
    items = [(reader.info(n), _read(reader, n)) for n in reader.names]
    items.append((TensorInfo(PEFT_SCORE, info.dtype, info.shape), produce))
    staged = folder / f".{weights.name}.tmp"
    write_safetensors(staged, items, {"format": METADATA["hf"]})
    staged.replace(weights)
    path = folder / "adapter_config.json"
    settings = json.loads(path.read_text())
    settings["task_type"] = "SEQ_CLS"
    settings["modules_to_save"] = SEQ_CLS_MODULES
    path.write_text(json.dumps(settings, indent=2) + "\n")


def write_native_score(folder: Path, score: np.ndarray) -> None:
    """The head as ``score.safetensors`` beside a framework's own files in ``folder``."""
    staged = folder / f".{SCORE_FILE}.tmp"
    write_safetensors(staged, [_score_item(score)], {"format": METADATA["hf"]})
    staged.replace(folder / SCORE_FILE)

"""Model configs across formats: HF config.json <-> PaddleNLP config.json <-> the
``model.model_config`` section of a MindFormers YAML.

PaddleNLP reads HF key names (plus ``dtype``); MindFormers uses its own names
(num_layers, n_kv_heads, theta, ...). Every converted folder carries an HF-style
config.json; MindSpore folders also get the MindFormers section inside it. A MindFormers
training output has no config.json, only the YAML it was trained with: ``--config``
(or a single YAML beside the weights) supplies it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ftx.core.convert.names import FAMILIES
from ftx.core.errors import FtxError
from ftx.core.fsutil import read_json_object
from ftx.core.models.architectures import size_problem

MS_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def load_config(folder: Path, explicit: Path | None = None) -> dict[str, Any]:
    """The checkpoint's config in HF form: ``explicit`` (config.json or a MindFormers YAML),
    else ``folder``/config.json, else the one MindFormers YAML in ``folder``."""
    if explicit is None:
        explicit = folder / "config.json"
        if not explicit.exists():
            yamls = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
            if len(yamls) != 1:
                raise FtxError(
                    "config.json is missing",
                    where=str(folder),
                    fix="copy the model's config.json, or pass --config with the MindFormers"
                    " YAML the checkpoint was trained with",
                )
            explicit = yamls[0]
    if not explicit.exists():
        raise FtxError("the config file does not exist", where=str(explicit))
    if explicit.suffix in (".yaml", ".yml"):
        config = hf_config_from_mindformers(explicit)
    else:
        config = read_json_object(explicit, "config.json", "restore the model's config.json")
    if config.get("model_type") not in FAMILIES:
        raise FtxError(
            f"unknown architecture {config.get('model_type')!r}",
            where=str(explicit),
            fix=f"ftx converts: {', '.join(FAMILIES)}",
        )
    problem = size_problem(config)
    if problem:
        raise FtxError(problem, where=str(explicit), fix="restore the model's own config.json")
    for key in SIZES:
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FtxError(
                f"'{key}' is {value!r}: config.json must give it as a whole number above 0"
                if key in config
                else f"'{key}' is missing, and the weights' shapes follow from it",
                where=str(explicit),
                fix="restore the model's own config.json",
            )
    return config


# What a checkpoint's shapes follow from (config.json keys, whole numbers).
SIZES = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
)


def convert_config(config: dict[str, Any], to: str) -> dict[str, Any]:
    """The config.json written beside ``to``'s weights."""
    out = {k: v for k, v in config.items() if k != "mindformers_model_config"}
    dtype = config.get("torch_dtype") or config.get("dtype")
    if to == "paddle" and dtype:
        out["dtype"] = dtype
    if to == "hf":
        out.pop("dtype", None)
        if dtype:
            out["torch_dtype"] = dtype
    if to == "mindspore":
        out["mindformers_model_config"] = mindformers_model_config(config)
    return out


def mindformers_model_config(config: dict[str, Any]) -> dict[str, Any]:
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


def mindformers_intermediate_size(section: dict[str, Any]) -> int:
    """MindFormers' FFN width when the YAML gives none: LLaMA's 2/3 * 4h rule, scaled by
    ffn_dim_multiplier, rounded up to multiple_of."""
    if section.get("intermediate_size"):
        return int(section["intermediate_size"])
    width = 4 * section["hidden_size"]
    if section.get("ffn_dim_multiplier") is not None:
        width = int((section["ffn_dim_multiplier"] + 0.01) * width)
    width = int(2 * width / 3)
    multiple = section.get("multiple_of") or 256
    return multiple * ((width + multiple - 1) // multiple)


def hf_config_from_mindformers(path: Path) -> dict[str, Any]:
    """An HF config.json from a MindFormers YAML's ``model.model_config`` section."""
    try:
        document = yaml.safe_load(path.read_text()) or {}
        section = document["model"]["model_config"]
        heads = section["num_heads"]
        config = {
            "architectures": None,
            "model_type": "qwen2" if section.get("qkv_has_bias") else "llama",
            "hidden_size": section["hidden_size"],
            "num_hidden_layers": section["num_layers"],
            "num_attention_heads": heads,
            "num_key_value_heads": section.get("n_kv_heads") or heads,
            "intermediate_size": mindformers_intermediate_size(section),
            "vocab_size": section["vocab_size"],
        }
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise FtxError(
            f"not a MindFormers model YAML (model.model_config: {exc})",
            where=str(path),
            fix="pass the YAML the checkpoint was trained with, or a config.json",
        ) from None
    config["architectures"] = [
        "Qwen2ForCausalLM" if config["model_type"] == "qwen2" else "LlamaForCausalLM"
    ]
    config.update(
        rms_norm_eps=section.get("rms_norm_eps", 1e-5),
        rope_theta=section.get("theta", 10000.0),
        max_position_embeddings=section.get("max_position_embedding")
        or section.get("seq_length", 2048),
        tie_word_embeddings=bool(section.get("tie_word_embeddings", False)),
        torch_dtype=MS_DTYPES.get(section.get("param_init_type"), "float32"),
        hidden_act="silu",
    )
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if section.get(key) is not None:
            config[key] = section[key]
    return config

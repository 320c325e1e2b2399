"""Decoder architectures ftx knows: Hugging Face parameter names and shapes from a config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Architecture:
    name: str
    model_type: str
    hf_class: str
    qkv_bias: bool


ARCHITECTURES = {
    "llama": Architecture("llama", "llama", "LlamaForCausalLM", qkv_bias=False),
    "qwen2": Architecture("qwen2", "qwen2", "Qwen2ForCausalLM", qkv_bias=True),
    "mistral": Architecture("mistral", "mistral", "MistralForCausalLM", qkv_bias=False),
}


# Sizes no model has (the largest published ones are well inside): beyond them a
# config.json is damaged or hostile, and loops over its layers would not end.
SIZE_LIMITS = {
    "num_hidden_layers": 1024,
    "hidden_size": 1 << 17,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "intermediate_size": 1 << 20,
    "vocab_size": 1 << 24,
    "max_position_embeddings": 1 << 24,
}


def size_problem(config: dict[str, Any]) -> str | None:
    """Why a config.json's sizes cannot describe a model (None when they can)."""
    for key, most in SIZE_LIMITS.items():
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > most:
            return f"'{key}' is {value:,}, beyond any model (at most {most:,})"
    return None


def architecture_of(config: dict[str, Any]) -> Architecture | None:
    """The architecture of an HF config.json, or None when ftx does not know it."""
    return ARCHITECTURES.get(config.get("model_type", ""))


def parameter_shapes(arch: Architecture, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """HF parameter name -> shape for a config (in the order transformers creates them)."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    inter = config["intermediate_size"]
    vocab = config["vocab_size"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shapes[f"{p}.self_attn.q_proj.weight"] = (heads * head_dim, hidden)
        shapes[f"{p}.self_attn.k_proj.weight"] = (kv_heads * head_dim, hidden)
        shapes[f"{p}.self_attn.v_proj.weight"] = (kv_heads * head_dim, hidden)
        if arch.qkv_bias:
            shapes[f"{p}.self_attn.q_proj.bias"] = (heads * head_dim,)
            shapes[f"{p}.self_attn.k_proj.bias"] = (kv_heads * head_dim,)
            shapes[f"{p}.self_attn.v_proj.bias"] = (kv_heads * head_dim,)
        shapes[f"{p}.self_attn.o_proj.weight"] = (hidden, heads * head_dim)
        shapes[f"{p}.mlp.gate_proj.weight"] = (inter, hidden)
        shapes[f"{p}.mlp.up_proj.weight"] = (inter, hidden)
        shapes[f"{p}.mlp.down_proj.weight"] = (hidden, inter)
        shapes[f"{p}.input_layernorm.weight"] = (hidden,)
        shapes[f"{p}.post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


@dataclass(frozen=True)
class ModelConfig:
    """The facts of a model folder's config.json that translators need, read once by the
    core (translators stay pure: recipe and model config in, files out)."""

    model_type: str
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    bos_token_id: int | None
    eos_token_id: int | list[int] | None
    pad_token_id: int | None

    @classmethod
    def of(cls, config: dict[str, Any]) -> ModelConfig:
        """From a parsed HF config.json (missing optional keys take transformers' defaults)."""
        heads = int(config.get("num_attention_heads") or 0)
        hidden = int(config.get("hidden_size") or 0)
        model_type = str(config.get("model_type", ""))
        known = ARCHITECTURES.get(model_type)
        return cls(
            model_type=model_type,
            architecture=(config.get("architectures") or [known.hf_class if known else "?"])[0],
            hidden_size=hidden,
            num_layers=int(config.get("num_hidden_layers") or 0),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or (hidden // heads if heads else 0)),
            intermediate_size=int(config.get("intermediate_size") or 0),
            vocab_size=int(config.get("vocab_size") or 0),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(config.get("rope_theta", 10000.0)),
            max_position_embeddings=int(config.get("max_position_embeddings") or 2048),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=bool(config.get("attention_bias")) or bool(known and known.qkv_bias),
            bos_token_id=config.get("bos_token_id"),
            eos_token_id=config.get("eos_token_id"),
            pad_token_id=config.get("pad_token_id"),
        )

    @classmethod
    def read(cls, folder: Path) -> ModelConfig:
        """From ``folder``/config.json (the usual paragraph when it is not a model's)."""
        from ftx.core.errors import FtxError
        from ftx.core.fsutil import read_json_object

        path = folder / "config.json"
        config = read_json_object(path, "model's config.json", "restore the model's config.json")
        problem = size_problem(config)
        if problem:
            raise FtxError(problem, where=str(path), fix="restore the model's config.json")
        try:
            return cls.of(config)
        except (TypeError, ValueError) as exc:
            raise FtxError(
                f"the model's config.json holds a value of the wrong kind ({exc})",
                where=str(path),
                fix="restore the model's config.json (sizes are whole numbers)",
            ) from None

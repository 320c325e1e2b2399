"""Decoder architectures ftx knows: Hugging Face parameter names and shapes from a config."""

from __future__ import annotations

from dataclasses import dataclass
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

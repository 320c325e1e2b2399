"""A model's config.json as MindFormers' legacy LlamaForCausalLM ``model_config``: shared
by the translator (the plan's finetune.yaml, in the core) and the decoder (inside the
mindformers environment, which has no pydantic: standard library only here)."""

from __future__ import annotations

from typing import Any

from ftx.core.models.architectures import ModelConfig


def legacy_model_section(
    model: ModelConfig, *, seq_length: int, batch_size: int, dtype: str, flash: bool
) -> dict[str, Any]:
    """A model's config.json as the legacy LlamaForCausalLM's ``model_config`` (training
    plans and ftx's decoder build it alike)."""
    eos = model.eos_token_id
    return {
        "type": "LlamaConfig",
        "batch_size": batch_size,
        "seq_length": seq_length,
        "hidden_size": model.hidden_size,
        "num_layers": model.num_layers,
        "num_heads": model.num_heads,
        "n_kv_heads": model.num_kv_heads,
        "intermediate_size": model.intermediate_size,
        "vocab_size": model.vocab_size,
        "max_position_embedding": model.max_position_embeddings,
        "rms_norm_eps": model.rms_norm_eps,
        "theta": model.rope_theta,
        "bos_token_id": model.bos_token_id if model.bos_token_id is not None else 1,
        "eos_token_id": eos[0] if isinstance(eos, list) else (eos if eos is not None else 2),
        "pad_token_id": model.pad_token_id if model.pad_token_id is not None else 0,
        "ignore_token_id": -100,
        "compute_dtype": dtype,
        "layernorm_compute_type": "float32",
        "softmax_compute_type": "float32",
        "rotary_dtype": "float32",
        "param_init_type": "float32",
        "qkv_has_bias": model.qkv_bias,
        "qkv_concat": False,
        "tie_word_embeddings": model.tie_word_embeddings,
        "use_past": False,
        "use_flash_attention": flash,
        "use_rope_slice": False,
        "fused_rms_norm": True,
        "offset": 0,
        "checkpoint_name_or_path": "",
    }

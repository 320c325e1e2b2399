"""`ftx init-model`: a random-initialised HF model with a small trained tokenizer.

Everything is made here with numpy, safetensors and tokenizers, so demos and
tests need no hub and no framework. The weights follow transformers' own
initialisation (normal(0, initializer_range) for matrices, ones for norms,
zeros for biases), and the result loads with ``from_pretrained`` as is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ftx.core.errors import FtxError
from ftx.core.fsutil import claim_destination, staged_dir
from ftx.core.models.architectures import ARCHITECTURES, parameter_shapes

SIZES: dict[str, dict[str, int]] = {
    "tiny": {
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    "small": {
        "hidden_size": 256,
        "intermediate_size": 704,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
    },
    # Qwen2.5-0.5B's and -1.5B's shapes (benchmarks at real sizes): the embedding keeps
    # Qwen2.5's 151,936 rows, of which the small trained tokenizer uses the first ~1k.
    "0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "embedding_rows": 151936,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
    },
    "1.5b": {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "embedding_rows": 151936,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
    },
}

# Special tokens and a chat template in each family's style (Llama 3 headers, ChatML).
CHAT_STYLES: dict[str, dict[str, Any]] = {
    "llama": {
        "specials": [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|pad|>",
        ],
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": "<|pad|>",
        "template": (
            "{{- bos_token }}"
            "{%- for message in messages %}"
            "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
            " + message['content'] | trim + '<|eot_id|>' }}"
            "{%- endfor %}"
            "{%- if add_generation_prompt %}"
            "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
            "{%- endif %}"
        ),
    },
    "qwen2": {
        # Qwen2's own pre-tokenizer (digits split one by one) and NFC normaliser: transformers
        # 5 rebuilds a qwen2 tokenizer with them whatever tokenizer.json says, so saving them
        # is what makes 4.x and 5.x tokenise the same ids.
        "split": (
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
            r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        ),
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "template": (
            "{%- for message in messages %}"
            "{%- if loop.first and message['role'] != 'system' %}"
            "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
            "{%- endif %}"
            "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
            "{%- endfor %}"
            "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
        ),
    },
}

CORPUS = Path(__file__).resolve().parent.parent / "assets" / "tokenizer_corpus.txt"


def train_tokenizer(style: dict[str, Any], vocab_size: int, corpus: list[str]) -> Any:
    """A byte-level BPE tokenizer trained on ``corpus``, wrapped for transformers."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if style.get("split"):
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(style["split"]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=style["specials"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=style["bos"],
        eos_token=style["eos"],
        pad_token=style["pad"],
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = style["template"]
    return wrapped


def hf_config(arch: str, size: str, tokenizer: Any, dtype: str = "float32") -> dict[str, Any]:
    """An HF config.json for the architecture at a preset size."""
    spec = ARCHITECTURES[arch]
    shape_keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads")  # fmt: skip
    dims = {k: v for k, v in SIZES[size].items() if k in shape_keys}
    rest = {k: v for k, v in SIZES[size].items() if k not in shape_keys}
    config: dict[str, Any] = {
        "architectures": [spec.hf_class],
        "model_type": spec.model_type,
        **dims,
        "head_dim": dims["hidden_size"] // dims["num_attention_heads"],
        # more embedding rows than tokens where the size says so (as Qwen2.5's own)
        "vocab_size": max(len(tokenizer), rest.pop("embedding_rows", 0)),
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "attention_bias": spec.qkv_bias,
        "tie_word_embeddings": arch == "qwen2",
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "use_cache": True,
        "torch_dtype": dtype,
    }
    config.update(rest)  # the size's own settings (Qwen2.5's rope base, tied embeddings)
    if arch == "qwen2":
        config.pop("attention_bias")
        config["use_sliding_window"] = False
    return config


def random_weights(
    arch: str, config: dict[str, Any], seed: int, dtype: str
) -> dict[str, np.ndarray]:
    """transformers-style random initialisation, in numpy."""
    rng = np.random.default_rng(seed)
    std = config["initializer_range"]
    weights = {}
    for name, shape in parameter_shapes(ARCHITECTURES[arch], config).items():
        if name.endswith("norm.weight"):
            value = np.ones(shape, dtype=np.float32)
        elif name.endswith(".bias"):
            value = np.zeros(shape, dtype=np.float32)
        else:
            value = rng.normal(0.0, std, size=shape).astype(np.float32)
        weights[name] = value
    if dtype == "bfloat16":
        # bf16 is the top half of fp32 (round to nearest even); stored as raw 2-byte values.
        raise FtxError("init-model writes float32 or float16 weights", fix="use --dtype float32")
    target = np.float16 if dtype == "float16" else np.float32
    return {k: v.astype(target, copy=False) for k, v in weights.items()}


MIN_VOCAB, MAX_VOCAB = 300, 1 << 20


def init_model(
    arch: str,
    size: str,
    out: Path,
    *,
    seed: int = 0,
    vocab_size: int = 1024,
    dtype: str = "float32",
    force: bool = False,
) -> dict[str, Any]:
    """Write a random HF model (config, safetensors, tokenizer with chat template) to ``out``."""
    from safetensors.numpy import save_file

    if arch not in CHAT_STYLES:
        raise FtxError(f"unknown architecture '{arch}'", fix=f"use one of {', '.join(CHAT_STYLES)}")
    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise FtxError(
            f"a vocabulary of {vocab_size} tokens cannot be trained here",
            where="--vocab-size",
            fix=f"use {MIN_VOCAB} to {MAX_VOCAB:,} (the byte alphabet and the special tokens"
            f" alone take about {MIN_VOCAB})",
        )
    claim_destination(out, force=force, inputs=[])
    corpus = CORPUS.read_text(encoding="utf-8").splitlines()
    tokenizer = train_tokenizer(CHAT_STYLES[arch], vocab_size, corpus)
    config = hf_config(arch, size, tokenizer, dtype)
    weights = random_weights(arch, config, seed, dtype)
    with staged_dir(out, replace=True) as tmp:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        generation = {
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": config["eos_token_id"],
            "pad_token_id": config["pad_token_id"],
            "do_sample": False,
        }
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        tokenizer.save_pretrained(str(tmp))
        _portable_tokenizer_config(tmp / "tokenizer_config.json", tokenizer.chat_template)
    params = sum(int(np.prod(w.shape)) for w in weights.values())
    return {
        "path": str(out),
        "arch": arch,
        "size": size,
        "parameters": params,
        "vocab": len(tokenizer),
    }


def _portable_tokenizer_config(path: Path, chat_template: str) -> None:
    """Make the tokenizer loadable by older transformers and by paddlenlp too:
    a generic fast-tokenizer class and the chat template inside the config."""
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["chat_template"] = chat_template
    config["model_max_length"] = 2048
    path.write_text(json.dumps(config, indent=2) + "\n")

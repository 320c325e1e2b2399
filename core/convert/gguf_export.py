"""`ftx export --to gguf`: a Hugging Face Llama or Qwen2 model (a LoRA run merged first)
as one GGUF file for llama.cpp and Ollama, written with llama.cpp's own ``gguf`` package.

What travels with the weights is what makes the model answer as it did in training: the
run's chat template (``tokenizer.chat_template``), its special tokens (bos, eos, pad, each
marked a control token), the byte-level BPE vocabulary and merges, and the
pre-tokenizer's name as llama.cpp knows it. Tensors are streamed: one is read (memory
mapped), converted (f16, or q8_0 through gguf's quantizer) and written at a time, so the
peak memory is about one tensor. Norms and biases stay float32, as llama.cpp's own
converter keeps them.

Names follow llama.cpp's: ``model.layers.N.self_attn.q_proj.weight`` is
``blk.N.attn_q.weight`` and so on. Llama's q and k projections are permuted from
transformers' rotate-half layout to the interleaved pairs llama.cpp's ``llama``
architecture rotates; Qwen2 is rotated in the half layout there (NeoX style) and kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ftx.core.convert.floats import to_float32
from ftx.core.convert.safetensors_stream import SafetensorsReader
from ftx.core.errors import FtxError

ARCHITECTURES = ("llama", "qwen2")
# The pre-tokenizer regexes llama.cpp names (its convert_hf_to_gguf identifies them by
# what they tokenise; the patterns are the families' published ones).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}
LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
IN_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
OUTSIDE = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_name(hf: str) -> str | None:
    """llama.cpp's name of a transformers tensor (None: not a tensor of the model)."""
    if hf in OUTSIDE:
        return OUTSIDE[hf]
    match = LAYER.fullmatch(hf)
    if match and match.group(2) in IN_LAYER:
        return f"blk.{match.group(1)}.{IN_LAYER[match.group(2)]}"
    return None


def interleave_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """q/k rows from transformers' rotate-half order (per head: the first halves of the
    pairs, then the second halves) to the interleaved pairs llama.cpp's llama rotates."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def pre_tokenizer(tokenizer_json: dict[str, Any], where: str) -> str:
    """The name llama.cpp gives the tokenizer's pre-tokenizer: gpt-2 (byte-level with its
    own regex), llama-bpe (Llama 3) or qwen2."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    splits = [p for p in pre.get("pretokenizers", []) if p.get("type") == "Split"]
    pattern = (splits[0].get("pattern") or {}).get("Regex") if splits else None
    if pattern in PRE_TOKENIZERS:
        return PRE_TOKENIZERS[pattern]
    raise FtxError(
        "the tokenizer's pre-tokenizer is not one llama.cpp names (ftx writes byte-level"
        " BPE tokenizers of the GPT-2, Llama 3 and Qwen2 kinds)",
        where=where,
        fix="export a model with such a tokenizer, or use llama.cpp's convert_hf_to_gguf.py",
    )


def vocabulary(folder: Path, vocab_size: int) -> dict[str, Any]:
    """The tokens (padded to the model's vocab_size with unused entries), their types,
    the merges and the pre-tokenizer's name, from tokenizer.json."""
    import gguf

    path = folder / "tokenizer.json"
    if not path.exists():
        raise FtxError(
            "no tokenizer.json (ftx writes byte-level BPE tokenizers to GGUF; a"
            " SentencePiece tokenizer.model, as Llama 2's, is not written yet)",
            where=str(folder),
            fix="export a model with a tokenizer.json, or use llama.cpp's convert_hf_to_gguf.py",
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise FtxError(
            f"a {model.get('type')} tokenizer: ftx writes byte-level BPE ones to GGUF",
            where=str(path),
            fix="use llama.cpp's convert_hf_to_gguf.py for this model",
        )
    by_id = {int(i): t for t, i in model["vocab"].items()}
    kinds = dict.fromkeys(by_id, gguf.TokenType.NORMAL)
    for added in data.get("added_tokens", []):
        by_id[int(added["id"])] = added["content"]
        special = added.get("special", False)
        kinds[int(added["id"])] = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
    size = max(vocab_size, max(by_id) + 1)
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    types = [kinds.get(i, gguf.TokenType.UNUSED) for i in range(size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "pre": pre_tokenizer(data, str(path)),
    }


def _weights(folder: Path) -> dict[str, tuple[SafetensorsReader, str]]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FtxError(
            "no *.safetensors weights",
            where=str(folder),
            fix="convert the checkpoint to HF safetensors first: ftx convert SRC DST --to hf",
        )
    found = {}
    for path in files:
        reader = SafetensorsReader(path)
        for name in reader.names:
            found[name] = (reader, name)
    return found


def write_gguf(
    folder: Path,
    tokenizer: Path,
    out: Path,
    *,
    kind: str,
    chat_template: str | None,
    name: str,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Write the HF model in ``folder`` (tokenizer files in ``tokenizer``) as GGUF to
    ``out`` with tensors of ``kind`` (f16 or q8_0); a summary."""
    import gguf

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    arch = config.get("model_type")
    if arch not in ARCHITECTURES:
        raise FtxError(
            f"a {arch} model: ftx writes {' and '.join(ARCHITECTURES)} models to GGUF",
            where=str(folder / "config.json"),
            fix="use llama.cpp's convert_hf_to_gguf.py for this architecture",
        )
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    hidden = int(config["hidden_size"])
    vocab = vocabulary(tokenizer, int(config["vocab_size"]))
    weights = _weights(folder)
    plan = []
    for hf, source in weights.items():
        target = gguf_name(hf)
        if target is None:
            raise FtxError(
                f"tensor {hf} is not part of a {arch} model ftx knows",
                where=str(folder),
                fix="export the plain causal LM (merge adapters first)",
            )
        plan.append((target, hf, source))
    quantized = gguf.GGMLQuantizationType.Q8_0

    def stored(shape: tuple[int, ...]) -> str:
        """How a tensor is kept: vectors in f32; matrices in ``kind`` (q8_0 needs rows
        of whole 32-value blocks, else f16)."""
        if len(shape) < 2:
            return "f32"
        return "q8_0" if kind == "q8_0" and shape[-1] % 32 == 0 else "f16"

    def converted(hf: str, source: tuple[SafetensorsReader, str]) -> np.ndarray:
        reader, key = source
        array = to_float32(reader.read(key), reader.info(key).dtype)
        if arch == "llama" and hf.endswith(("q_proj.weight", "k_proj.weight")):
            array = interleave_rotary(array, heads if "q_proj" in hf else kv_heads)
        how = stored(array.shape)
        if how == "q8_0":
            return gguf.quants.quantize(np.ascontiguousarray(array), quantized)
        return np.ascontiguousarray(array, dtype=np.float32 if how == "f32" else np.float16)

    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_name(name)
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(int(config.get("head_dim") or hidden // heads))
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(len(vocab["tokens"]))
    writer.add_file_type(
        gguf.LlamaFileType.MOSTLY_Q8_0 if kind == "q8_0" else gguf.LlamaFileType.MOSTLY_F16
    )
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    settings = json.loads((tokenizer / "tokenizer_config.json").read_text(encoding="utf-8"))
    ids = {t: i for i, t in enumerate(vocab["tokens"])}
    for role, add in (
        ("bos_token", writer.add_bos_token_id),
        ("eos_token", writer.add_eos_token_id),
        ("pad_token", writer.add_pad_token_id),
    ):
        token = settings.get(role)
        token = token.get("content") if isinstance(token, dict) else token
        if token in ids:
            add(ids[token])
    writer.add_add_bos_token(bool(settings.get("add_bos_token", False)))
    if chat_template:
        writer.add_chat_template(chat_template)
    for target, _, (reader, key) in plan:
        shape = reader.info(key).shape
        how = stored(shape)
        if how == "q8_0":
            raw = gguf.quant_shape_to_byte_shape(shape, quantized)
            writer.add_tensor_info(target, raw, np.dtype(np.uint8), int(np.prod(raw)), quantized)
        else:
            dtype = np.dtype(np.float32 if how == "f32" else np.float16)
            writer.add_tensor_info(target, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for i, (_, hf, source) in enumerate(plan, 1):
        writer.write_tensor_data(converted(hf, source))
        if i % 50 == 0:
            say(f"{i} of {len(plan)} tensors written")
    writer.close()
    return {"tensors": len(plan), "architecture": arch, "type": kind, "tokens": len(ids)}

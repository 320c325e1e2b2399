"""Parameter names across formats: one declarative table per architecture family.

Each rule names a parameter in Hugging Face, PaddleNLP and MindFormers (legacy) form,
with ``{n}`` for the layer index and ``{p}`` for PaddleNLP's model prefix (``llama``,
``qwen2``, ...), and whether PaddleNLP stores it transposed (its Linear weights are
[in, out]; torch and MindSpore keep [out, in]). Adding a family is adding a table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FORMATS = ("hf", "paddle", "mindspore")


@dataclass(frozen=True)
class Rule:
    hf: str
    paddle: str
    mindspore: str
    transpose_paddle: bool = False
    # How PaddleNLP tensor parallelism splits it: "column" (output axis, -1), "row" (input
    # axis, 0), "kv" (column unless there are fewer KV heads than ranks), "vocab" (row,
    # unless the vocabulary does not divide), "head" (lm_head), "" (replicated).
    tp: str = ""

    def name(self, fmt: str) -> str:
        return {"hf": self.hf, "paddle": self.paddle, "mindspore": self.mindspore}[fmt]


LLAMA_RULES = (
    Rule(
        "model.embed_tokens.weight",
        "{p}.embed_tokens.weight",
        "model.tok_embeddings.embedding_weight",
        tp="vocab",
    ),
    Rule("model.norm.weight", "{p}.norm.weight", "model.norm_out.weight"),
    Rule("lm_head.weight", "lm_head.weight", "lm_head.weight", transpose_paddle=True, tp="head"),
    *(
        Rule(
            f"model.layers.{{n}}.self_attn.{hf}_proj.weight",
            f"{{p}}.layers.{{n}}.self_attn.{hf}_proj.weight",
            f"model.layers.{{n}}.attention.{ms}.weight",
            transpose_paddle=True,
            tp=tp,
        )
        for hf, ms, tp in (
            ("q", "wq", "column"),
            ("k", "wk", "kv"),
            ("v", "wv", "kv"),
            ("o", "wo", "row"),
        )
    ),
    *(
        Rule(
            f"model.layers.{{n}}.self_attn.{hf}_proj.bias",
            f"{{p}}.layers.{{n}}.self_attn.{hf}_proj.bias",
            f"model.layers.{{n}}.attention.{ms}.bias",
            tp=tp,
        )
        for hf, ms, tp in (("q", "wq", "column"), ("k", "wk", "kv"), ("v", "wv", "kv"))
    ),
    *(
        Rule(
            f"model.layers.{{n}}.mlp.{hf}_proj.weight",
            f"{{p}}.layers.{{n}}.mlp.{hf}_proj.weight",
            f"model.layers.{{n}}.feed_forward.{ms}.weight",
            transpose_paddle=True,
            tp=tp,
        )
        for hf, ms, tp in (("gate", "w1", "column"), ("down", "w2", "row"), ("up", "w3", "column"))
    ),
    Rule(
        "model.layers.{n}.input_layernorm.weight",
        "{p}.layers.{n}.input_layernorm.weight",
        "model.layers.{n}.attention_norm.weight",
    ),
    Rule(
        "model.layers.{n}.post_attention_layernorm.weight",
        "{p}.layers.{n}.post_attention_layernorm.weight",
        "model.layers.{n}.ffn_norm.weight",
    ),
)

# model_type -> (rules, PaddleNLP prefix)
FAMILIES: dict[str, tuple[tuple[Rule, ...], str]] = {
    "llama": (LLAMA_RULES, "llama"),
    "qwen2": (LLAMA_RULES, "qwen2"),
    "mistral": (LLAMA_RULES, "mistral"),
}


def _pattern(template: str, prefix: str) -> re.Pattern[str]:
    text = re.escape(template.replace("{p}", prefix)).replace(r"\{n\}", r"(?P<n>\d+)")
    return re.compile(f"^{text}$")


@dataclass(frozen=True)
class Mapped:
    name: str
    transpose: bool
    rule: Rule


class NameMap:
    """Maps parameter names of one family from one format to another."""

    def __init__(self, model_type: str, source: str, target: str):
        if model_type not in FAMILIES:
            raise KeyError(model_type)
        rules, self.prefix = FAMILIES[model_type]
        self.source, self.target = source, target
        self.compiled = [(_pattern(r.name(source), self.prefix), r) for r in rules]

    def map(self, name: str) -> Mapped | None:
        """The target name (and whether to transpose), or None when no rule matches."""
        for pattern, rule in self.compiled:
            match = pattern.match(name)
            if match:
                target = rule.name(self.target).replace("{p}", self.prefix)
                if "n" in match.groupdict():
                    target = target.replace("{n}", match.group("n"))
                flip = rule.transpose_paddle and "paddle" in (self.source, self.target)
                return Mapped(target, flip and self.source != self.target, rule)
        return None


def tensor_parallel_axis(rule: Rule, config: dict, degree: int) -> int | None:
    """The axis PaddleNLP split this tensor along across ``degree`` ranks (Paddle layout,
    Linear weights [in, out]), or None when every rank holds all of it."""
    kv_heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    vocab_divides = config["vocab_size"] % degree == 0
    if rule.tp == "kv":
        return -1 if kv_heads % degree == 0 else None
    if rule.tp == "vocab":
        return 0 if vocab_divides else None
    if rule.tp == "head":  # tied heads keep the [vocab, hidden] embedding layout
        if not vocab_divides:
            return None
        return 0 if config.get("tie_word_embeddings") else -1
    return {"column": -1, "row": 0}.get(rule.tp)

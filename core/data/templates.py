"""Chat templates by name: how each model family lays out a conversation.

A template is a handful of format strings ("slots") with ``{content}``,
``{system}``, ``{bos}`` and ``{eos}`` placeholders, plus the few rules where
families differ (system prompt folded into the first user turn, trimming, a
think block on the final answer...). ``render`` turns a conversation into
text and the character spans of everything the model must learn; the same
slots produce an HF jinja ``chat_template`` and PaddleNLP's
``chat_template.json`` for the native tools.

Every template here is tested against the family's official jinja template:
the token ids ftx produces equal ``tokenizer.apply_chat_template``'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Literal

Span = tuple[int, int]


@dataclass(frozen=True)
class ChatTemplate:
    """The slots of one family's chat format."""

    name: str
    user: str  # a user turn
    assistant: str  # an assistant turn's learned part (content + end-of-turn)
    generation: str = ""  # the assistant header that precedes it (the generation prompt)
    system: str = "{content}"  # the system block (system_mode "block")
    # "block": a system block after the prefix; "first_user": the system prompt is merged
    # (system_merge) into the first user turn; "last_user": into the final message when it
    # is a user turn (so a finished conversation has none, as Mistral v0.3's template does)
    system_mode: Literal["block", "first_user", "last_user"] = "block"
    system_merge: str = "{system}\n\n{content}"
    default_system: str | None = None
    prefix: str = ""  # once, at the very start
    tool: str | None = None  # a tool/observation turn (None: the family has none)
    suffix: str = ""  # after the last turn of a finished conversation (not learned)
    trim: bool | Literal["assistant"] = False  # strip content (all, or answers only)
    final_assistant: str | None = None  # the last assistant turn, when it differs
    final_prefix: str = ""  # before the last answer and in the generation prompt (not learned)
    next_turn_stop: str = ""  # learn this opening of the next turn as the stop token
    notes: str = ""

    def fill(self, slot: str, bos: str, eos: str, **values: str) -> str:
        """A slot with its placeholders replaced (literal text otherwise untouched)."""
        out = slot.replace("{bos}", bos).replace("{eos}", eos)
        for key, value in values.items():
            out = out.replace("{" + key + "}", value)
        return out


def _content(template: ChatTemplate, text: str, role: str) -> str:
    trims = template.trim is True or (template.trim == "assistant" and role == "assistant")
    return text.strip() if trims else text


def render(
    template: ChatTemplate,
    messages: list[dict[str, str]],
    *,
    bos: str = "",
    eos: str = "",
    add_generation_prompt: bool = False,
) -> tuple[str, list[Span]]:
    """Text of a conversation and the spans of its assistant turns (to learn).

    ``messages`` is role/content dicts; an optional leading system message.
    """
    system = template.default_system
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    text = template.fill(template.prefix, bos, eos)
    if system is not None and template.system_mode == "block":
        content = _content(template, system, "system")
        text += template.fill(template.system, bos, eos, content=content)
    spans: list[Span] = []
    last = len(messages) - 1
    ends_with_user = bool(messages) and messages[-1]["role"] == "user"
    merge_at = {"first_user": 0, "last_user": last if ends_with_user else -1}.get(
        template.system_mode
    )
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if role == "user":
            if i == merge_at and system is not None:
                content = template.system_merge.replace("{system}", system).replace(
                    "{content}", content
                )
            content = _content(template, content, role)
            text += template.fill(template.user, bos, eos, content=content)
        elif role == "tool":
            if template.tool is None:
                raise ValueError(f"the {template.name} template has no tool/observation turn")
            content = _content(template, content, role)
            text += template.fill(template.tool, bos, eos, content=content)
        elif role == "assistant":
            text += template.fill(template.generation, bos, eos)
            if i == last:
                text += template.fill(template.final_prefix, bos, eos)
            slot = template.final_assistant if (i == last and template.final_assistant) else None
            start = len(text)
            text += template.fill(
                slot or template.assistant, bos, eos, content=_content(template, content, role)
            )
            spans.append((start, len(text)))
        else:
            raise ValueError(f"unknown role {role!r}")
    if add_generation_prompt:
        text += template.fill(template.generation + template.final_prefix, bos, eos)
    elif messages and messages[-1]["role"] == "assistant":
        text += template.fill(template.suffix, bos, eos)
    if template.next_turn_stop:
        # Families without an end-of-turn token stop by emitting the next turn's tag.
        spans = [
            (a, b + len(template.next_turn_stop))
            if text.startswith(template.next_turn_stop, b)
            else (a, b)
            for a, b in spans
        ]
    return text, spans


def thinking_split(content: str) -> tuple[str, str]:
    """Qwen3: (reasoning, answer) of an assistant message that carries <think>...</think>."""
    if "</think>" not in content:
        return "", content
    reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
    return reasoning, content.split("</think>")[-1].lstrip("\n")


CHATML_USER = "<|im_start|>user\n{content}<|im_end|>\n"
CHATML_SYSTEM = "<|im_start|>system\n{content}<|im_end|>\n"
CHATML_ANSWER = "{content}<|im_end|>\n"

TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        ChatTemplate(
            name="llama2",
            user="{bos}[INST] {content} [/INST]",
            assistant=" {content} {eos}",
            system_mode="first_user",
            system_merge="<<SYS>>\n{system}\n<</SYS>>\n\n{content}",
            trim=True,
        ),
        ChatTemplate(
            name="llama3",
            prefix="{bos}",
            system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
            user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
            generation="<|start_header_id|>assistant<|end_header_id|>\n\n",
            assistant="{content}<|eot_id|>",
            tool="<|start_header_id|>ipython<|end_header_id|>\n\n{content}<|eot_id|>",
            trim=True,
        ),
        ChatTemplate(
            name="llama3_1",
            prefix="{bos}",
            system=(
                "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date:"
                " December 2023\nToday Date: 26 Jul 2024\n\n{content}<|eot_id|>"
            ),
            default_system="",
            user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
            generation="<|start_header_id|>assistant<|end_header_id|>\n\n",
            assistant="{content}<|eot_id|>",
            trim=True,
            notes="Llama 3.1-3.3: a system header with the knowledge and today dates, always",
        ),
        ChatTemplate(
            name="qwen",
            system=CHATML_SYSTEM,
            default_system="You are a helpful assistant.",
            user=CHATML_USER,
            generation="<|im_start|>assistant\n",
            assistant=CHATML_ANSWER,
            tool="<|im_start|>tool\n{content}<|im_end|>\n",
            notes="ChatML: Qwen1.5, Qwen2 (Qwen2.5 has its own default system prompt: qwen2_5)",
        ),
        ChatTemplate(
            name="qwen2_5",
            system=CHATML_SYSTEM,
            default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
            user=CHATML_USER,
            generation="<|im_start|>assistant\n",
            assistant=CHATML_ANSWER,
            tool="<|im_start|>user\n<tool_response>\n{content}\n</tool_response><|im_end|>\n",
            notes="Qwen2.5: ChatML with Qwen2.5's default system prompt",
        ),
        ChatTemplate(
            name="qwen3",
            system=CHATML_SYSTEM,
            user=CHATML_USER,
            generation="<|im_start|>assistant\n",
            assistant=CHATML_ANSWER,
            final_assistant="<think>\n{reasoning}\n</think>\n\n{content}<|im_end|>\n",
            tool="<|im_start|>user\n<tool_response>\n{content}\n</tool_response><|im_end|>\n",
            notes="thinking mode: the final answer carries its (possibly empty) think block",
        ),
        ChatTemplate(
            name="qwen3_nothink",
            system=CHATML_SYSTEM,
            user=CHATML_USER,
            generation="<|im_start|>assistant\n",
            assistant=CHATML_ANSWER,
            final_prefix="<think>\n\n</think>\n\n",
            tool="<|im_start|>user\n<tool_response>\n{content}\n</tool_response><|im_end|>\n",
            notes="enable_thinking=false: the empty think block is prompt, not learned",
        ),
        ChatTemplate(
            name="chatglm3",
            prefix="[gMASK]sop",
            system="<|system|>\n {content}",
            user="<|user|>\n {content}",
            generation="<|assistant|>",
            assistant="\n {content}",
            tool="<|observation|>\n {content}",
            next_turn_stop="<|user|>",
        ),
        ChatTemplate(
            name="glm4",
            prefix="[gMASK]<sop>",
            system="<|system|>\n{content}",
            user="<|user|>\n{content}",
            generation="<|assistant|>",
            assistant="\n{content}",
            tool="<|observation|>\n{content}",
            next_turn_stop="<|user|>",
        ),
        ChatTemplate(
            name="baichuan2",
            user="<reserved_106>{content}",
            generation="<reserved_107>",
            assistant="{content}{eos}",
            notes="Baichuan2 publishes no jinja template; this follows its chat code",
        ),
        ChatTemplate(
            name="mistral",
            prefix="{bos}",
            user=" [INST] {content} [/INST]",
            assistant=" {content}{eos}",
            system_mode="first_user",
            system_merge="{system}\n\n{content}",
        ),
        ChatTemplate(
            name="mistral_v0_3",
            prefix="{bos}",
            user="[INST] {content}[/INST]",
            assistant=" {content}{eos}",
            system_mode="last_user",
            trim="assistant",
            notes="Mistral-7B-Instruct-v0.3: a system prompt is written into the final user turn"
            " only, so training conversations (ending with an answer) carry none",
        ),
        ChatTemplate(
            name="gemma",
            prefix="{bos}",
            user="<start_of_turn>user\n{content}<end_of_turn>\n",
            generation="<start_of_turn>model\n",
            assistant="{content}<end_of_turn>\n",
            system_mode="first_user",
            system_merge="{system}\n\n{content}",
            trim=True,
            notes="Gemma has no system role: a system prompt is folded into the first user turn",
        ),
        ChatTemplate(
            name="phi3",
            system="<|system|>\n{content}<|end|>\n",
            user="<|user|>\n{content}<|end|>\n",
            generation="<|assistant|>\n",
            assistant="{content}<|end|>\n",
            suffix="{eos}",
        ),
        ChatTemplate(
            name="deepseek",
            prefix="{bos}",
            system="{content}\n\n",
            user="User: {content}\n\n",
            generation="Assistant:",
            assistant=" {content}{eos}",
        ),
        ChatTemplate(
            name="yi",
            system="{content}",
            user="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
            assistant=CHATML_ANSWER,
            notes="Yi-1.5: the assistant header is part of the user turn",
        ),
        ChatTemplate(
            name="default",
            prefix="{bos}",
            system="{content}\n\n",
            user="Human: {content}\n",
            generation="Assistant:",
            assistant=" {content}{eos}\n",
            notes="for base models without a chat format",
        ),
        ChatTemplate(
            name="alpaca",
            prefix="{bos}",
            system="{content}\n\n",
            default_system=(
                "Below is an instruction that describes a task. "
                "Write a response that appropriately completes the request."
            ),
            user="### Instruction:\n{content}\n\n",
            generation="### Response:\n",
            assistant="{content}{eos}\n\n",
        ),
    )
}


def render_qwen3(
    template: ChatTemplate, messages: list[dict[str, str]], **kwargs: object
) -> tuple[str, list[Span]]:
    """Qwen3 moves reasoning (<think>...</think>) into the final answer's think block
    and drops it from earlier answers, as its official template does."""
    final = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    reasoning = ""
    cleaned = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            thought, answer = thinking_split(m["content"])
            if i == final and i == len(messages) - 1:
                reasoning = thought.strip("\n")
                answer = answer.lstrip("\n")
            m = {**m, "content": answer}
        cleaned.append(m)
    slot = (template.final_assistant or "").replace("{reasoning}", reasoning)
    return render(replace(template, final_assistant=slot or None), cleaned, **kwargs)


def render_named(
    name: str,
    messages: list[dict[str, str]],
    *,
    bos: str = "",
    eos: str = "",
    add_generation_prompt: bool = False,
) -> tuple[str, list[Span]]:
    """Render with a registered template (text, assistant spans)."""
    template = TEMPLATES[name]
    kwargs = {"bos": bos, "eos": eos, "add_generation_prompt": add_generation_prompt}
    if name.startswith("qwen3"):
        return render_qwen3(template, messages, **kwargs)
    return render(template, messages, **kwargs)


def _expr(text: str, variables: dict[str, str]) -> str:
    """A jinja expression concatenating literal text and variables for the placeholders."""
    pieces, rest = [], text
    while rest:
        hits = [(rest.find("{" + k + "}"), k) for k in variables if "{" + k + "}" in rest]
        if not hits:
            pieces.append(json.dumps(rest))
            break
        at, key = min(hits)
        if at:
            pieces.append(json.dumps(rest[:at]))
        pieces.append(variables[key])
        rest = rest[at + len(key) + 2 :]
    return " + ".join(pieces) or '""'


def to_jinja(template: ChatTemplate) -> str:
    """An HF ``chat_template`` (jinja) that renders like ``render`` (reasoning aside)."""
    names = {"content": "content", "bos": "bos_token", "eos": "eos_token"}

    def out(slot: str) -> str:
        return "{{- " + _expr(slot, names) + " -}}"

    def trim(role: str) -> str:
        return " | trim" if _content(template, " ", role) == "" else ""

    default = json.dumps(template.default_system) if template.default_system is not None else "none"
    final = (template.final_assistant or "").replace("{reasoning}", "")
    merge = _expr(template.system_merge, {"system": "system", "content": "m['content']"})
    parts = [
        "{%- set system = " + default + " -%}{%- set msgs = messages -%}",
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        "{%- set system = messages[0]['content'] -%}{%- set msgs = messages[1:] -%}{%- endif -%}",
        out(template.prefix),
    ]
    if template.system_mode == "block":
        parts.append(
            "{%- if system is not none -%}{%- set content = system"
            + trim("system")
            + " -%}"
            + out(template.system)
            + "{%- endif -%}"
        )
    parts.append("{%- for m in msgs -%}{%- set content = m['content'] -%}")
    if template.system_mode != "block":
        where = (
            "loop.first"
            if template.system_mode == "first_user"
            else "(loop.last and m['role'] == 'user')"
        )
        parts.append(
            "{%- if "
            + where
            + " and system is not none -%}{%- set content = "
            + merge
            + " -%}{%- endif -%}"
        )
    parts.append("{%- if m['role'] == 'user' -%}{%- set content = content" + trim("user") + " -%}")
    parts.append(out(template.user))
    if template.tool is not None:
        parts.append(
            "{%- elif m['role'] == 'tool' -%}{%- set content = content" + trim("tool") + " -%}"
        )
        parts.append(out(template.tool))
    answer = "{%- set content = content" + trim("assistant") + " -%}" + out(template.generation)
    if template.final_prefix:
        answer += "{%- if loop.last -%}" + out(template.final_prefix) + "{%- endif -%}"
    if final:
        answer += "{%- if loop.last -%}" + out(final) + "{%- else -%}"
        answer += out(template.assistant) + "{%- endif -%}"
    else:
        answer += out(template.assistant)
    parts.append("{%- elif m['role'] == 'assistant' -%}" + answer + "{%- endif -%}{%- endfor -%}")
    parts.append(
        "{%- if add_generation_prompt -%}"
        + out(template.generation + template.final_prefix)
        + "{%- elif msgs and msgs[-1]['role'] == 'assistant' -%}"
        + out(template.suffix)
        + "{%- endif -%}"
    )
    return "".join(parts)


def to_paddlenlp(template: ChatTemplate, bos: str = "", eos: str = "") -> dict[str, object]:
    """PaddleNLP's chat_template.json (jinja, rendered by paddlenlp's ChatTemplate).

    ``conversation`` is [user part, bot part]; the assistant header goes with the
    user part, so PaddleNLP learns exactly what ftx learns (the answer and what
    ends it). Variables: ``user``, ``bot``, ``query``, ``index`` and ``system``
    from each record's context.
    """

    def fill(slot: str, content: str) -> str:
        return template.fill(slot, bos, eos, content=content)

    if template.system_mode == "last_user":
        raise ValueError(
            f"PaddleNLP's chat_template.json cannot put the system prompt into the last user"
            f" turn, as the {template.name} template does"
        )

    def var(name: str, role: str) -> str:
        return "{{ " + name + (" | trim" if _content(template, " ", role) == "" else "") + " }}"

    def user_part(name: str) -> str:
        plain = fill(template.user, var(name, "user")) + fill(template.generation, "")
        if template.system_mode != "first_user":
            return plain
        merged = template.system_merge.replace("{system}", "{{ system }}").replace(
            "{content}", "{{ " + name + " }}"
        )
        if template.trim is True:
            merged = "{% filter trim %}" + merged + "{% endfilter %}"
        first = fill(template.user, merged) + fill(template.generation, "")
        return "{% if index == 0 and system %}" + first + "{% else %}" + plain + "{% endif %}"

    system = fill(template.prefix, "")
    if template.system_mode == "block":
        block = fill(template.system, var("system", "system"))
        default = template.default_system
        fallback = "" if default is None else fill(template.system, default)
        system += "{% if system %}" + block + "{% else %}" + fallback + "{% endif %}"
    return {
        "system": system,
        "conversation": [user_part("user"), fill(template.assistant, var("bot", "assistant"))],
        "query": user_part("query"),
    }

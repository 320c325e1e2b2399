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
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

Span = tuple[int, int]


ALL_ROLES = ("system", "user", "assistant", "tool")
PLACEHOLDER = re.compile(r"\{(bos|eos|content|system|tools|name|arguments|id|calls)\}")


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
    trim: tuple[str, ...] = ()  # roles whose content is stripped, as the official template does
    final_assistant: str | None = None  # the last assistant turn, when it differs
    final_prefix: str = ""  # before the last answer and in the generation prompt (not learned)
    next_turn_stop: str = ""  # learn this opening of the next turn as the stop token
    # Function calling, where the family's official template defines it (see tool_format.py).
    tool_style: str | None = None  # how tool schemas and calls are written (None: no tools)
    tools_block: str | None = None  # written after the prefix when tools are given: {tools}
    tools_system: str | None = None  # the system content when tools are given: {system} {tools}
    system_with_tools: str | None = None  # the system slot when tools are given
    tools_first_user: str | None = None  # the first user turn when tools are given
    tools_last_user: str | None = None  # written before the last user turn: {tools}
    call: str = ""  # one function call: {name} {arguments} {id}
    calls_join: str = "\n"
    call_answer: str | None = None  # a call turn's slot ({calls}); default: the assistant slot
    calls_keep_content: bool = True  # a call turn also writes its text
    max_calls: int | None = None  # calls one turn may make
    tool_group: tuple[str, str, str] | None = None  # consecutive results: open, each, close
    tool_content_json: bool = False  # results written as JSON strings
    notes: str = ""

    def fill(self, slot: str, bos: str, eos: str, **values: str) -> str:
        """A slot with its placeholders replaced in one pass (so a placeholder inside a
        value is never expanded; literal text, braces included, is untouched)."""
        values = {"bos": bos, "eos": eos, **values}
        return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), slot)


def _content(template: ChatTemplate, text: str, role: str) -> str:
    return text.strip() if role in template.trim else text


def render(
    template: ChatTemplate,
    messages: list[dict[str, Any]],
    *,
    tools: Sequence[Any] = (),
    bos: str = "",
    eos: str = "",
    add_generation_prompt: bool = False,
) -> tuple[str, list[Span]]:
    """Text of a conversation and the spans of its assistant turns (to learn).

    ``messages`` is role/content dicts (assistant ones may carry ``tool_calls``); an
    optional leading system message. ``tools`` are function schemas for the system.
    """
    from ftx.core.data import tool_format

    def fill(slot: str, **values: str) -> str:
        return template.fill(slot, bos, eos, **values)

    if tools and template.tool_style is None:
        raise ValueError(
            f"the {template.name} template does not define tool calling; use one that does"
            f" ({', '.join(n for n, t in TEMPLATES.items() if t.tool_style)}) or 'auto'"
        )
    tools_text = tool_format.schemas(template.tool_style, tools) if tools else ""
    system = template.default_system
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    text = fill(template.prefix)
    if tools and template.tools_block:
        text += fill(template.tools_block, tools=tools_text)
    if tools and template.tools_system:
        system = fill(template.tools_system, system=system or "", tools=tools_text)
    system_slot = template.system_with_tools if tools and template.system_with_tools else None
    if system is not None and template.system_mode == "block":
        text += fill(system_slot or template.system, content=_content(template, system, "system"))
    spans: list[Span] = []
    last = len(messages) - 1
    ends_with_user = bool(messages) and messages[-1]["role"] == "user"
    merge_at = {"first_user": 0, "last_user": last if ends_with_user else -1}.get(
        template.system_mode
    )
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    calls = tool_format.CallIds()
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if role == "user":
            if i == merge_at and system is not None:
                content = fill(template.system_merge, system=system, content=content)
            content = _content(template, content, role)
            if tools and i == 0 and template.tools_first_user:
                content = fill(template.tools_first_user, tools=tools_text, content=content)
            if tools and i == last_user and template.tools_last_user:
                text += fill(template.tools_last_user, tools=tools_text)
            text += fill(template.user, content=content)
        elif role == "tool":
            if template.tool is None and template.tool_group is None:
                raise ValueError(f"the {template.name} template has no tool/observation turn")
            content = _content(template, content, role)
            if template.tool_content_json:
                content = json.dumps(content, ensure_ascii=False)
            values = {"content": content, "id": calls.answer()}
            if template.tool_group is not None:
                opening, each, closing = template.tool_group
                if i == 0 or messages[i - 1]["role"] != "tool":
                    text += fill(opening)
                text += fill(each, **values)
                if i == last or messages[i + 1]["role"] != "tool":
                    text += fill(closing)
            else:
                text += fill(template.tool or "", **values)
        elif role == "assistant":
            text += fill(template.generation)
            if i == last:
                text += fill(template.final_prefix)
            start = len(text)
            if message.get("tool_calls"):
                text += tool_format.call_turn(template, message, calls, fill)
            else:
                slot = template.final_assistant if i == last and template.final_assistant else None
                text += fill(slot or template.assistant, content=_content(template, content, role))
            spans.append((start, len(text)))
        else:
            raise ValueError(f"unknown role {role!r}")
    if add_generation_prompt:
        text += fill(template.generation + template.final_prefix)
    elif messages and messages[-1]["role"] == "assistant":
        text += fill(template.suffix)
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
            trim=ALL_ROLES,
        ),
        ChatTemplate(
            name="llama3",
            prefix="{bos}",
            system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
            user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
            generation="<|start_header_id|>assistant<|end_header_id|>\n\n",
            assistant="{content}<|eot_id|>",
            tool="<|start_header_id|>ipython<|end_header_id|>\n\n{content}<|eot_id|>",
            trim=ALL_ROLES,
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
            trim=("system", "user", "assistant"),
            tool_style="llama",
            system_with_tools=(
                "<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\nCutting"
                " Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n{content}<|eot_id|>"
            ),
            tools_first_user="Given the following functions, please respond with a JSON for a"
            " function call with its proper arguments that best answers the given prompt.\n\n"
            'Respond in the format {"name": function name, "parameters": dictionary of argument'
            " name and its value}.Do not use variables.\n\n{tools}{content}",
            call='{"name": "{name}", "parameters": {arguments}}',
            calls_keep_content=False,
            max_calls=1,
            tool="<|start_header_id|>ipython<|end_header_id|>\n\n{content}<|eot_id|>",
            tool_content_json=True,
            notes="Llama 3.1-3.3: a system header with the knowledge and today dates, always;"
            " tools in the first user turn",
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
            tool_style="qwen",
            tools_system="{system}\n\n# Tools\n\nYou may call one or more functions to assist"
            " with the user query.\n\nYou are provided with function signatures within"
            " <tools></tools> XML tags:\n<tools>{tools}\n</tools>\n\nFor each function call,"
            " return a json object with function name and arguments within <tool_call>"
            '</tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments":'
            " <args-json-object>}\n</tool_call>",
            call='<tool_call>\n{"name": "{name}", "arguments": {arguments}}\n</tool_call>',
            tool_group=(
                "<|im_start|>user",
                "\n<tool_response>\n{content}\n</tool_response>",
                "<|im_end|>\n",
            ),
            notes="Qwen2.5: ChatML with Qwen2.5's default system prompt; tools, calls, results",
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
            tool_style="glm4",
            tools_block="<|system|>\n你是一个名为 ChatGLM 的人工智能助手。"
            "你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
            "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具{tools}",
            call="{name}\n{arguments}",
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
            trim=("assistant",),
            tool_style="mistral",
            tools_last_user="[AVAILABLE_TOOLS] [{tools}][/AVAILABLE_TOOLS]",
            call='{"name": "{name}", "arguments": {arguments}, "id": "{id}"}',
            calls_join=", ",
            call_answer="[TOOL_CALLS] [{calls}]{eos}",
            calls_keep_content=False,
            tool='[TOOL_RESULTS] {"content": {content}, "call_id": "{id}"}[/TOOL_RESULTS]',
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
            trim=ALL_ROLES,
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
    template: ChatTemplate, messages: list[dict[str, Any]], **kwargs: Any
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
    messages: list[dict[str, Any]],
    *,
    tools: Sequence[Any] = (),
    bos: str = "",
    eos: str = "",
    add_generation_prompt: bool = False,
) -> tuple[str, list[Span]]:
    """Render with a registered template (text, assistant spans)."""
    template = TEMPLATES[name]
    kwargs = {
        "tools": tools,
        "bos": bos,
        "eos": eos,
        "add_generation_prompt": add_generation_prompt,
    }
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
        if "user" in template.trim:
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

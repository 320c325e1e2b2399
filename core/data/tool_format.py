"""How each family writes tool schemas and function calls, as its official template does.

The slots that place them (system block, first or last user turn, call turns, results)
are the family's ChatTemplate fields; this module holds what a slot cannot say: how a
list of schemas is serialised, and the ids Mistral's template requires.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

GLM4_CALL_NOTE = "在调用上述函数时，请使用 Json 格式表示调用的参数。"


def _json(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _mistral(tool: dict[str, Any]) -> str:
    # Mistral v0.3 writes string values raw (unescaped) and others as JSON, dropping "return".
    function = tool.get("function", tool)
    fields = [
        f'"{key}": "{value}"' if isinstance(value, str) else f'"{key}": {_json(value)}'
        for key, value in function.items()
        if key != "return"
    ]
    return '{"type": "function", "function": {' + ", ".join(fields) + "}}"


def _glm4(tool: dict[str, Any]) -> str:
    if tool.get("type") != "function":
        return ""
    function = tool["function"]
    # The official template's block tags eat the first of its two newlines (trim_blocks).
    return f"\n## {function.get('name', '')}\n\n{_json(function, 4)}\n{GLM4_CALL_NOTE}"


SCHEMAS: dict[str, Callable[[Sequence[dict[str, Any]]], str]] = {
    "qwen": lambda tools: "".join("\n" + _json(t) for t in tools),
    "llama": lambda tools: "".join(_json(t, 4) + "\n\n" for t in tools),
    "mistral": lambda tools: ", ".join(_mistral(t) for t in tools),
    "glm4": lambda tools: "".join(_glm4(t) for t in tools),
}


def schemas(style: str | None, tools: Sequence[dict[str, Any]]) -> str:
    """The tools as the family's template writes them."""
    assert style is not None
    return SCHEMAS[style](tools)


class CallIds:
    """Ids for a conversation's calls (Mistral's template requires 9 alphanumerics); each
    tool result answers the oldest call not answered yet."""

    def __init__(self) -> None:
        self.issued = 0
        self.pending: list[str] = []
        self.last = ""

    def new(self) -> str:
        self.issued += 1
        self.last = f"call{self.issued:05d}"
        self.pending.append(self.last)
        return self.last

    def answer(self) -> str:
        return self.pending.pop(0) if self.pending else self.last


def call_turn(template: Any, message: dict[str, Any], ids: CallIds, fill: Callable) -> str:
    """An assistant turn that calls functions (what is learned of it)."""
    calls = message["tool_calls"]
    if template.max_calls is not None and len(calls) > template.max_calls:
        raise ValueError(
            f"the {template.name} template allows {template.max_calls} function call per turn,"
            f" this turn makes {len(calls)}"
        )
    written = [
        fill(
            template.call,
            name=call["function"]["name"],
            arguments=_json(call["function"]["arguments"]),
            id=ids.new(),
        )
        for call in calls
    ]
    content = message["content"].strip() if "assistant" in template.trim else message["content"]
    if template.call_answer is not None:
        return fill(template.call_answer, calls=template.calls_join.join(written))
    parts = ([content] if content and template.calls_keep_content else []) + written
    return fill(template.assistant, content=template.calls_join.join(parts))

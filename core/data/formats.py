"""Dataset row formats (LLaMA-Factory's names and column/tag defaults) -> Conversation."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from ftx.core.data.conversation import Conversation, Message, ToolCall


class RowError(ValueError):
    """A row that cannot be turned into a training example (message says why)."""


ALPACA_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "history": "history",
    "system": "system",
}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools"}
OPENAI_COLUMNS = {"messages": "messages", "system": "system", "tools": "tools"}
TEXT_COLUMNS = {"prompt": "text"}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
OPENAI_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "function_call",
    "system_tag": "system",
}


def _text(row: Mapping[str, Any], column: str, *, required: bool) -> str | None:
    value = row.get(column)
    if value is None or (value == "" and not required):
        if required:
            raise RowError(f"missing field '{column}'")
        return None
    if not isinstance(value, str):
        raise RowError(f"field '{column}' must be a string, got {type(value).__name__}")
    return value


def _assistant_text(text: str | None, where: str) -> str:
    if text is None or not text.strip():
        raise RowError(f"empty assistant turn ({where})")
    return text


def alpaca(
    row: Mapping[str, Any], columns: Mapping[str, str], tags: Mapping[str, str]
) -> Conversation:
    """instruction (+ "\\n" + input) -> output, after optional [query, response] history."""
    cols = {**ALPACA_COLUMNS, **columns}
    prompt = _text(row, cols["prompt"], required=True)
    query = _text(row, cols["query"], required=False)
    response = _assistant_text(_text(row, cols["response"], required=True), cols["response"])
    messages: list[Message] = []
    history = row.get(cols["history"]) or []
    if not isinstance(history, list):
        raise RowError(f"field '{cols['history']}' must be a list of [query, response] pairs")
    for i, pair in enumerate(history):
        if not (
            isinstance(pair, list | tuple)
            and len(pair) == 2
            and all(isinstance(x, str) for x in pair)
        ):
            raise RowError(f"history[{i}] must be a [query, response] pair of strings")
        messages += [
            Message("user", pair[0]),
            Message("assistant", _assistant_text(pair[1], f"history[{i}]")),
        ]
    user = f"{prompt}\n{query}" if query else prompt
    messages += [Message("user", user), Message("assistant", response)]
    return Conversation(tuple(messages), system=_text(row, cols["system"], required=False))


def _chat(defaults_cols: Mapping[str, str], default_tags: Mapping[str, str]):
    def read(
        row: Mapping[str, Any],
        columns: Mapping[str, str],
        tags: Mapping[str, str],
        final_role: str = "assistant",
    ) -> Conversation:
        cols = {**defaults_cols, **columns}
        tag = {**default_tags, **tags}
        turns = row.get(cols["messages"])
        if not isinstance(turns, list) or not turns:
            raise RowError(f"field '{cols['messages']}' must be a non-empty list of turns")
        system = _text(row, cols["system"], required=False)
        roles = {
            tag["user_tag"]: "user",
            tag["observation_tag"]: "tool",
            tag["assistant_tag"]: "assistant",
            tag["function_tag"]: "assistant",
        }
        messages: list[Message] = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, Mapping):
                keys = f"'{tag['role_tag']}' and '{tag['content_tag']}'"
                raise RowError(f"turn {i} must be an object with {keys}")
            role_name = turn.get(tag["role_tag"])
            content = turn.get(tag["content_tag"])
            if role_name == tag["system_tag"] and i == 0:
                if not isinstance(content, str):
                    raise RowError("the system turn's content must be a string")
                system = content
                continue
            if not isinstance(role_name, str) or role_name not in roles:
                raise RowError(
                    f"turn {i} has unknown role {role_name!r}; expected one of {sorted(roles)}"
                )
            if not isinstance(content, str):
                raise RowError(f"turn {i} content must be a string, got {type(content).__name__}")
            role = roles[role_name]
            expect_user = len(messages) % 2 == 0
            if expect_user != (role in ("user", "tool")):
                want = (
                    f"{tag['user_tag']}/{tag['observation_tag']}"
                    if expect_user
                    else f"{tag['assistant_tag']}/{tag['function_tag']}"
                )
                raise RowError(f"wrong role order: turn {i} is {role_name!r}, expected {want}")
            if role_name == tag["function_tag"]:
                messages.append(Message("assistant", "", tool_calls=_calls(content, i)))
                continue
            if role == "assistant":
                _assistant_text(content, f"turn {i}")
            messages.append(Message(role, content))
        if not messages or messages[-1].role != final_role:
            article = "an" if final_role == "assistant" else "a"
            raise RowError(f"the conversation must end with {article} {final_role} turn")
        return Conversation(tuple(messages), system=system, tools=_tools(row.get(cols["tools"])))

    return read


def _calls(content: str, turn: int) -> tuple[ToolCall, ...]:
    """A function-call turn: JSON ``{"name", "arguments"}`` or a list of them."""
    try:
        parsed = json.loads(content)
    except json.JSONDecodeError as exc:
        raise RowError(f"turn {turn}: a function call must be JSON ({exc.msg})") from None
    calls = parsed if isinstance(parsed, list) else [parsed]
    found = []
    for call in calls:
        if not (isinstance(call, Mapping) and isinstance(call.get("name"), str) and call["name"]):
            raise RowError(f'turn {turn}: a function call needs {{"name": ..., "arguments": ...}}')
        found.append(ToolCall(call["name"], call.get("arguments", {})))
    if not found:
        raise RowError(f"turn {turn}: an empty list of function calls")
    return tuple(found)


def _tools(value: Any) -> tuple[Any, ...]:
    """The tools column: function schemas as a JSON string (LLaMA-Factory) or a list, each
    given as {"name", "description", "parameters"} or already wrapped as a function tool."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(f"the tools column must be JSON ({exc.msg})") from None
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
        raise RowError("the tools column must be a list of function schemas")
    wrapped = []
    for tool in value:
        if "type" not in tool and not isinstance(tool.get("name"), str):
            raise RowError("every tool needs a 'name' (or a 'type' and its definition)")
        if tool.get("type") == "function" and not isinstance(tool.get("function"), Mapping):
            raise RowError("a tool of type 'function' needs its 'function' (name, parameters)")
        wrapped.append(dict(tool) if "type" in tool else {"type": "function", "function": tool})
    return tuple(wrapped)


def text(
    row: Mapping[str, Any], columns: Mapping[str, str], tags: Mapping[str, str]
) -> Conversation:
    """A pre-training row: one plain text."""
    cols = {**TEXT_COLUMNS, **columns}
    value = _text(row, cols["prompt"], required=True)
    if not value.strip():
        raise RowError(f"field '{cols['prompt']}' is empty")
    return Conversation(text=value)


def src_tgt(
    row: Mapping[str, Any], columns: Mapping[str, str], tags: Mapping[str, str]
) -> Conversation:
    """PaddleNLP rows: ``src``/``tgt`` strings or equal-length lists, optional ``context``."""
    cols = {"src": "src", "tgt": "tgt", "context": "context", **columns}
    src, tgt = row.get(cols["src"]), row.get(cols["tgt"])
    if isinstance(src, str) and isinstance(tgt, str):
        src, tgt = [src], [tgt]
    if not (isinstance(src, list) and isinstance(tgt, list)) or len(src) != len(tgt) or not src:
        raise RowError(
            f"'{cols['src']}' and '{cols['tgt']}' must be strings or lists of equal length"
        )
    messages: list[Message] = []
    for i, (query, answer) in enumerate(zip(src, tgt, strict=False)):
        if not (isinstance(query, str) and isinstance(answer, str)):
            raise RowError(f"round {i}: src and tgt must be strings")
        messages += [
            Message("user", query),
            Message("assistant", _assistant_text(answer, f"round {i}")),
        ]
    context = row.get(cols["context"]) or {}
    system = context.get("system") if isinstance(context, Mapping) else None
    return Conversation(tuple(messages), system=system if isinstance(system, str) else None)


READERS: dict[str, Callable[..., Conversation]] = {
    "alpaca": alpaca,
    "sharegpt": _chat(SHAREGPT_COLUMNS, SHAREGPT_TAGS),
    "openai": _chat(OPENAI_COLUMNS, OPENAI_TAGS),
    "text": text,
    "src_tgt": src_tgt,
}


def preference(
    fmt: str, row: Mapping[str, Any], columns: Mapping[str, str], tags: Mapping[str, str]
) -> Conversation:
    """A ranked row (LLaMA-Factory ``ranking: true``): a prompt plus chosen/rejected answers."""
    cols = {"chosen": "chosen", "rejected": "rejected", **columns}
    answers = []
    for key in ("chosen", "rejected"):
        value = row.get(cols[key])
        if fmt != "alpaca" and isinstance(value, Mapping):  # a turn object, as in sharegpt
            tag = {**(SHAREGPT_TAGS if fmt == "sharegpt" else OPENAI_TAGS), **tags}
            value = value.get(tag["content_tag"])
        if not isinstance(value, str) or not value.strip():
            raise RowError(f"preference field '{cols[key]}' must be a non-empty string")
        answers.append(Message("assistant", value))
    if answers[0].content.strip() == answers[1].content.strip():
        raise RowError(
            f"the '{cols['chosen']}' and '{cols['rejected']}' answers are the same: the pair"
            " prefers nothing"
        )
    if fmt == "alpaca":
        response = {**ALPACA_COLUMNS, **columns}["response"]
        base = alpaca({**row, response: answers[0].content}, columns, tags)
        prompt = base.messages[:-1]
    elif fmt in ("sharegpt", "openai"):
        base = READERS[fmt](row, columns, tags, final_role="user")
        prompt = base.messages
    else:
        raise RowError(f"format '{fmt}' cannot hold preference data (use alpaca or sharegpt)")
    return Conversation(
        prompt, system=base.system, tools=base.tools, chosen=answers[0], rejected=answers[1]
    )


def to_conversation(
    fmt: str,
    row: Any,
    columns: Mapping[str, str],
    tags: Mapping[str, str],
    ranking: bool = False,
) -> Conversation:
    """Normalise one row; raise RowError when it is malformed."""
    if not isinstance(row, Mapping):
        raise RowError(f"a row must be a JSON object, got {type(row).__name__}")
    if ranking:
        return preference(fmt, row, columns, tags)
    conv = READERS[fmt](row, columns, tags)
    kto_column = columns.get("kto_tag", "kto_tag")
    if kto_column in row:
        tag = row[kto_column]
        if not isinstance(tag, bool):
            raise RowError(f"field '{kto_column}' must be true or false")
        conv = Conversation(conv.messages, conv.system, conv.tools, conv.text, kto_tag=tag)
    return conv


def to_document(
    fmt: str, row: Any, columns: Mapping[str, str], tags: Mapping[str, str]
) -> Conversation:
    """A pre-training document (stage pt), as LLaMA-Factory reads one: the text column of
    text rows, an alpaca row's prompt (+ "\\n" + query; the response is not needed), a
    chat row's first turn."""
    if not isinstance(row, Mapping):
        raise RowError(f"a row must be a JSON object, got {type(row).__name__}")
    if fmt == "text":
        return text(row, columns, tags)
    if fmt == "alpaca":
        cols = {**ALPACA_COLUMNS, **columns}
        prompt = cols["prompt"]
        if prompt not in row and "prompt" not in columns and "text" in row:
            prompt = "text"  # a .txt file, or {"text": ...} rows, without a columns mapping
        document = _text(row, prompt, required=True)
        query = _text(row, cols["query"], required=False)
        document = f"{document}\n{query}" if query else document
    elif fmt in ("sharegpt", "openai"):
        cols = {**(SHAREGPT_COLUMNS if fmt == "sharegpt" else OPENAI_COLUMNS), **columns}
        tag = {**(SHAREGPT_TAGS if fmt == "sharegpt" else OPENAI_TAGS), **tags}
        turns = row.get(cols["messages"])
        if turns is not None and not isinstance(turns, list):
            raise RowError(f"field '{cols['messages']}' is {type(turns).__name__}, not a list")
        first = next(
            (t for t in turns or [] if isinstance(t, Mapping) and t.get(tag["role_tag"])
             != tag["system_tag"]),
            None,
        )  # fmt: skip
        if first is None or not isinstance(first.get(tag["content_tag"]), str):
            raise RowError(f"field '{cols['messages']}' has no first turn to pre-train on")
        document = first[tag["content_tag"]]
    else:
        raise RowError(f"{fmt} rows are not pre-training documents; use text or alpaca")
    if not document.strip():
        raise RowError("the document is empty")
    return Conversation(text=document)

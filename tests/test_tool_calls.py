"""Function-calling data renders exactly as each family's official template does: tools in
the system prompt (Qwen2.5), in the first user turn (Llama 3.1), before the last user
turn (Mistral v0.3) or in a system preamble (GLM-4); calls and results in their own form.
Token ids are compared with tokenizer.apply_chat_template over the official jinja."""

from __future__ import annotations

import json

import pytest
from test_templates import FIXTURES, family_tokenizer

from ftx.core.data.conversation import Conversation, Message, ToolCall
from ftx.core.data.formats import to_conversation
from ftx.core.data.render import ChatEncoder
from ftx.core.data.templates import TEMPLATES, render_named
from ftx.core.prepared import IGNORE_INDEX

WEATHER = {
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "城市"}},
        "required": ["city"],
    },
}
CLOCK = {"name": "get_time", "description": "The time in a zone", "parameters": {"type": "object"}}
TOOLS = ({"type": "function", "function": WEATHER}, {"type": "function", "function": CLOCK})

# As LLaMA-Factory's sharegpt rows hold them: tools as a JSON string, calls as JSON text.
ROW = {
    "conversations": [
        {"from": "human", "value": "What is the weather in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather",
                                                       "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": '{"temp": 20, "sky": "clear"}'},
        {"from": "gpt", "value": "It is 20 degrees and clear in Paris."},
        {"from": "human", "value": "And the time there?"},
        {"from": "function_call", "value": json.dumps({"name": "get_time",
                                                       "arguments": {"zone": "Europe/Paris"}})},
        {"from": "observation", "value": "14:05"},
        {"from": "gpt", "value": "It is 14:05."},
    ],
    "tools": json.dumps([WEATHER, CLOCK]),
}  # fmt: skip


def two_calls_at_once() -> Conversation:
    return Conversation(
        (
            Message("user", "Weather in Paris and the time?"),
            Message(
                "assistant",
                "Let me check.",
                (
                    ToolCall("get_weather", {"city": "Paris"}),
                    ToolCall("get_time", {"zone": "Europe/Paris"}),
                ),
            ),
            Message("tool", '{"temp": 20}'),
            Message("tool", "14:05"),
            Message("assistant", "20 degrees, 14:05."),
        ),
        system="You are a travel agent.",
        tools=TOOLS,
    )


def official_chat(name: str, conv: Conversation) -> tuple[list[dict], dict]:
    """The conversation as the family's official template takes it."""
    chat = conv.as_chat()
    extra: dict = {"tools": list(conv.tools)}
    if name == "mistral_v0_3":  # its template requires 9-character call ids on both sides
        issued, pending = 0, []
        for message in chat:
            for call in message.get("tool_calls", []):
                issued += 1
                call["id"] = f"call{issued:05d}"
                pending.append(call["id"])
            if message["role"] == "tool":
                message["tool_call_id"] = pending.pop(0)
    if name == "glm4":  # GLM-4 reads tools from a message and writes calls as "name\nargs"
        extra = {}
        chat[0]["tools"] = list(conv.tools)
        for message in chat:
            for call in message.pop("tool_calls", []):
                function = call["function"]
                message["content"] = (
                    function["name"] + "\n" + json.dumps(function["arguments"], ensure_ascii=False)
                )
            if message["role"] == "tool":
                message["role"] = "observation"
    return chat, extra


SPECIALS = {
    "qwen2_5": ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"],
    "llama3_1": [],
    "mistral_v0_3": ["[TOOL_CALLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"],
    "glm4": [],
}


@pytest.mark.parametrize("name", sorted(SPECIALS))
def test_function_calling_equals_the_official_template(name: str) -> None:
    from test_templates import FAMILIES

    official = (FIXTURES / f"{'glm4' if name == 'glm4' else name}.jinja").read_text()
    base = FAMILIES[name]
    FAMILIES[f"{name}+tools"] = (base[0] + SPECIALS[name], base[1], base[2])
    tok = family_tokenizer(f"{name}+tools", official)
    encoder = ChatEncoder(tok, name, where="test")
    cases = [to_conversation("sharegpt", ROW, {}, {})]
    if name in ("qwen2_5", "mistral_v0_3"):  # the families whose turns take several calls
        cases.append(two_calls_at_once())
    for conv in cases:
        chat, extra = official_chat(name, conv)
        want = tok.apply_chat_template(chat, tokenize=True, **extra)
        want = list(want if isinstance(want, list) else want["input_ids"])
        enc = encoder.encode(conv, max_len=10_000, train_on_prompt=False, mask_history=False)
        assert enc.input_ids == want, (name, tok.decode(enc.input_ids), tok.decode(want))
        # The calls are learned (as LLaMA-Factory learns function_call turns); results are not.
        learned = tok.decode([t for t in enc.labels if t != IGNORE_INDEX])
        assert "get_weather" in learned and "Paris" in learned
        assert "20 degrees" in learned and "clear" not in learned.split("Paris")[0]
        if name != "mistral_v0_3":  # Mistral's final-user-turn rule keeps the prompt out
            prompt, _ = encoder.encode_prompt(conv)
            chat_prompt, extra = official_chat(name, Conversation(
                conv.messages[:-1], conv.system, conv.tools))  # fmt: skip
            want_prompt = tok.apply_chat_template(
                chat_prompt, tokenize=True, add_generation_prompt=True, **extra
            )
            want_prompt = list(
                want_prompt if isinstance(want_prompt, list) else want_prompt["input_ids"]
            )
            assert prompt == want_prompt, name


def test_families_without_tool_calling_say_so() -> None:
    conv = to_conversation("sharegpt", ROW, {}, {})
    with pytest.raises(ValueError, match="does not define tool calling"):
        render_named("llama3", conv.as_chat(), tools=conv.tools)
    assert [n for n, t in TEMPLATES.items() if t.tool_style] == [
        "llama3_1",
        "qwen2_5",
        "glm4",
        "mistral_v0_3",
    ]


def test_llama3_1_takes_one_call_per_turn() -> None:
    conv = two_calls_at_once()
    with pytest.raises(ValueError, match="allows 1 function call per turn"):
        render_named("llama3_1", conv.as_chat(), tools=conv.tools)

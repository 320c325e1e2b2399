"""Chat templates: ftx's token ids equal apply_chat_template with each family's OFFICIAL
jinja template (tests/fixtures/chat_templates, sources in SOURCES.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftx.core.data.conversation import Conversation, Message
from ftx.core.data.render import ChatEncoder
from ftx.core.data.templates import TEMPLATES, render_named, to_jinja, to_paddlenlp
from ftx.core.models.init import CORPUS, train_tokenizer
from ftx.core.prepared import IGNORE_INDEX

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"

# family -> (special tokens, bos, eos); names as in each model's tokenizer
FAMILIES = {
    "llama2": (["<s>", "</s>"], "<s>", "</s>"),
    "llama3": (
        [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        "<|begin_of_text|>",
        "<|eot_id|>",
    ),
    "qwen": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>"),
    "qwen2_5": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>"),
    "llama3_1": (
        [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|eom_id|>",
            "<|python_tag|>",
        ],
        "<|begin_of_text|>",
        "<|eot_id|>",
    ),
    "mistral_v0_3": (
        ["<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]"],
        "<s>",
        "</s>",
    ),
    "qwen3": (
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        None,
        "<|im_end|>",
    ),
    "chatglm3": (
        ["[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>", "</s>"],
        None,
        "</s>",
    ),
    "glm4": (
        [
            "[gMASK]",
            "<sop>",
            "<|system|>",
            "<|user|>",
            "<|assistant|>",
            "<|observation|>",
            "<|endoftext|>",
        ],
        None,
        "<|endoftext|>",
    ),
    "mistral": (["<s>", "</s>"], "<s>", "</s>"),
    "gemma": (["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>"),
    "phi3": (
        ["<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        "<s>",
        "<|endoftext|>",
    ),
    "deepseek": (
        ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"],
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
    ),
    "yi": (["<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>"),
}

CONVERSATIONS = [
    Conversation((Message("user", "Hi there"), Message("assistant", "Hello! How can I help?"))),
    Conversation(
        (
            Message("user", "What is 2+2? "),
            Message("assistant", " It is 4.\n"),
            Message("user", "And times three?"),
            Message("assistant", "Twelve."),
        ),
        system="You are a terse maths tutor.",
    ),
    Conversation(
        tuple(
            Message(role, f"{role} turn {i}: the quick brown fox jumps over the lazy dog")
            for i in range(3)
            for role in ("user", "assistant")
        )
    ),
    Conversation(
        (Message("user", "多语言 ünïcode ✓"), Message("assistant", "好的 ✓")), system="系统"
    ),
]


def family_tokenizer(name: str, chat_template: str):
    specials, bos, eos = FAMILIES[name]
    style = {"specials": specials, "bos": bos, "eos": eos, "pad": eos, "template": chat_template}
    corpus = CORPUS.read_text(encoding="utf-8").splitlines()
    return train_tokenizer(style, 600, corpus)


def official_ids(tok, chat, generation: bool, **extra) -> list[int]:
    ids = tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=generation, **extra)
    return list(ids if isinstance(ids, list) else ids["input_ids"])


def cases(name: str):
    for conv in CONVERSATIONS:
        if name == "gemma" and conv.system:
            continue  # Gemma's official template refuses a system role
        yield conv


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_ids_equal_the_official_template(name: str) -> None:
    official = (FIXTURES / f"{name}.jinja").read_text()
    tok = family_tokenizer(name, official)
    encoder = ChatEncoder(tok, name, where="test")
    for conv in cases(name):
        enc = encoder.encode(conv, max_len=10_000, train_on_prompt=False, mask_history=False)
        assert enc.input_ids == official_ids(tok, conv.as_chat(), False), (name, conv)
        prompt, reference = encoder.encode_prompt(conv)
        assert prompt == official_ids(tok, conv.as_chat()[:-1], True), name
        assert reference == conv.messages[-1].content
        # Only the answers (with what ends them) are learned, each exactly once.
        learned = tok.decode([t for t in enc.labels if t != IGNORE_INDEX])
        answers = [
            m.content.strip() if TEMPLATES[name].trim else m.content
            for m in conv.messages
            if m.role == "assistant"
        ]
        position = 0
        for answer in answers:
            found = learned.find(answer, position)
            assert found >= 0, (name, answer, learned)
            position = found + len(answer)
        prompt_text = tok.decode(
            [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab == IGNORE_INDEX]
        )
        assert conv.messages[0].content.strip() in prompt_text


def test_qwen3_thinking_and_non_thinking() -> None:
    official = (FIXTURES / "qwen3.jinja").read_text()
    tok = family_tokenizer("qwen3", official)
    reasoning = Conversation(
        (
            Message("user", "q1"),
            Message("assistant", "<think>\nold thoughts\n</think>\n\na1"),
            Message("user", "q2"),
            Message("assistant", "<think>\nnew thoughts\n</think>\n\na2"),
        )
    )
    for conv in (*CONVERSATIONS, reasoning):
        chat = conv.as_chat()
        think = ChatEncoder(tok, "qwen3", where="t").encode(
            conv, max_len=9999, train_on_prompt=False, mask_history=False
        )
        assert think.input_ids == official_ids(tok, chat, False)
        nothink = ChatEncoder(tok, "qwen3_nothink", where="t")
        assert nothink.encode_prompt(conv)[0] == official_ids(
            tok, chat[:-1], True, enable_thinking=False
        )
        learned = tok.decode(
            [
                t
                for t in nothink.encode(
                    conv, max_len=9999, train_on_prompt=False, mask_history=False
                ).labels
                if t != IGNORE_INDEX
            ]
        )
        assert "<think>" not in learned  # the empty think block is prompt in non-thinking mode
    learned = tok.decode([t for t in think.labels if t != IGNORE_INDEX])
    assert "new thoughts" in learned and "old thoughts" not in tok.decode(think.input_ids)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_exported_jinja_renders_like_ftx(name: str) -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(to_jinja(TEMPLATES[name]))
    for conv in CONVERSATIONS:
        chat = [m for m in conv.as_chat() if "<think>" not in m["content"]]
        for generation in (False, True):
            messages = chat[:-1] if generation else chat
            mine, _ = render_named(
                name, messages, bos="<s>", eos="</s>", add_generation_prompt=generation
            )
            theirs = template.render(
                messages=messages,
                bos_token="<s>",
                eos_token="</s>",
                add_generation_prompt=generation,
            )
            assert theirs == mine


def test_baichuan2_follows_its_chat_code() -> None:
    # Baichuan2 ships no jinja; its chat code writes <reserved_106> user <reserved_107> answer eos.
    text, spans = render_named(
        "baichuan2",
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        eos="</s>",
    )
    assert text == "<reserved_106>q<reserved_107>a</s>"
    assert [text[a:b] for a, b in spans] == ["a</s>"]


def test_glm_families_learn_the_next_turn_tag_as_stop_token() -> None:
    text, spans = render_named(
        "glm4",
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "b"},
        ],
    )
    assert [text[a:b] for a, b in spans] == ["\na<|user|>", "\nb"]


PADDLENLP_RENDER = """
import json, sys
from paddlenlp.transformers.tokenizer_utils import ChatTemplate
cases = json.loads(sys.argv[1])
out = []
for case in cases:
    chat = ChatTemplate.from_dict(case["template"])
    context = {"system": case["system"]} if case["system"] else {}
    pairs = case["pairs"]
    prompt = chat([*pairs[:-1], [pairs[-1][0]]], context_data=dict(context))
    training = chat.render_system(dict(context)) + "".join(
        "".join(chat.render_conversation(p, index=i, context_data=dict(context)))
        for i, p in enumerate(pairs)
    )
    out.append({"prompt": prompt, "training": training})
print(json.dumps(out))
"""


@pytest.mark.env
def test_paddlenlp_renders_the_exported_chat_template_like_ftx() -> None:
    from conftest import run_in_env
    from oracles import PADDLENLP

    cases, expected = [], []
    for name in ("llama3", "qwen", "llama2", "mistral", "phi3", "deepseek", "yi", "alpaca"):
        exported = to_paddlenlp(TEMPLATES[name], bos="<s>", eos="</s>")
        for conv in CONVERSATIONS[:2]:
            chat = conv.as_chat()
            pairs = [
                [u["content"], a["content"]]
                for u, a in zip(
                    chat[-len(conv.messages) :: 2], chat[-len(conv.messages) + 1 :: 2], strict=True
                )
            ]
            cases.append({"template": exported, "system": conv.system, "pairs": pairs})
            prompt, _ = render_named(
                name, chat[:-1], bos="<s>", eos="</s>", add_generation_prompt=True
            )
            full, _ = render_named(name, chat, bos="<s>", eos="</s>")
            suffix = TEMPLATES[name].fill(TEMPLATES[name].suffix, "<s>", "</s>")
            expected.append(
                {"prompt": prompt, "training": full.removesuffix(suffix) if suffix else full}
            )
    found = run_in_env(PADDLENLP, PADDLENLP_RENDER, json.dumps(cases))
    for case, got, want in zip(cases, found, expected, strict=True):
        assert got == want, case["template"]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_array_encoding_equals_the_list_encoding(name: str) -> None:
    """Data preparation's fast path (char-to-token spans) learns exactly the same tokens."""
    tok = family_tokenizer(name, (FIXTURES / f"{name}.jinja").read_text())
    encoder = ChatEncoder(tok, name, where="test")
    convs = list(cases(name))
    for train_on_prompt, mask_history in ((False, False), (False, True), (True, False)):
        options = {
            "max_len": 60,  # some conversations are cut, so the slow path is taken too
            "train_on_prompt": train_on_prompt,
            "mask_history": mask_history,
        }
        lists = encoder.encode_many(convs, **options)
        arrays = encoder.encode_arrays(convs, **options)
        for listed, (ids, labels, truncated) in zip(lists, arrays, strict=True):
            assert ids.tolist() == listed.input_ids and labels.tolist() == listed.labels
            assert truncated == listed.truncated

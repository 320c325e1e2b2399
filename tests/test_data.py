"""Data preparation: formats -> conversation -> chat template -> masked tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ftx.core.data.conversation import Conversation, Message
from ftx.core.data.prepare import load_tokenizer, prepare
from ftx.core.data.render import ChatEncoder
from ftx.core.errors import FtxError
from ftx.core.prepared import IGNORE_INDEX, load_split, read_eval_prompts, read_manifest
from ftx.core.recipe import load_recipe

CHAT = Conversation(
    (
        Message("user", "What is 2+2?"),
        Message("assistant", "4"),
        Message("user", "And 3+3?"),
        Message("assistant", "6"),
    ),
    system="Be brief.",
)


def make_recipe(tmp_path: Path, model: Path, datasets: str, extra: str = "") -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"model: {{path: {model}}}\n"
        f"data:\n  datasets: {datasets}\n  max_seq_len: 256\n{extra}"
        "method: {finetuning: full}\n"
    )
    return path


def learned_text(tokenizer, ids, labels) -> list[str]:
    """Decoded runs of learned tokens."""
    runs, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2"])
def test_ids_equal_apply_chat_template_and_only_answers_are_learned(arch, request) -> None:
    model = request.getfixturevalue(arch)
    tok = load_tokenizer(load_recipe(make_recipe(model.parent, model, "[x.jsonl]")).recipe)
    enc = ChatEncoder(tok, "auto", where="test").encode(
        CHAT, max_len=512, train_on_prompt=False, mask_history=False
    )
    expected = tok.apply_chat_template(CHAT.as_chat(), tokenize=True)
    expected = expected if isinstance(expected, list) else expected["input_ids"]
    assert enc.input_ids == list(expected)
    runs = learned_text(tok, enc.input_ids, enc.labels)
    eot = tok.eos_token
    assert [r.replace(eot, "").strip() for r in runs] == ["4", "6"]
    assert all(eot in r for r in runs)  # the end-of-turn token is learned


def test_mask_history_and_train_on_prompt(tiny_llama: Path) -> None:
    tok = load_tokenizer(
        load_recipe(make_recipe(tiny_llama.parent, tiny_llama, "[x.jsonl]")).recipe
    )
    encoder = ChatEncoder(tok, "auto", where="test")
    last = encoder.encode(CHAT, max_len=512, train_on_prompt=False, mask_history=True)
    assert [
        r.replace(tok.eos_token, "").strip() for r in learned_text(tok, last.input_ids, last.labels)
    ] == ["6"]
    everything = encoder.encode(CHAT, max_len=512, train_on_prompt=True, mask_history=False)
    assert everything.labels == everything.input_ids


def test_truncation_drops_oldest_rounds_and_keeps_system(tiny_llama: Path) -> None:
    tok = load_tokenizer(
        load_recipe(make_recipe(tiny_llama.parent, tiny_llama, "[x.jsonl]")).recipe
    )
    encoder = ChatEncoder(tok, "auto", where="test")
    full = encoder.encode(CHAT, max_len=512, train_on_prompt=False, mask_history=False)
    short = encoder.encode(
        CHAT, max_len=len(full.input_ids) - 1, train_on_prompt=False, mask_history=False
    )
    assert short.truncated and len(short.input_ids) < len(full.input_ids)
    text = tok.decode(short.input_ids)
    assert "Be brief." in text and "3+3" in text and "2+2" not in text


def test_prepare_alpaca_sharegpt_and_dataset_info(tmp_path: Path, tiny_llama: Path) -> None:
    data_dir = Path(__file__).parent.parent / "recipes" / "data"
    recipe = make_recipe(
        tmp_path,
        tiny_llama,
        "[alpaca_demo, sharegpt_demo]",
        f"  dataset_dir: {data_dir}\n  val_size: 2\n",
    )
    loaded = load_recipe(recipe)
    manifest = prepare(loaded.recipe, tmp_path / "prepared")
    assert manifest["report"]["rows"] == 8 and manifest["report"]["skipped"] == 0
    train, val = (
        load_split(tmp_path / "prepared", "train"),
        load_split(tmp_path / "prepared", "val"),
    )
    assert len(train) == 6 and len(val) == 2
    assert read_manifest(tmp_path / "prepared")["splits"]["train"]["examples"] == 6
    tok = load_tokenizer(loaded.recipe)
    answers = []
    for split in (train, val):
        for i in range(len(split)):
            ids, labels = split[i]
            assert ids.dtype == np.int32 and len(ids) == len(labels)
            runs = learned_text(tok, ids.tolist(), labels.tolist())
            answers += [r.replace(tok.eos_token, "").strip() for r in runs]
    expected = []
    for line in (data_dir / "alpaca_demo.jsonl").read_text().splitlines():
        row = json.loads(line)
        expected += [pair[1] for pair in row.get("history", [])] + [row["output"]]
    for line in (data_dir / "sharegpt_demo.jsonl").read_text().splitlines():
        expected += [t["value"] for t in json.loads(line)["conversations"] if t["from"] == "gpt"]
    assert sorted(answers) == sorted(expected)
    # Deterministic: preparing again gives byte-identical arrays.
    prepare(loaded.recipe, tmp_path / "again")
    for name in ("input_ids.npy", "labels.npy", "offsets.npy"):
        assert (tmp_path / "prepared/train" / name).read_bytes() == (
            tmp_path / "again/train" / name
        ).read_bytes()


def test_evaluate_prompts_end_with_generation_prompt(tmp_path: Path, tiny_llama: Path) -> None:
    rows = tmp_path / "d.jsonl"
    rows.write_text(json.dumps({"instruction": "Reverse.", "input": "a b", "output": "b a"}) + "\n")
    recipe = make_recipe(
        tmp_path, tiny_llama, f"[{rows}]", "evaluate:\n  datasets: [" + str(rows) + "]\n"
    )
    prepare(load_recipe(recipe).recipe, tmp_path / "p")
    (prompt,) = read_eval_prompts(tmp_path / "p")
    tok = load_tokenizer(load_recipe(recipe).recipe)
    assert prompt["reference"] == "b a"
    assert tok.decode(prompt["input_ids"]).endswith(
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


BAD_ROWS = [
    ({"instruction": "x"}, "missing field 'output'"),
    ({"instruction": 3, "output": "y"}, "field 'instruction' must be a string"),
    ({"instruction": "x", "output": "  "}, "empty assistant turn"),
    ({"conversations": [{"from": "gpt", "value": "hi"}]}, "wrong role order"),
    ({"conversations": [{"from": "human", "value": "hi"}]}, "must end with an assistant turn"),
    ({"conversations": [{"from": "bot", "value": "hi"}]}, "unknown role 'bot'"),
    ([1, 2], "must be a JSON object"),
]


@pytest.mark.parametrize(("row", "message"), BAD_ROWS)
def test_bad_rows_name_file_and_line(tmp_path: Path, tiny_llama: Path, row, message: str) -> None:
    fmt = "sharegpt" if isinstance(row, dict) and "conversations" in row else "alpaca"
    good = (
        {"instruction": "a", "output": "b"}
        if fmt == "alpaca"
        else {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}
    )
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    recipe = make_recipe(tmp_path, tiny_llama, f"[{{path: {data}, format: {fmt}}}]")
    with pytest.raises(FtxError) as info:
        prepare(load_recipe(recipe).recipe, tmp_path / "out")
    assert f"{data}:2" in str(info.value) and message in str(info.value)
    assert info.value.exit_code == 2
    assert not (tmp_path / "out").exists()  # nothing half-written
    skipping = make_recipe(
        tmp_path, tiny_llama, f"[{{path: {data}, format: {fmt}}}]", "  on_error: skip\n"
    )
    manifest = prepare(load_recipe(skipping).recipe, tmp_path / "out")
    assert manifest["report"]["skipped"] == 1 and manifest["report"]["rows"] == 2
    assert message in manifest["report"]["skipped_examples"][0]


def test_json_array_errors_point_at_the_right_line(tmp_path: Path, tiny_llama: Path) -> None:
    data = tmp_path / "rows.json"
    data.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "a \\" q"}\n]\n')
    recipe = make_recipe(tmp_path, tiny_llama, f"[{data}]")
    with pytest.raises(FtxError, match=rf"{data}:3: bad alpaca row: missing field 'output'"):
        prepare(load_recipe(recipe).recipe, tmp_path / "out")


def test_unknown_dataset_name_lists_the_known_ones(tmp_path: Path, tiny_llama: Path) -> None:
    data_dir = Path(__file__).parent.parent / "recipes" / "data"
    recipe = make_recipe(tmp_path, tiny_llama, "[alpaka_demo]", f"  dataset_dir: {data_dir}\n")
    with pytest.raises(FtxError, match="alpaca_demo"):
        prepare(load_recipe(recipe).recipe, tmp_path / "out")


def test_batched_encoding_equals_one_by_one(tiny_llama: Path) -> None:
    tok = load_tokenizer(
        load_recipe(make_recipe(tiny_llama.parent, tiny_llama, "[x.jsonl]")).recipe
    )
    encoder = ChatEncoder(tok, "auto", where="test")
    convs = [CHAT, Conversation((Message("user", "x " * 50), Message("assistant", "y"))), CHAT]
    for max_len in (512, 40):
        for flags in ((False, False), (True, False), (False, True)):
            batch = encoder.encode_many(
                convs, max_len=max_len, train_on_prompt=flags[0], mask_history=flags[1]
            )
            single = [
                encoder.encode(c, max_len=max_len, train_on_prompt=flags[0], mask_history=flags[1])
                for c in convs
            ]
            assert batch == single

"""LLaMA-Factory's dataset_info.json, for real: one entry of every formatting / columns /
tags combination its documentation describes, written here in its schemas, through
`ftx data stats` and `ftx data show` as a migrating user would run them. Supported ones
prepare; the ones ftx cannot train yet fail with exit code 2 naming the entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_ftx

ALPACA_ROWS = [
    {"instruction": "Add the prices.", "input": "car 3000, book 20", "output": "3020",
     "system": "You are precise.", "history": [["Hi", "Hello! How can I help?"]]},
    {"instruction": "Say hi.", "input": "", "output": "Hi!"},
]  # fmt: skip
SHAREGPT_TOOL_ROWS = [
    {
        "conversations": [
            {"from": "human", "value": "I was born on 1990-05-15. How old am I?"},
            {"from": "function_call", "value": '{"name": "calculate_age", "arguments": '
                                               '{"birthdate": "1990-05-15"}}'},
            {"from": "observation", "value": '{"age": 36}'},
            {"from": "gpt", "value": "You are 36."},
        ],
        "system": "You are helpful.",
        "tools": json.dumps([{"name": "calculate_age", "description": "Age from a birth date",
                              "parameters": {"type": "object", "properties": {
                                  "birthdate": {"type": "string"}}}}]),
    }
]  # fmt: skip
OPENAI_ROWS = [
    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Capital of France?"},
                  {"role": "assistant", "content": "Paris."}]}
]  # fmt: skip
CUSTOM_TAG_ROWS = [
    {"dialog": [{"speaker": "client", "text": "Ping?"}, {"speaker": "bot", "text": "Pong."}]}
]

# name -> (entry, file name, rows or text, stage, expected: "ok" or a phrase of the error)
ENTRIES = {
    "alpaca_sft": ({"file_name": "alpaca.json", "columns": {
        "prompt": "instruction", "query": "input", "response": "output", "system": "system",
        "history": "history"}}, "alpaca.json", ALPACA_ROWS, "sft", "ok"),
    "alpaca_defaults": ({"file_name": "alpaca.jsonl"}, "alpaca.jsonl", ALPACA_ROWS, "sft", "ok"),
    "pretrain_json": ({"file_name": "pt.json", "columns": {"prompt": "text"}}, "pt.json",
                      [{"text": "document one"}, {"text": "document two"}], "pt", "ok"),
    "pretrain_txt": ({"file_name": "wiki.txt", "columns": {"prompt": "text"}}, "wiki.txt",
                     "first line of text\nsecond line of text\n", "pt", "ok"),
    "pretrain_jsonl_plain": ({"file_name": "plain.jsonl"}, "plain.jsonl",
                             [{"text": "no columns given"}], "pt", "ok"),
    "alpaca_preference": ({"file_name": "pref.json", "ranking": True, "columns": {
        "prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}},
        "pref.json", [{"instruction": "Q", "input": "", "chosen": "good", "rejected": "bad"}],
        "sft", "a preference row (chosen/rejected answers), and method.stage 'sft'"),
    "alpaca_preference_dpo": ({"file_name": "pref_dpo.json", "ranking": True, "columns": {
        "prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}},
        "pref_dpo.json", [{"instruction": "Q", "input": "", "chosen": "good", "rejected": "bad"}],
        "dpo", "ok"),
    "alpaca_kto_kto": ({"file_name": "kto_kto.json", "columns": {
        "prompt": "instruction", "query": "input", "response": "output", "kto_tag": "kto_tag"}},
        "kto_kto.json", [{"instruction": "Q", "input": "", "output": "A", "kto_tag": False}],
        "kto", "ok"),
    "alpaca_kto": ({"file_name": "kto.json", "columns": {
        "prompt": "instruction", "query": "input", "response": "output", "kto_tag": "kto_tag"}},
        "kto.json", [{"instruction": "Q", "input": "", "output": "A", "kto_tag": False}],
        "sft", "KTO rows"),
    "alpaca_images": ({"file_name": "mm.json", "columns": {
        "prompt": "instruction", "query": "input", "response": "output", "images": "images"}},
        "mm.json", [{"instruction": "<image>What is it?", "input": "", "output": "A cat.",
                     "images": ["cat.png"]}], "sft", "multimodal column 'images'"),
    "sharegpt_tools": ({"file_name": "tools.json", "formatting": "sharegpt", "columns": {
        "messages": "conversations", "system": "system", "tools": "tools"}},
        "tools.json", SHAREGPT_TOOL_ROWS, "sft", "ok"),
    "sharegpt_preference": ({"file_name": "spref.json", "formatting": "sharegpt",
        "ranking": True, "columns": {"messages": "conversations", "chosen": "chosen",
                                     "rejected": "rejected"}}, "spref.json",
        [{"conversations": [{"from": "human", "value": "Q"}],
          "chosen": {"from": "gpt", "value": "good"},
          "rejected": {"from": "gpt", "value": "bad"}}], "sft", "a preference row"),
    "sharegpt_preference_rm": ({"file_name": "spref_rm.json", "formatting": "sharegpt",
        "ranking": True, "columns": {"messages": "conversations", "chosen": "chosen",
                                     "rejected": "rejected"}}, "spref_rm.json",
        [{"conversations": [{"from": "human", "value": "Q"}],
          "chosen": {"from": "gpt", "value": "good"},
          "rejected": {"from": "gpt", "value": "bad"}}], "rm", "ok"),
    "sharegpt_kto_kto": ({"file_name": "skto_kto.json", "formatting": "sharegpt", "columns": {
        "messages": "conversations", "kto_tag": "label"}}, "skto_kto.json",
        [{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}],
          "label": True}], "kto", "ok"),
    "sharegpt_kto": ({"file_name": "skto.json", "formatting": "sharegpt", "columns": {
        "messages": "conversations", "kto_tag": "label"}}, "skto.json",
        [{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}],
          "label": True}], "sft", "KTO rows"),
    "sharegpt_videos": ({"file_name": "vid.json", "formatting": "sharegpt", "columns": {
        "messages": "conversations", "videos": "videos"}}, "vid.json",
        [{"conversations": [{"from": "human", "value": "<video>What happens?"},
                            {"from": "gpt", "value": "A race."}], "videos": ["a.mp4"]}],
        "sft", "multimodal column 'videos'"),
    "sharegpt_audios": ({"file_name": "aud.json", "formatting": "sharegpt", "columns": {
        "messages": "conversations", "audios": "audios"}}, "aud.json",
        [{"conversations": [{"from": "human", "value": "<audio>Who speaks?"},
                            {"from": "gpt", "value": "A child."}], "audios": ["a.wav"]}],
        "sft", "multimodal column 'audios'"),
    "openai": ({"file_name": "openai.json", "formatting": "sharegpt", "columns": {
        "messages": "messages"}, "tags": {"role_tag": "role", "content_tag": "content",
        "user_tag": "user", "assistant_tag": "assistant", "system_tag": "system"}},
        "openai.json", OPENAI_ROWS, "sft", "ok"),
    "openai_formatting": ({"file_name": "openai2.json", "formatting": "openai"},
                          "openai2.json", OPENAI_ROWS, "sft", "ok"),
    "sharegpt_custom_tags": ({"file_name": "tags.json", "formatting": "sharegpt",
        "columns": {"messages": "dialog"}, "tags": {"role_tag": "speaker", "content_tag": "text",
        "user_tag": "client", "assistant_tag": "bot"}}, "tags.json", CUSTOM_TAG_ROWS, "sft", "ok"),
    "folder_and_num_samples": ({"file_name": "many", "folder": "sub", "num_samples": 1},
                               "sub/many/part.jsonl", ALPACA_ROWS, "sft", "ok"),
    "hub_only": ({"hf_hub_url": "someone/dataset"}, None, None, "sft", "ftx never downloads"),
}  # fmt: skip


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lf_data")
    info = {}
    for name, (entry, file_name, rows, _, _) in ENTRIES.items():
        info[name] = entry
        if file_name is None:
            continue
        path = folder / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(rows, str):
            path.write_text(rows)
        elif path.suffix == ".jsonl":
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        else:
            path.write_text(json.dumps(rows, ensure_ascii=False))
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2, ensure_ascii=False))
    return folder


def recipe(tmp_path: Path, dataset_dir: Path, model: Path, name: str, stage: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"model: {{path: {model}, template: qwen2_5}}\n"
        f"data: {{dataset_dir: {dataset_dir}, datasets: [{name}], max_seq_len: 512}}\n"
        f"method: {{stage: {stage}, finetuning: full}}\n"
    )
    return path


@pytest.mark.parametrize("name", list(ENTRIES))
def test_every_documented_combination(
    name: str, tmp_path: Path, dataset_dir: Path, tiny_qwen2: Path
) -> None:
    *_, stage, expected = ENTRIES[name]
    path = recipe(tmp_path, dataset_dir, tiny_qwen2, name, stage)
    stats = run_ftx("data", "stats", str(path))
    show = run_ftx("data", "show", str(path), "-n", "1")
    if expected == "ok":
        assert stats.returncode == 0, stats.stderr[-2000:]
        assert show.returncode == 0, show.stderr[-2000:]
        train = "train pairs" if stage in ("dpo", "rm") else "train examples"
        first = "pair 0" if stage in ("dpo", "rm") else "example 0"
        assert train in stats.stdout and first in show.stdout
        return
    for result in (stats, show):
        assert result.returncode == 2, (name, result.stderr[-2000:])
        assert expected in result.stderr and "Traceback" not in result.stderr
        if file_name := ENTRIES[name][1]:
            assert file_name.split("/")[-1] in result.stderr or name in result.stderr


def test_function_calls_render_into_the_prompt(
    tmp_path: Path, dataset_dir: Path, tiny_qwen2: Path
) -> None:
    shown = run_ftx("data", "show", str(recipe(tmp_path, dataset_dir, tiny_qwen2,
                                               "sharegpt_tools", "sft")), "-n", "1")  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    for piece in ("# Tools", "<tools>", '"calculate_age"', "<tool_call>", "<tool_response>"):
        assert piece in shown.stdout, piece

"""Every dataset format and file type normalises to the canonical conversation;
malformed rows always become a clear error naming file and line (fuzzed)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftx.core.data.conversation import Message
from ftx.core.data.formats import RowError, to_conversation
from ftx.core.data.prepare import RowReport, read_conversations
from ftx.core.data.sources import resolve
from ftx.core.errors import FtxError
from ftx.core.recipe.schema import DatasetSpec


def roles(conv) -> list[str]:
    return [m.role for m in conv.messages]


def test_alpaca_with_input_history_and_system() -> None:
    conv = to_conversation(
        "alpaca",
        {
            "instruction": "Translate",
            "input": "hello",
            "output": "bonjour",
            "system": "Be terse.",
            "history": [["hi", "salut"]],
        },
        {},
        {},
    )
    assert conv.system == "Be terse."
    assert conv.messages == (
        Message("user", "hi"),
        Message("assistant", "salut"),
        Message("user", "Translate\nhello"),
        Message("assistant", "bonjour"),
    )


def test_sharegpt_with_system_tools_function_calls_and_observations() -> None:
    row = {
        "conversations": [
            {"from": "system", "value": "You can call tools."},
            {"from": "human", "value": "Weather in Paris?"},
            {
                "from": "function_call",
                "value": '{"name": "weather", "arguments": {"city": "Paris"}}',
            },
            {"from": "observation", "value": '{"temp": 21}'},
            {"from": "gpt", "value": "21 degrees."},
        ],
        "tools": '[{"name": "weather"}]',
    }
    conv = to_conversation("sharegpt", row, {}, {})
    assert conv.system == "You can call tools."
    assert conv.tools == ({"type": "function", "function": {"name": "weather"}},)
    assert roles(conv) == ["user", "assistant", "tool", "assistant"]
    call = conv.messages[1]
    assert call.content == "" and [(c.name, c.arguments) for c in call.tool_calls] == [
        ("weather", {"city": "Paris"})
    ]
    assert conv.as_chat()[2]["tool_calls"] == [
        {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
    ]
    broken = {**row, "conversations": [*row["conversations"][:2], {"from": "function_call",
              "value": "weather(city=Paris)"}, *row["conversations"][3:]]}  # fmt: skip
    with pytest.raises(RowError, match="a function call must be JSON"):
        to_conversation("sharegpt", broken, {}, {})
    with pytest.raises(RowError, match="tools column must be JSON"):
        to_conversation("sharegpt", {**row, "tools": "[{"}, {}, {})


def test_openai_messages_and_custom_tags() -> None:
    conv = to_conversation(
        "openai",
        {
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
            ]
        },
        {},
        {},
    )
    assert conv.system == "S" and roles(conv) == ["user", "assistant"]
    custom = to_conversation(
        "sharegpt",
        {"dialog": [{"speaker": "me", "text": "q"}, {"speaker": "bot", "text": "a"}]},
        {"messages": "dialog"},
        {"role_tag": "speaker", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"},
    )
    assert custom.messages[1] == Message("assistant", "a")


def test_text_and_src_tgt() -> None:
    assert to_conversation("text", {"text": "a document"}, {}, {}).text == "a document"
    single = to_conversation("src_tgt", {"src": "q", "tgt": "a"}, {}, {})
    assert roles(single) == ["user", "assistant"]
    multi = to_conversation(
        "src_tgt",
        {"src": ["q1", "q2"], "tgt": ["a1", "a2"], "context": {"system": "S"}},
        {},
        {},
    )
    assert multi.system == "S" and [m.content for m in multi.messages] == ["q1", "a1", "q2", "a2"]
    with pytest.raises(RowError, match="equal length"):
        to_conversation("src_tgt", {"src": ["q1", "q2"], "tgt": ["a1"]}, {}, {})


def test_preference_rows_alpaca_sharegpt_and_kto() -> None:
    conv = to_conversation(
        "alpaca", {"instruction": "q", "chosen": "good", "rejected": "bad"}, {}, {}, ranking=True
    )
    assert (
        roles(conv) == ["user"] and conv.chosen.content == "good" and conv.rejected.content == "bad"
    )
    shared = to_conversation(
        "sharegpt",
        {
            "conversations": [{"from": "human", "value": "q"}],
            "chosen": {"from": "gpt", "value": "good"},
            "rejected": {"from": "gpt", "value": "bad"},
        },
        {},
        {},
        ranking=True,
    )
    assert shared.is_preference and shared.chosen.content == "good"
    with pytest.raises(RowError, match="'rejected' must be a non-empty string"):
        to_conversation("alpaca", {"instruction": "q", "chosen": "x", "rejected": ""}, {}, {}, True)
    kto = to_conversation("alpaca", {"instruction": "q", "output": "a", "kto_tag": False}, {}, {})
    assert kto.kto_tag is False
    with pytest.raises(RowError, match="kto_tag"):
        to_conversation("alpaca", {"instruction": "q", "output": "a", "kto_tag": "yes"}, {}, {})


ROWS = [
    {"instruction": "q1", "input": "", "output": "a1"},
    {"instruction": "q2", "input": "x", "output": "a2"},
]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_every_file_type(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"rows{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(ROWS, indent=2))
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(ROWS[0]))
            writer.writeheader()
            writer.writerows(ROWS)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ROWS), path)
    source = resolve(DatasetSpec(path=str(path)), tmp_path, "data.datasets[0]")
    convs = read_conversations(source, "raise", RowReport())
    assert [c.messages[0].content for c in convs] == ["q1", "q2\nx"]
    # where the second row starts: its line (json, jsonl, csv with header) or row (parquet)
    line = {".json": 7, ".jsonl": 2, ".csv": 3, ".parquet": 2}[suffix]
    assert convs[1].source == f"{path}:{line}"


def test_dataset_info_json_schema(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.jsonl").write_text(
        "".join(json.dumps({"q": f"x{i}", "a": f"y{i}", "sys": "S"}) + "\n" for i in range(5))
    )
    (tmp_path / "dataset_info.json").write_text(
        json.dumps(
            {
                "mine": {
                    "file_name": "d.jsonl",
                    "folder": "sub",
                    "formatting": "alpaca",
                    "columns": {"prompt": "q", "response": "a", "system": "sys"},
                    "split": "train",
                    "num_samples": 3,
                },
                "hub_only": {"hf_hub_url": "someone/data"},
            }
        )
    )
    source = resolve(DatasetSpec(name="mine"), tmp_path, "data.datasets[0]")
    convs = read_conversations(source, "raise", RowReport())
    assert len(convs) == 3 and convs[0].system == "S" and convs[0].messages[1].content == "y0"
    with pytest.raises(FtxError, match="never downloads"):
        resolve(DatasetSpec(name="hub_only"), tmp_path, "data.datasets[1]")


# ---------------------------------------------------------------- fuzzing bad rows

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
keys = st.sampled_from(
    [
        "instruction",
        "input",
        "output",
        "history",
        "system",
        "conversations",
        "messages",
        "from",
        "value",
        "role",
        "content",
        "text",
        "src",
        "tgt",
        "context",
        "tools",
    ]
)
rows = st.dictionaries(
    keys,
    json_values | st.lists(st.dictionaries(keys, json_values, max_size=3), max_size=4),
    max_size=5,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    row=rows | json_values, fmt=st.sampled_from(["alpaca", "sharegpt", "openai", "text", "src_tgt"])
)
def test_fuzzed_rows_either_normalise_or_fail_cleanly(tmp_path: Path, row, fmt: str) -> None:
    path = tmp_path / "fuzz.jsonl"
    good = {
        "instruction": "q",
        "output": "a",
        "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "text": "t",
        "src": "q",
        "tgt": "a",
    }
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    source = resolve(DatasetSpec(path=str(path), format=fmt), tmp_path, "data.datasets[0]")
    try:
        convs = read_conversations(source, "raise", RowReport())
    except FtxError as exc:
        assert f"{path}:2" in str(exc) and exc.exit_code == 2
        report = RowReport()
        skipped = read_conversations(source, "skip", report)
        assert len(skipped) == 1 and len(report.skipped) == 1  # counted, never silent
        return
    assert len(convs) == 2
    for conv in convs:
        if fmt == "text":
            assert isinstance(conv.text, str) and conv.text.strip()
        else:
            assert conv.messages and conv.messages[-1].role == "assistant"
            assert all(isinstance(m.content, str) for m in conv.messages)
            assert conv.messages[-1].content.strip()

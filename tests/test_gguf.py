"""`ftx export --to gguf`: read back by llama.cpp's own gguf reader (tensors, tokens,
chat template) and answered by llama.cpp itself (llama-cpp-python) with the tokens
transformers gives on the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_ftx, run_in_env
from ftx.core.convert.gguf_export import gguf_name, interleave_rotary
from oracles import LLAMACPP


def export(model: Path, out: Path, *flags: str) -> Path:
    result = run_ftx("export", str(model), "--to", "gguf", "--out", str(out), *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_the_file_holds_the_model_its_tokens_and_template(
    arch: str, tiny_llama: Path, tiny_qwen2: Path, tmp_path: Path
) -> None:
    """Every tensor under llama.cpp's name with the model's values (f16; Llama's q/k rows
    interleaved for llama.cpp's rotary), the tokenizer's vocabulary, special ids and chat
    template in the metadata, as llama.cpp's gguf reader reads them."""
    import gguf
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    model = tiny_llama if arch == "llama" else tiny_qwen2
    reader = gguf.GGUFReader(export(model, tmp_path / "m.gguf"))
    config = json.loads((model / "config.json").read_text())
    tensors = {t.name: t for t in reader.tensors}
    weights = load_file(model / "model.safetensors")
    assert set(tensors) == {gguf_name(name) for name in weights}
    for name, value in weights.items():
        expected = value
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config["num_attention_heads" if "q_proj" in name else "num_key_value_heads"]
            expected = interleave_rotary(value, heads)
        stored = np.asarray(tensors[gguf_name(name)].data).reshape(value.shape)
        kept = np.float32 if value.ndim == 1 else np.float16
        assert stored.dtype == kept, name
        np.testing.assert_array_equal(stored, expected.astype(kept), err_msg=name)

    def field(key: str):
        part = reader.fields[key]
        return part.contents() if hasattr(part, "contents") else part.parts[-1]

    tokenizer = AutoTokenizer.from_pretrained(model)
    assert field("general.architecture") == arch
    tokens = field("tokenizer.ggml.tokens")
    assert tokens[: len(tokenizer)] == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert field("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert field("tokenizer.chat_template") == tokenizer.chat_template
    assert field("tokenizer.ggml.pre") == ("gpt-2" if arch == "llama" else "qwen2")


LLAMACPP_GREEDY = """
import json, sys
import numpy as np
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, logits_all=True, verbose=False)
text, ids, stop, n = sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5])
tokenized = llm.tokenize(text.encode(), add_bos=False, special=True)
llm.eval(ids)
first = np.array(llm.scores[llm.n_tokens - 1]).tolist()
new = []
for _ in range(n):
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    if token in stop:
        break
    new.append(token)
    llm.eval([token])
print(json.dumps({"tokenized": tokenized, "ids": new, "first": first}))
"""

TRANSFORMERS_GREEDY = """
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
with torch.no_grad():  # the weights as the f16 file holds them
    for p in model.parameters():
        if p.ndim > 1:
            p.copy_(p.half().float())
ids, stop, n = json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
with torch.no_grad():
    first = model(torch.tensor([ids])).logits[0, -1].tolist()
    out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                         eos_token_id=stop, pad_token_id=stop[0])
new = out[0, len(ids):].tolist()
cut = [i for i, t in enumerate(new) if t in stop]
print(json.dumps({"ids": new[: cut[0]] if cut else new, "first": first}))
"""


@pytest.mark.env
@pytest.mark.llamacpp
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_llamacpp_answers_with_the_tokens_transformers_gives(
    arch: str, tiny_llama: Path, tiny_qwen2: Path, tmp_path: Path
) -> None:
    """llama.cpp reads the file: its tokenizer gives the ids transformers gives for a
    prompt rendered with the model's chat template, and greedy decoding gives
    transformers' tokens on the same (f16) weights. q8_0: the first step's logits within
    3% of their spread of transformers' (measured: 0.8%), the first greedy token equal."""
    from ftx.core.inference.prompting import Prompter
    from ftx.core.inference.source import resolve

    model = tiny_llama if arch == "llama" else tiny_qwen2
    prompter = Prompter(resolve(model))
    ids = prompter.prompt("Reverse: a b c d")
    text = prompter.tokenizer.decode(ids, skip_special_tokens=False)
    stop = json.dumps(sorted(prompter.stop))
    theirs = run_in_env("torch", TRANSFORMERS_GREEDY, str(model), json.dumps(ids), stop, "16")
    for kind in ("f16", "q8_0"):
        path = export(model, tmp_path / f"{kind}.gguf", "--type", kind)
        ours = run_in_env(LLAMACPP, LLAMACPP_GREEDY, str(path), text, json.dumps(ids), stop, "16")
        assert ours["tokenized"] == ids
        spread = np.ptp(theirs["first"])
        gap = np.abs(np.array(ours["first"]) - np.array(theirs["first"])).max() / spread
        if kind == "f16":
            assert ours["ids"] == theirs["ids"] and len(ours["ids"]) > 0
            assert gap < 1e-3, gap
        else:
            assert gap < 0.03, gap
            assert ours["ids"][:1] == theirs["ids"][:1]


def test_a_lora_run_is_merged_and_a_wrong_model_refused(runs, tmp_path: Path) -> None:
    """A LoRA run's OUT exports as base + adapter merged (the tensors `ftx merge-lora`
    writes); an unsupported architecture or a folder without a tokenizer.json is one
    paragraph and exit code 2, with no file left behind."""
    import gguf
    from safetensors.numpy import load_file

    out = runs.get("torch", "lora")
    merged = tmp_path / "merged"
    result = run_ftx("merge-lora", str(runs.model), str(out / "final"), str(merged))
    assert result.returncode == 0, result.stderr[-2000:]
    reader = gguf.GGUFReader(export(out, tmp_path / "lora.gguf"))
    stored = {t.name: np.asarray(t.data) for t in reader.tensors}
    for name, value in load_file(merged / "model.safetensors").items():
        if name.endswith("v_proj.weight"):  # trained by the adapter, not permuted
            got = stored[gguf_name(name)].reshape(value.shape)
            np.testing.assert_array_equal(got, value.astype(np.float16))

    odd = tmp_path / "odd"
    odd.mkdir()
    for item in runs.model.iterdir():
        (odd / item.name).write_bytes(item.read_bytes())
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
    refused = run_ftx("export", str(odd), "--to", "gguf", "--out", str(tmp_path / "x.gguf"))
    assert refused.returncode == 2 and "gpt_neox" in refused.stderr and "Fix:" in refused.stderr
    assert not (tmp_path / "x.gguf").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.gguf")]

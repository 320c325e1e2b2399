"""The tiny tokenizers `ftx init-model` writes tokenise the same everywhere: data is
tokenised once by the core, but each backend decodes (evaluation, generation) with its own
transformers (5.24 core, 5.23 torch, 5.3 paddle, 4.57 mindformers), PaddleFormers' own
AutoTokenizer, or paddlenlp (the test-only oracle)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import run_in_env

TEXT = "Qwen2 splits digits: 100, 12345 and 3.14; unicode ÅÅ e\u0301 ✓ 多语言\n\n  spaces"
TOKENISE = """
import hashlib, json, sys
from pathlib import Path
text = Path(sys.argv[2]).read_text()
if sys.argv[3] == "paddlenlp":
    from paddlenlp.transformers import PretrainedTokenizerFast as Tokenizer
elif sys.argv[3] == "paddleformers":
    from paddleformers.transformers import AutoTokenizer as Tokenizer
else:
    from transformers import AutoTokenizer as Tokenizer
tok = Tokenizer.from_pretrained(sys.argv[1])
ids = tok(text)["input_ids"]
print(json.dumps({"ids": list(ids)}))
"""


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "sample.txt"
    corpus = (Path(__file__).parent.parent / "core/assets/tokenizer_corpus.txt").read_text()
    path.write_text(TEXT + "\n" + corpus[:5000])
    return path


@pytest.mark.env
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2"])
def test_tokenizers_give_the_same_ids_in_every_environment(
    arch: str, sample: Path, request
) -> None:
    from transformers import AutoTokenizer

    model = request.getfixturevalue(arch)
    core = AutoTokenizer.from_pretrained(str(model))(sample.read_text())["input_ids"]
    digest = hashlib.sha256(json.dumps(list(core)).encode()).hexdigest()
    from oracles import PADDLENLP

    for env, loader in (("torch", "transformers"), ("mindformers", "transformers"),
                        ("paddle", "transformers"), ("paddle", "paddleformers"),
                        (PADDLENLP, "paddlenlp")):  # fmt: skip
        found = run_in_env(env, TOKENISE, str(model), str(sample), loader)
        got = hashlib.sha256(json.dumps(found["ids"]).encode()).hexdigest()
        assert got == digest, (env, len(found["ids"]), len(core))
    if arch == "tiny_qwen2":  # Qwen2's pre-tokenizer: one token per digit, everywhere
        tok = AutoTokenizer.from_pretrained(str(model))
        assert len(tok(" 12345", add_special_tokens=False)["input_ids"]) >= 5

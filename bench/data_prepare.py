"""Data preparation: ftx vs LLaMA-Factory's preprocessing on identical token streams.

    .venv/bin/python bench/data_prepare.py [--rows 1000 20000 200000] [--repeats 3]
                                           [--workdir /tmp/ftx-bench-data]

Realistic text and a real-size tokenizer: the English prose of the Python standard
library's docstrings (on every machine, nothing downloaded) is the corpus; a byte-level
BPE with a 50,000-token vocabulary and Qwen2's pre-tokenizer is trained on it; alpaca rows
are drawn from it with Stanford Alpaca-like lengths (one-sentence instructions, inputs on
40% of rows, answers with a long tail). Both tools use the Qwen2.5 ChatML layout (ftx
`qwen2_5`, LLaMA-Factory `qwen`), a 1024-token cutoff and LLaMA-Factory's truncation rule
(ftx `data.truncation: lf_split`; when packing, LLaMA-Factory cuts and packs to 1023 tokens,
keeping one for padding, so ftx packs rows of 1023 too); the first run of each pair checks
that both produce the same number of tokens, and the bench stops if they do not.

Timed (bench/harness.py): each tool in a fresh process, interleaved, --repeats rounds; the
preparation alone (each tool's own clock, started once its tokenizer is loaded, as
LLaMA-Factory's run loads it first) gives examples/s; the peak memory is summed over each
tool's whole process tree (its preprocessing workers included). Both use 2 workers.

LLaMA-Factory 0.9.5 is installed from PyPI into a throwaway environment in the work folder
(never a dependency of ftx): its wheel without dependencies, then what its data pipeline
needs; torch is the local CPU wheel and ``torchaudio``, imported only by its multimodal
plugin and without a CPU wheel here, is an empty stand-in module.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Run, header, interleave, machine, spread

LLAMAFACTORY_DEPS = [
    "accelerate<=1.11.0,>=1.3.0",
    "datasets<=4.0.0,>=2.16.0",
    "einops",
    "fire",
    "matplotlib>=3.7",
    "omegaconf",
    "pandas",
    "peft==0.18.1",
    "protobuf",
    "pydantic",
    "pyyaml",
    "scipy",
    "sentencepiece",
    "tiktoken",
    "transformers>=4.55,<=4.57.6,!=4.57.0",
    "trl<=0.24.0,>=0.18.0",
    "tyro<0.9.0",
]

LLAMAFACTORY_RUN = r"""
import json, sys, time
from llamafactory.hparams import get_train_args
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.model import load_tokenizer
work, model, dataset, packing = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
args = dict(
    stage="sft", do_train=True, model_name_or_path=model, dataset=dataset,
    dataset_dir=work, template="qwen", cutoff_len=1024, output_dir=work + "/lf-out",
    overwrite_cache=True, preprocessing_num_workers=2, report_to="none",
    finetuning_type="lora", packing=packing, per_device_train_batch_size=1,
)
model_args, data_args, training_args, finetuning_args, _ = get_train_args(args)
tokenizer_module = load_tokenizer(model_args)
template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
start = time.perf_counter()
data = get_dataset(template, model_args, data_args, training_args, "sft", **tokenizer_module)
seconds = time.perf_counter() - start
train = data["train_dataset"]
pad = tokenizer_module["tokenizer"].pad_token_id
tokens = sum(sum(1 for t in x if t != pad) for x in train["input_ids"])  # real tokens only
print(json.dumps({"seconds": seconds, "rows": len(train), "tokens": tokens}))
"""

FTX_RUN = r"""
import json, sys, time, tempfile, pathlib
from ftx.core.recipe import load_recipe
from ftx.core.data.prepare import prepare
recipe = load_recipe(sys.argv[1], sys.argv[2:]).recipe
# The tokenizer loaded before the clock, as LLaMA-Factory's run does (prepare loads its own).
from transformers import AutoTokenizer; AutoTokenizer.from_pretrained(recipe.model.path)
out = pathlib.Path(tempfile.mkdtemp()) / "p"
start = time.perf_counter(); manifest = prepare(recipe, out); seconds = time.perf_counter() - start
split = manifest["splits"]["train"]
print(json.dumps({"seconds": seconds, "rows": split["rows"], "tokens": split["tokens"],
                  "packing_efficiency": split.get("packing_efficiency")}))
"""


def sh(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, text=True, capture_output=True)


def corpus() -> list[str]:
    """Sentences of English prose: the standard library's docstrings."""
    sentences: list[str] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "test" in path.parts or "idlelib" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Module):
                doc = ast.get_docstring(node)
                if doc:
                    text = re.sub(r"\s+", " ", doc).strip()
                    sentences += [s.strip() for s in re.split(r"(?<=[.!?]) ", text) if len(s) > 20]
    return sentences


def alpaca_rows(sentences: list[str], count: int, seed: int = 0) -> list[dict[str, str]]:
    """Alpaca-like rows: Stanford Alpaca's shape (answers mostly short, a long tail)."""
    rng = random.Random(seed)

    def paragraph(n: int) -> str:
        return " ".join(rng.choice(sentences) for _ in range(n))

    rows = []
    for _ in range(count):
        answer = max(1, int(rng.lognormvariate(1.2, 0.9)))  # sentences; median ~3, tail ~60
        rows.append(
            {
                "instruction": rng.choice(sentences),
                "input": paragraph(rng.randint(1, 4)) if rng.random() < 0.4 else "",
                "output": paragraph(min(answer, 80)),
            }
        )
    return rows


def tokenizer_model(folder: Path, sentences: list[str]) -> None:
    """A 50,000-token Qwen2-style tokenizer trained on the corpus, with a qwen2 config."""
    from ftx.core.models.init import (
        CHAT_STYLES,
        _portable_tokenizer_config,
        hf_config,
        train_tokenizer,
    )

    tokenizer = train_tokenizer(CHAT_STYLES["qwen2"], 50_000, sentences)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    # Loadable by LLaMA-Factory's transformers 4.57 as well as by 5.x.
    _portable_tokenizer_config(folder / "tokenizer_config.json", tokenizer.chat_template)
    (folder / "config.json").write_text(json.dumps(hf_config("qwen2", "tiny", tokenizer)))


def llamafactory_env(work: Path) -> Path:
    venv = work / "llamafactory-venv"
    if not (venv / "bin" / "llamafactory-cli").exists():
        print("installing llamafactory into a throwaway environment (minutes) ...", flush=True)
        sh(sys.executable, "-m", "venv", str(venv))
        pip = str(venv / "bin/pip")
        sh(pip, "install", "-q", "torch==2.13.0")  # the local CPU wheel
        sh(pip, "install", "-q", "--no-deps", "llamafactory==0.9.5")
        sh(pip, "install", "-q", *LLAMAFACTORY_DEPS)
        site = sh(
            str(venv / "bin/python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ).stdout.strip()
        (Path(site) / "torchaudio").mkdir(exist_ok=True)
        (Path(site) / "torchaudio" / "__init__.py").write_text("# stand-in: no CPU wheel here\n")
    return venv


# The part neither tool can skip: the same tokenizer over the same rendered conversations,
# nothing else (rendered before the clock), Rust's encode_batch on the 2 cores. What is
# above this floor is each tool's own work.
TOKENIZER_ALONE = r"""
import json, os, sys, time
os.environ["TOKENIZERS_PARALLELISM"] = "true"
from ftx.core.recipe import load_recipe
from ftx.core.data.prepare import load_tokenizer, split_conversations, RowReport
from ftx.core.data.render import ChatEncoder
recipe = load_recipe(sys.argv[1], sys.argv[2:]).recipe
tokenizer = load_tokenizer(recipe)
train, val = split_conversations(recipe, RowReport())
encoder = ChatEncoder(tokenizer, recipe.model.template, where="model.template")
texts = [encoder._spans(c.as_chat(), c.tools)[0] for c in [*train, *val]]
backend = tokenizer.backend_tokenizer
start = time.perf_counter()
encodings = backend.encode_batch(texts, add_special_tokens=False)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rows": len(texts),
                  "tokens": sum(len(e.ids) for e in encodings)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 20000, 200000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ftx-bench-data"))
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    sentences = corpus()
    model = work / "tokenizer-50k"
    if not (model / "tokenizer.json").exists():
        print(f"training a 50k tokenizer on {len(sentences):,} sentences ...", flush=True)
        tokenizer_model(model, sentences)
    venv = llamafactory_env(work)
    version = sh(str(venv / "bin/python"), "-c", "import llamafactory as l; print(l.__version__)")
    info = {}
    for rows in args.rows:
        data = work / f"alpaca-{rows}.jsonl"
        if not data.exists():
            data.write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows(sentences, rows)))
        info[f"bench{rows}"] = {"file_name": data.name}
    (work / "dataset_info.json").write_text(json.dumps(info))
    started = machine()
    results = []
    for rows in args.rows:
        recipe = work / f"bench{rows}.yaml"
        recipe.write_text(
            f"model: {{path: {model}, template: qwen2_5}}\n"
            f"data: {{dataset_dir: {work}, datasets: [bench{rows}], max_seq_len: 1024,"
            " truncation: lf_split}\n"
        )
        for packing in (False, True):
            # LLaMA-Factory packs into cutoff - 1 tokens (one kept for padding) and cuts
            # examples to that when packing: ftx gets the same length to hold the same tokens.
            overrides = ["data.packing=true", "data.max_seq_len=1023"] if packing else []
            ftx = [sys.executable, "-c", FTX_RUN, str(recipe), *overrides]
            lf = [str(venv / "bin/python"), "-c", LLAMAFACTORY_RUN, str(work), str(model),
                  f"bench{rows}", "1" if packing else "0"]  # fmt: skip
            alone = [sys.executable, "-c", TOKENIZER_ALONE, str(recipe), *overrides]
            env = {"RAYON_NUM_THREADS": "2", "RAYON_RS_NUM_CPUS": "2"}
            runs = [Run("ftx", ftx), Run("LLaMA-Factory", lf), Run("tokenizer alone", alone, env)]
            mode = "packed" if packing else "unpacked"
            print(f"{rows} rows, {mode}", flush=True)
            interleave(runs, args.repeats)
            ours, theirs, alone_out = (
                json.loads(r.samples[0].output.strip().splitlines()[-1]) for r in runs
            )
            if alone_out["tokens"] < ours["tokens"]:  # the floor tokenised everything
                raise SystemExit(f"the floor tokenised less than ftx kept: {alone_out}")
            if ours["tokens"] != theirs["tokens"]:
                raise SystemExit(f"different token streams: ftx {ours} vs LLaMA-Factory {theirs}")
            inner = [
                sorted(json.loads(s.output.strip().splitlines()[-1])["seconds"] for s in r.samples)
                for r in runs
            ]
            results.append((rows, mode, runs, inner, ours))
    print(header(f"bench/data_prepare.py --rows {' '.join(map(str, args.rows))}", started))
    print(
        f"alpaca-like rows of stdlib prose, 50k-vocab Qwen2-style tokenizer, Qwen2.5 ChatML,"
        f" cutoff 1024, LLaMA-Factory's truncation on both; LLaMA-Factory"
        f" {version.stdout.strip()}; 2 workers each; median (min-max) of {args.repeats}"
        " interleaved runs; same number of tokens on both sides (checked)\n"
    )
    print(
        "| rows | mode | tokens | ftx examples/s | LLaMA-Factory examples/s | ratio"
        " | tokenizer alone s | ratio above it | ftx peak MB | LF peak MB | ftx wall s"
        " | LF wall s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for rows, mode, runs, inner, ours in results:
        ftx_s, lf_s, alone_s = (sorted(x)[len(x) // 2] for x in inner)
        print(
            f"| {rows:,} | {mode} | {ours['tokens']:,} | {rows / ftx_s:,.0f}"
            f" ({rows / max(inner[0]):,.0f}-{rows / min(inner[0]):,.0f})"
            f" | {rows / lf_s:,.0f} ({rows / max(inner[1]):,.0f}-{rows / min(inner[1]):,.0f})"
            f" | {lf_s / ftx_s:.2f}x | {alone_s:.2f} | {(lf_s - alone_s) / (ftx_s - alone_s):.2f}x"
            f" | {runs[0].peak_mb:,.0f} | {runs[1].peak_mb:,.0f}"
            f" | {spread(runs[0])} | {spread(runs[1])} |"
        )


if __name__ == "__main__":
    main()

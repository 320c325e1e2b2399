"""`ftx generate`, `ftx eval`: use a trained model (a run's OUT, a model or an adapter
folder) with any backend's framework."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ftx.core.cli import cli
from ftx.core.console import console, info, results
from ftx.core.contract import Sampling
from ftx.core.errors import FtxError

FORMATS = ["alpaca", "sharegpt", "openai", "src_tgt"]


def model_options(fn: Any) -> Any:
    """What every command that loads a model takes."""
    for option in reversed(
        [
            click.argument("model", type=click.Path(path_type=Path)),
            click.option(
                "--backend",
                "-b",
                help="Decode with this backend's framework (default: the run's, else torch).",
            ),
            click.option(
                "--template",
                help="Chat template name, 'auto' (the tokenizer's) or 'none' (raw text);"
                " default: the run's, else auto.",
            ),
            click.option(
                "--base", type=click.Path(path_type=Path), help="An adapter's base model."
            ),
            click.option(
                "--context",
                type=click.IntRange(8),
                help="Longest prompt + answer (default: the model's positions).",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def sampling_options(fn: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--max-new-tokens", type=click.IntRange(1), default=256, show_default=True
            ),
            click.option(
                "--temperature",
                type=click.FloatRange(0),
                default=0.0,
                show_default=True,
                help="0: greedy.",
            ),
            click.option(
                "--top-p",
                type=click.FloatRange(0, 1, min_open=True),
                default=1.0,
                show_default=True,
            ),
            click.option("--seed", type=click.IntRange(0), default=0, show_default=True),
        ]
    ):
        fn = option(fn)
    return fn


@contextmanager
def opened(
    model: Path, backend: str | None, template: str | None, base: Path | None, context: int | None
) -> Iterator[tuple[Any, Any]]:
    """The target's prompter and a decoder process holding it, closed on the way out."""
    from ftx.core.inference.prompting import Prompter
    from ftx.core.inference.session import Decoder
    from ftx.core.inference.source import resolve

    target = resolve(model, base=base, template=template)
    prompter = Prompter(target)
    with Decoder(target, backend or target.backend or "torch", context=context, say=info) as dec:
        yield prompter, dec


def check_fits(ids: Sequence[int], context: int, where: str) -> None:
    if len(ids) >= context:
        raise FtxError(
            f"the prompt is {len(ids)} tokens and the model takes {context} in all, answer"
            " included",
            where=where,
            fix="shorten the prompt, or raise --context up to the model's positions",
        )


def check_out(out: Path | None, force: bool) -> None:
    if out is not None and out.exists() and not force:
        raise FtxError(
            "the file exists", where=str(out), fix="choose another --out, or pass --force"
        )


def write_lines(out: Path, rows: Sequence[dict[str, Any]]) -> None:
    from ftx.core.fsutil import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@cli.command("generate")
@model_options
@click.option("--prompt", "-p", "prompts", multiple=True, help="A user message (repeatable).")
@click.option("--system", help="A system prompt before each --prompt.")
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="A dataset file, or a recipe (its evaluate datasets): one answer per row.",
)
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="--data's row format.")
@click.option("--max-samples", type=click.IntRange(1), help="Answer at most this many rows.")
@click.option(
    "--out", "-o", type=click.Path(path_type=Path), help="Write the answers as JSON Lines."
)
@click.option("--force", is_flag=True, help="Replace --out.")
@sampling_options
def generate(
    model: Path,
    backend: str | None,
    template: str | None,
    base: Path | None,
    context: int | None,
    prompts: tuple[str, ...],
    system: str | None,
    data: Path | None,
    fmt: str | None,
    max_samples: int | None,
    out: Path | None,
    force: bool,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
) -> None:
    """Answer prompts with a model: a run's OUT (its final model with the run's chat
    template; a LoRA run as base + adapter), a model folder or an adapter folder.
    Greedy unless --temperature; one JSON line per prompt with --out (prompt,
    completion, label, tokens, finish_reason: LLaMA-Factory's generated_predictions.jsonl).

    \b
    Example:
      ftx generate runs/quickstart -p "Reverse: a b c"
      ftx generate runs/quickstart --data recipes/quickstart.yaml --out answers.jsonl
      ftx generate runs/quickstart -p "Reverse: a b c" --backend paddle
    """
    if not prompts and data is None:
        raise FtxError(
            "nothing to answer", where="ftx generate", fix="pass --prompt TEXT or --data FILE"
        )
    check_out(out, force)
    sampling = Sampling(max_new_tokens, temperature, top_p, seed)
    with opened(model, backend, template, base, context) as (prompter, decoder):
        work = [
            (prompter.prompt(text, system), text, None, f"--prompt {i + 1}")
            for i, text in enumerate(prompts)
        ]
        if data is not None:
            from ftx.core.inference.examples import read_examples

            examples = read_examples(
                data, prompter, fmt=fmt, limit=max_samples, max_len=decoder.context
            )
            work += [(e.prompt_ids, e.prompt, e.reference, e.source) for e in examples]
        for ids, _, _, where in work:
            check_fits(ids, decoder.context, where)
        rows = []
        for ids, prompt, reference, _ in work:
            answer = decoder.generate(ids, sampling, prompter.stop)
            completion = prompter.text(answer.ids)
            row = {"prompt": prompt, "completion": completion}
            if reference is not None:
                row["label"] = reference
            row |= {"tokens": len(answer.ids), "finish_reason": answer.finish_reason}
            rows.append(row)
            if out is None:
                results.print(completion, markup=False, highlight=False)
    if out is not None:
        write_lines(out, rows)
        info(f"{len(rows)} answer{'s' if len(rows) != 1 else ''} written to {out}")


@cli.command("eval")
@model_options
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    required=True,
    help="A dataset file, or a recipe (its evaluate datasets).",
)
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="--data's row format.")
@click.option("--max-samples", type=click.IntRange(1), help="Evaluate at most this many rows.")
@click.option("--max-new-tokens", type=click.IntRange(1), default=128, show_default=True)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    default=Path("eval.json"),
    show_default=True,
    help="Where the metrics go (JSON).",
)
@click.option(
    "--predictions", type=click.Path(path_type=Path), help="Also write every answer (JSON Lines)."
)
@click.option("--force", is_flag=True, help="Replace --out and --predictions.")
def evaluate(
    model: Path,
    backend: str | None,
    template: str | None,
    base: Path | None,
    context: int | None,
    data: Path,
    fmt: str | None,
    max_samples: int | None,
    max_new_tokens: int,
    out: Path,
    predictions: Path | None,
    force: bool,
) -> None:
    """Score a model on a dataset: the loss and perplexity of its answers' tokens, and
    greedy answers against the references (exact match, ROUGE-L, BLEU). Prints a table
    and writes the metrics to --out.

    \b
    Example:
      ftx eval runs/quickstart --data recipes/data/quickstart_heldout.jsonl
    """
    from ftx.core.inference.examples import read_examples
    from ftx.core.inference.metrics import generation_metrics, loss_metrics

    check_out(out, force)
    check_out(predictions, force)
    sampling = Sampling(max_new_tokens)
    with opened(model, backend, template, base, context) as (prompter, decoder):
        examples = read_examples(
            data, prompter, fmt=fmt, limit=max_samples, max_len=decoder.context
        )
        answered = [e for e in examples if e.reference is not None]
        if not answered:
            raise FtxError(
                "no row has a reference answer to compare with",
                where=str(data),
                fix="evaluate on rows that end with the assistant's answer",
            )
        for e in answered:
            check_fits(e.prompt_ids, decoder.context, e.source)
        rows = [e.row for e in answered if e.row is not None]
        scored = loss_metrics(*decoder.score(rows)) if rows else {}
        info(f"answering {len(answered)} prompts")
        answers = [
            prompter.text(decoder.generate(e.prompt_ids, sampling, prompter.stop).ids)
            for e in answered
        ]
        used = decoder.backend
    references = [str(e.reference) for e in answered]
    report = {
        "model": str(model),
        "backend": used,
        "data": str(data),
        **scored,
        **generation_metrics(references, answers),
        "samples": [
            {"reference": r, "answer": a}
            for r, a in list(zip(references, answers, strict=True))[:5]
        ],
    }
    from ftx.core.fsutil import atomic_write_json

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, report)
    if predictions is not None:
        write_lines(
            predictions,
            [
                {"prompt": e.prompt, "completion": a, "label": e.reference}
                for e, a in zip(answered, answers, strict=True)
            ],
        )
    print_metrics(report)
    info(f"metrics written to {out}")


def print_metrics(report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"ftx eval ({report['backend']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    shown = [
        ("examples", "examples", "{:d}"),
        ("loss", "loss", "{:.4f}"),
        ("perplexity", "perplexity", "{:.3f}"),
        ("exact_match", "exact match", "{:.1%}"),
        ("rouge_l", "ROUGE-L", "{:.2f}"),
        ("bleu", "BLEU", "{:.2f}"),
    ]
    for key, label, form in shown:
        if key in report:
            table.add_row(label, form.format(report[key]))
    (results if not console.is_terminal else console).print(table)


CHAT_HELP = "/system TEXT sets the system prompt, /reset forgets the conversation, /exit ends"


@cli.command("chat")
@model_options
@click.option("--system", help="The system prompt to start with.")
@sampling_options
def chat(
    model: Path,
    backend: str | None,
    template: str | None,
    base: Path | None,
    context: int | None,
    system: str | None,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
) -> None:
    """Talk to a model in the terminal: answers stream as they are written, the
    conversation is kept within the model's length (oldest rounds dropped, as training
    does). Ctrl-C stops an answer; /exit or Ctrl-D ends.

    \b
    Example:
      ftx chat runs/quickstart
      ftx chat runs/quickstart --backend mindformers --system "Answer briefly."
    """
    from ftx.core.inference.prompting import TextStream
    from ftx.core.inference.session import Answer

    sampling = Sampling(max_new_tokens, temperature, top_p, seed)
    with opened(model, backend, template, base, context) as (prompter, decoder):
        budget = decoder.context - min(max_new_tokens, decoder.context // 2)
        history: list[dict[str, Any]] = []
        click.echo(f"chatting with {model} ({decoder.backend}); {CHAT_HELP}")
        while True:
            try:
                line = input("you> ")
            except EOFError:
                click.echo()
                return
            except KeyboardInterrupt:
                click.echo("\n(/exit ends the chat)")
                continue
            text = line.strip()
            if text in ("/exit", "/quit"):
                return
            if text == "/reset":
                history = []
                click.echo("(conversation forgotten)")
                continue
            if text.startswith("/system"):
                system = text[len("/system") :].strip() or None
                click.echo(f"(system prompt {'set' if system else 'cleared'})")
                continue
            if not text:
                continue
            messages = ([{"role": "system", "content": system}] if system else []) + [
                *history,
                {"role": "user", "content": text},
            ]
            try:
                ids, kept = prompter.fitted(messages, budget)
            except FtxError as exc:
                click.echo(f"({exc.detail})")
                continue
            history = [m for m in kept if m["role"] != "system"]
            shown, stream = TextStream(prompter), decoder.stream(ids, sampling, prompter.stop)
            click.echo("model> ", nl=False)
            try:
                for item in stream:
                    if not isinstance(item, Answer):
                        click.echo(shown.add(item), nl=False)
            except KeyboardInterrupt:
                stream.close()  # cancels the answer in the decoder
                click.echo(" [stopped]", nl=False)
            click.echo()
            history.append({"role": "assistant", "content": prompter.text(shown.ids)})


@cli.command("serve")
@model_options
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option(
    "--api-key",
    envvar="FTX_SERVE_API_KEY",
    help="Require 'Authorization: Bearer KEY' (or set FTX_SERVE_API_KEY).",
)
@click.option("--name", help="The model's name in the API (default: the run's folder name).")
@click.option(
    "--max-new-tokens",
    type=click.IntRange(1),
    default=512,
    show_default=True,
    help="An answer's length when a request gives no max_tokens.",
)
def serve(
    model: Path,
    backend: str | None,
    template: str | None,
    base: Path | None,
    context: int | None,
    host: str,
    port: int,
    api_key: str | None,
    name: str | None,
    max_new_tokens: int,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (/v1/models,
    /v1/chat/completions, /v1/completions; streamed or not) with the run's chat template
    and stop tokens. For trying a model: one request at a time. In production serve the
    same OUT/final with vLLM (or MindIE, FastDeploy).

    \b
    Example:
      ftx serve runs/quickstart --port 8000
      curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "quickstart", "messages": [{"role": "user", "content": "hi"}]}'
    """
    import uvicorn

    from ftx.core.inference.server import make_app

    check_port(host, port)
    with opened(model, backend, template, base, context) as (prompter, decoder):
        label = name or (model.expanduser().resolve().name)
        app = make_app(prompter, decoder, label, api_key, max_new_tokens)
        info(f"serving '{label}' ({decoder.backend}) on http://{host}:{port}/v1 (Ctrl-C stops)")
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()


def check_port(host: str, port: int) -> None:
    """Refuse a port another program holds, or an address this machine does not have,
    before the model is loaded."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FtxError(
            f"'{host}' is not an address of this machine ({exc.strerror})",
            where="--host",
            fix="use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)",
        ) from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            taken = exc.errno == errno.EADDRINUSE
            raise FtxError(
                f"port {port} is in use" if taken else f"cannot listen there ({exc.strerror})",
                where=f"--host {host} --port {port}",
                fix="choose another --port" if taken else "choose another --host",
            ) from None


@cli.command("export")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--to", "fmt", type=click.Choice(["gguf"]), required=True, help="The format.")
@click.option(
    "--type",
    "kind",
    type=click.Choice(["f16", "q8_0"]),
    default="f16",
    show_default=True,
    help="How the weight matrices are stored (norms and biases stay f32).",
)
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="The file.")
@click.option(
    "--template",
    help="Chat template name, 'auto' (the tokenizer's) or 'none'; default: the run's.",
)
@click.option("--base", type=click.Path(path_type=Path), help="An adapter's base model.")
@click.option("--force", is_flag=True, help="Replace --out.")
def export(
    model: Path,
    fmt: str,
    kind: str,
    out: Path,
    template: str | None,
    base: Path | None,
    force: bool,
) -> None:
    """Export a model (a run's OUT, a model or an adapter folder; LoRA merged first) as
    one GGUF file for llama.cpp and Ollama, with the run's exact chat template and
    special tokens in its metadata. Tensors are streamed: memory stays about one tensor.

    \b
    Example:
      ftx export runs/quickstart --to gguf --out quickstart.gguf
      ftx export runs/quickstart --to gguf --type q8_0 --out quickstart-q8_0.gguf
    """
    import tempfile

    from ftx.core.convert.gguf_export import write_gguf
    from ftx.core.fsutil import staged_file
    from ftx.core.inference.prompting import chat_template_text
    from ftx.core.inference.source import merged, resolve

    check_out(out, force)
    target = resolve(model, base=base, template=template)
    chat_template = chat_template_text(target)
    with tempfile.TemporaryDirectory(prefix="ftx-export-") as work:
        folder = target.model
        if target.adapter is not None:
            info("merging the adapter into its base (a copy in a temporary folder)")
            folder = merged(target, Path(work) / "merged")
        with staged_file(out) as staged:
            made = write_gguf(
                folder,
                target.tokenizer,
                staged,
                kind=kind,
                chat_template=chat_template,
                name=target.label,
                say=info,
            )
    results.print(
        f"{out}: {made['architecture']}, {made['tensors']} tensors ({kind}),"
        f" vocabulary {made['tokens']}, chat template {'kept' if chat_template else 'none'}"
    )

"""What ``ftx generate`` (chat, eval, serve, export) loads: a Hugging Face model folder,
a PEFT adapter and its base, or a run's OUT (its ``final`` folder, base and chat
template taken from the run's plan)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftx.core.contract import WORKER_CONFIG, WorkerConfig, read_record
from ftx.core.errors import FtxError
from ftx.core.fsutil import read_json_object
from ftx.core.models.architectures import size_problem

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class Target:
    """A model ready to load: the HF folder of its weights, an adapter on top (or None),
    the folder its tokenizer is read from, the chat template it was trained with, and
    the run it came from (None for a plain folder)."""

    model: Path
    adapter: Path | None
    tokenizer: Path
    template: str
    run: Path | None = None
    backend: str | None = None  # the run's backend
    max_positions: int = 2048

    @property
    def label(self) -> str:
        """The name ``ftx serve`` lists it under: the run or model folder's name."""
        return (self.run or self.adapter or self.model).resolve().name


def _json(path: Path, what: str) -> dict:
    return read_json_object(path, what, "restore the file from the model's source")


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).exists() for name in TOKENIZER_FILES)


def _run_config(out: Path) -> WorkerConfig | None:
    path = out / WORKER_CONFIG
    if not path.exists():
        return None
    config = read_record(WorkerConfig, path)
    if config is None:
        raise FtxError(
            "the run's plan cannot be read",
            where=str(path),
            fix="rerun `ftx plan` (or `ftx run`) for this run with this ftx",
        )
    return config


def resolve(path: Path, *, base: Path | None = None, template: str | None = None) -> Target:
    """The model at ``path`` (a run's OUT, a model folder or an adapter folder); ``base``
    for an adapter whose adapter_config.json names no reachable base; ``template`` in
    place of the run's (or ``auto``: the tokenizer's own)."""
    path = path.expanduser()
    if not path.is_dir():
        raise FtxError(
            "no such folder",
            where=str(path),
            fix="name a run's OUT folder, a Hugging Face model folder or a PEFT adapter folder",
        )
    run: Path | None = None
    config = _run_config(path)
    folder = path
    if config is not None:
        run, folder = path, path / "final"
        if not folder.is_dir():
            raise FtxError(
                "this run has no final model yet (OUT/final)",
                where=str(path),
                fix="finish the run (`ftx run ... train.resume=auto`), or name a checkpoint's"
                " exported model folder",
            )
    adapter: Path | None = None
    model = folder
    if (folder / "adapter_config.json").exists():
        adapter = folder
        model = _adapter_base(folder, base, config, run)
    elif not (folder / "config.json").exists() or not _has_weights(folder):
        raise FtxError(
            "this folder holds no model (no config.json with *.safetensors weights, no"
            " adapter_config.json)",
            where=str(folder),
            fix="name a run's OUT folder, a Hugging Face model folder or a PEFT adapter folder",
        )
    settings = _json(model / "config.json", "config.json")
    problem = size_problem(settings)
    if problem:
        raise FtxError(problem, where=str(model / "config.json"), fix="restore the config.json")
    architectures = settings.get("architectures") or []
    if any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise FtxError(
            f"{architectures[0]} is a reward model: it scores answers, it does not write them",
            where=str(model / "config.json"),
            fix="generate with the policy model (a sft or dpo run's OUT/final)",
        )
    tokenizer = next((f for f in (folder, model) if _has_tokenizer(f)), None)
    if tokenizer is None:
        raise FtxError(
            "no tokenizer beside the model (tokenizer.json, tokenizer.model or vocab.json)",
            where=str(folder),
            fix="copy the base model's tokenizer files into the folder",
        )
    chosen = template or (config.model.template if config is not None else "auto")
    return Target(
        model=model,
        adapter=adapter,
        tokenizer=tokenizer,
        template=chosen,
        run=run,
        backend=config.backend if config is not None else None,
        max_positions=int(settings.get("max_position_embeddings") or 2048),
    )


def _adapter_base(
    adapter: Path, base: Path | None, config: WorkerConfig | None, run: Path | None
) -> Path:
    """The base model an adapter goes on: ``base`` when given, the run's model, else
    the folder adapter_config.json names."""
    if base is None and config is not None and run is not None:
        base = (run / config.model.path) if not Path(config.model.path).is_absolute() else None
        base = base or Path(config.model.path)
    if base is None:
        named = _json(adapter / "adapter_config.json", "adapter_config.json").get(
            "base_model_name_or_path"
        )
        base = Path(named) if isinstance(named, str) and named else None
    if base is None or not (base / "config.json").exists() or not _has_weights(base):
        raise FtxError(
            f"an adapter without its base model (adapter_config.json names"
            f" {str(base) if base else 'none'}, which is not a model folder here)",
            where=str(adapter),
            fix="pass the base model's folder with --base",
        )
    return base


# The files of a tokenizer (transformers' names), copied beside a merged model.
TOKENIZER_PREFIXES = (
    "tokenizer",
    "special_tokens_map",
    "added_tokens",
    "chat_template",
    "vocab",
    "merges",
)


def merged(target: Target, out: Path) -> Path:
    """The target as one model folder ``out``: its adapter merged into the base (ftx's
    merge, bounded memory) with the tokenizer files the adapter carries."""
    from ftx.core.convert.merge_lora import merge_lora

    assert target.adapter is not None
    merge_lora(target.model, target.adapter, out)
    for item in target.tokenizer.iterdir():
        if item.name.startswith(TOKENIZER_PREFIXES) and item.is_file():
            (out / item.name).write_bytes(item.read_bytes())
    return out

"""Turn a recipe's datasets into the prepared format, once, for every backend.

read rows -> normalise to Conversation -> render + tokenise + mask -> split
-> write. The result is cached under $FTX_HOME/prepared/<key>, where the key
hashes everything that can change the tokens: the data section, the dataset
files' bytes, the tokenizer files and the format version.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import random
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ftx.core.data.conversation import Conversation, Message
from ftx.core.data.formats import RowError, to_conversation, to_document
from ftx.core.data.packing import first_fit_decreasing
from ftx.core.data.render import ChatEncoder, Choices
from ftx.core.data.sources import Source, resolve
from ftx.core.errors import FtxError
from ftx.core.fsutil import atomic_write_json, regular_file, staged_dir
from ftx.core.home import ftx_home
from ftx.core.prepared import FORMAT_VERSION, IGNORE_INDEX, KL_ROWS, write_pairs, write_split
from ftx.core.recipe.schema import DatasetSpec, Recipe

BATCH = 1000  # conversations tokenised per call of the fast tokenizer
KL_CHUNK = 1000  # KTO's KL rows pair answers within chunks of rows (LLaMA-Factory's batches)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


@dataclass
class RowReport:
    """What happened to the rows (never a silent drop)."""

    rows: int = 0
    skipped: list[str] = field(default_factory=list)  # "file:line: reason"
    truncated: int = 0
    no_learnable: int = 0
    read_sha256: dict[str, str] = field(default_factory=dict)  # each file's bytes as read

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "skipped": len(self.skipped),
            "skipped_examples": self.skipped[:20],
            "truncated": self.truncated,
            "dropped_no_learnable_tokens": self.no_learnable,
        }


def load_tokenizer(recipe: Recipe) -> Any:
    """The model's tokenizer (fast, via transformers; no framework needed)."""
    from transformers import AutoTokenizer

    path = Path(recipe.model.path)
    if not path.is_dir():
        raise FtxError(
            "the model folder does not exist" if not path.exists() else "not a folder",
            where=f"model.path ({path})",
            fix="set model.path to the folder that holds the model's config and tokenizer",
        )
    for name in (*TOKENIZER_FILES, "tokenizer_config.json"):
        regular_file(path / name, f"tokenizer's {name}")
    if not any((path / name).exists() for name in TOKENIZER_FILES):
        raise FtxError(
            "no tokenizer files in the model folder",
            where=f"model.path ({path})",
            fix="put tokenizer.json and tokenizer_config.json beside the weights",
        )
    try:
        return AutoTokenizer.from_pretrained(
            str(path), trust_remote_code=recipe.model.trust_remote_code
        )
    except Exception as exc:  # transformers raises many types for a broken tokenizer
        raise FtxError(
            f"the tokenizer cannot be loaded: {exc}",
            where=f"model.path ({path})",
            fix="check the tokenizer files",
        ) from None


def read_conversations(
    source: Source,
    on_error: str,
    report: RowReport,
    max_row_bytes: int = 2 << 20,
    stage: str = "sft",
) -> list[Conversation]:
    """All rows of a source as conversations (documents for stage pt); bad rows raise or
    are skipped and counted; rows ftx cannot train on (media, KTO under sft) raise."""
    from ftx.core.data.readers import BadRow, read_rows

    conversations = []
    media = [c for c in MEDIA_COLUMNS if c not in source.columns] + [
        source.columns[c] for c in MEDIA_COLUMNS if c in source.columns
    ]
    for file in source.files:
        rows = read_rows(file, max_row_bytes, report.read_sha256)
        for line, row in rows:
            report.rows += 1
            where = f"{file}:{line}"
            if isinstance(row, dict):
                _refuse_untrainable(row, media, source, stage, where)
            try:
                if isinstance(row, BadRow):
                    raise RowError(row.reason)
                if stage == "pt" and not source.ranking:
                    conv = to_document(source.format, row, source.columns, source.tags)
                else:
                    conv = to_conversation(
                        source.format, row, source.columns, source.tags, ranking=source.ranking
                    )
            except RowError as exc:
                if on_error == "skip":
                    report.skipped.append(f"{where}: {exc}")
                    continue
                raise FtxError(
                    f"bad {source.format} row: {exc}",
                    where=where,
                    fix="fix the row, or set data.on_error: skip to skip and count bad rows",
                ) from None
            conversations.append(replace(conv, source=where))
            if source.num_samples and len(conversations) >= source.num_samples:
                rows.close()  # hashes the rest of the file: the cache key covers all of it
                return conversations
    return conversations


MEDIA_COLUMNS = ("images", "videos", "audios")


def _refuse_untrainable(
    row: dict[str, Any], media: list[str], source: Source, stage: str, where: str
) -> None:
    """Rows that are well-formed but cannot be trained here: an error, never a silent drop
    or a silent change of meaning (data.on_error: skip does not cover them)."""
    for column in media:
        if row.get(column):
            raise FtxError(
                f"the dataset '{source.label}' has a multimodal column '{column}'; ftx trains"
                " text models and would drop the media, leaving <image>/<video>/<audio> as text",
                where=where,
                fix="train on a text-only dataset (remove the column and its placeholders)",
            )
    kto = source.columns.get("kto_tag", "kto_tag")
    if kto in row and stage == "sft":
        raise FtxError(
            f"the dataset '{source.label}' holds KTO rows (column '{kto}'): under sft every"
            " answer would be learned, the undesirable ones too",
            where=where,
            fix="train them with method.stage: kto, or remove the kto_tag column to learn every"
            " answer",
        )


def _sources(specs: list[DatasetSpec], recipe: Recipe, key: str) -> list[Source]:
    base = Path(recipe.data.dataset_dir)
    return [resolve(spec, base, f"{key}[{i}]") for i, spec in enumerate(specs)]


FileState = tuple[tuple[str, int, int, int], ...]  # (path, size, mtime_ns, inode) each


def input_state(recipe: Recipe) -> FileState:
    """What the dataset files are now (size, modification time, inode): taken before the
    cache key hashes them and again before an entry is published, so an entry is never
    published for bytes other than its key's."""
    sources = _sources(list(recipe.data.datasets), recipe, "data.datasets")
    if recipe.evaluate:
        sources += _sources(list(recipe.evaluate.datasets), recipe, "evaluate.datasets")
    state = []
    for source in sources:
        for file in source.files:
            info = file.stat()
            state.append((str(file), info.st_size, info.st_mtime_ns, info.st_ino))
    return tuple(state)


def _unchanged_since(
    recipe: Recipe, before: FileState, hashes: dict[str, str], read: dict[str, str]
) -> None:
    """Refuse to publish tokens that came from other bytes than the key's: a file whose
    size, time or inode moved since it was hashed, or whose bytes as read (hashed while
    streaming) are not the bytes that were hashed for the key."""
    now = dict((path, rest) for path, *rest in input_state(recipe))
    moved = [path for path, *rest in before if now.get(path) != rest]
    moved += [path for path, digest in read.items() if hashes.get(path, digest) != digest]
    if moved:
        raise FtxError(
            "the file changed while ftx read it (what was read is not what was hashed for"
            " the cache key), so the prepared data would not match its key; nothing was kept",
            where=moved[0],
            fix="run the command again once nothing writes to the file",
        )


def cache_key(recipe: Recipe, hashes: dict[str, str] | None = None) -> str:
    """Hash of everything that decides the prepared tokens; each dataset file's own
    SHA-256 goes into ``hashes`` when given."""
    digest = hashlib.sha256()
    fields = {
        "version": FORMAT_VERSION,
        "data": recipe.data.model_dump(mode="json", exclude={"dataset_dir"}),
        "evaluate": recipe.evaluate.model_dump(mode="json") if recipe.evaluate else None,
        "stage": recipe.method.stage,
        "template": recipe.model.template,
    }
    digest.update(json.dumps(fields, sort_keys=True).encode())
    sources = _sources(list(recipe.data.datasets), recipe, "data.datasets")
    if recipe.evaluate:
        sources += _sources(list(recipe.evaluate.datasets), recipe, "evaluate.datasets")
    for source in sources:
        for file in source.files:
            file_digest = _file_hash(file)
            digest.update(file_digest.encode())
            if hashes is not None:
                hashes[str(file)] = file_digest
    digest.update(_tokenizer_hash(Path(recipe.model.path)).encode())
    return digest.hexdigest()[:24]


def _json_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _tokenizer_hash(model: Path) -> str:
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        regular_file(model / name, f"tokenizer's {name}")
        if (model / name).exists():
            digest.update(name.encode() + _file_hash(model / name).encode())
    return digest.hexdigest()


def _file_hash(path: Path) -> str:
    from ftx.core.data.readers import file_sha256

    regular_file(path, "file")
    if not path.is_file():
        raise FtxError("file not found", where=str(path), fix="check the recipe's paths")
    return file_sha256(path)


def split_conversations(
    recipe: Recipe, report: RowReport
) -> tuple[list[Conversation], list[Conversation]]:
    """The recipe's rows as (train, val) conversations: read, capped by max_samples,
    split by val_size with the data seed. Every exporter uses this same selection."""
    data = recipe.data
    conversations: list[Conversation] = []
    for source in _sources(list(data.datasets), recipe, "data.datasets"):
        rows = read_conversations(
            source, data.on_error, report, data.max_row_bytes, recipe.method.stage
        )
        conversations += rows[: data.max_samples] if data.max_samples else rows
    if not conversations:
        raise FtxError(
            "the datasets hold no usable rows", where="data.datasets", fix="check the files"
        )
    check_rows_fit_stage(conversations, recipe.method.stage)
    order = list(range(len(conversations)))
    random.Random(data.seed).shuffle(order)
    n_val = int(data.val_size) if data.val_size >= 1 else round(len(order) * data.val_size)
    if n_val >= len(order):
        raise FtxError(
            f"val_size leaves no training rows ({n_val} of {len(order)})",
            where="data.val_size",
            fix="use a smaller share or count",
        )
    train = [conversations[i] for i in sorted(order[n_val:])]
    val = [conversations[i] for i in sorted(order[:n_val])]
    return train, val


def check_rows_fit_stage(conversations: list[Conversation], stage: str) -> None:
    """Preference rows (``ranking: true``) for dpo and rm, feedback rows (``kto_tag``) for
    kto, neither for sft and pt: an error naming the first row that does not fit."""
    wanted = {"dpo": "pairs", "rm": "pairs", "kto": "feedback"}.get(stage, "plain")
    fixes = {
        "pairs": "use a dataset with chosen/rejected answers (ranking: true in"
        " dataset_info.json), or another method.stage",
        "feedback": "use rows with a kto_tag column (true: a desirable answer), or another"
        " method.stage",
        "plain": "set method.stage to dpo or rm for ranked data, kto for kto_tag data, or"
        " remove the dataset",
    }
    for conv in conversations:
        kind = (
            "pairs" if conv.is_preference else "feedback" if conv.kto_tag is not None else "plain"
        )
        if kind == wanted:
            continue
        what = {
            "pairs": "a preference row (chosen/rejected answers)",
            "feedback": "a KTO row (kto_tag)",
            "plain": "a row with one answer and no kto_tag",
        }[kind]
        raise FtxError(
            f"{what}, and method.stage '{stage}' trains on"
            f" {dict(pairs='preference pairs', feedback='KTO rows', plain='plain rows')[wanted]}",
            where=conv.source,
            fix=fixes[wanted],
        )


def prepare(
    recipe: Recipe,
    dest: Path,
    key: str | None = None,
    state: FileState | None = None,
    hashes: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Prepare the recipe's data into ``dest`` (written atomically); return the manifest.

    ``key`` is the recipe's cache key when the caller has already computed it (it hashes
    every dataset file, so it is worth not doing twice), ``state`` the files'
    :func:`input_state` from before that hashing and ``hashes`` the files' digests it
    took: a file that changed since, or whose bytes as read are not those, is refused
    before anything is published."""
    if key is None:
        state, hashes = input_state(recipe), {}
        key = cache_key(recipe, hashes)
    tokenizer = load_tokenizer(recipe)
    data = recipe.data
    report = RowReport()
    try:
        train_convs, val_convs = split_conversations(recipe, report)
    except FtxError:
        if state is not None:  # a row cut by a writer is that writer's, not a bad row
            _unchanged_since(recipe, state, {}, {})
        raise

    stage = recipe.method.stage
    if stage == "pt":
        encoder = None
        encode = lambda convs: _pack_text(convs, tokenizer, data.max_seq_len)  # noqa: E731
    else:
        encoder = ChatEncoder(tokenizer, recipe.model.template, where="model.template")
        if stage in ("dpo", "rm"):
            encode = lambda convs: _encode_pairs(convs, encoder, recipe, report)  # noqa: E731
        elif stage == "kto":
            encode = lambda convs: _encode_feedback(convs, encoder, recipe, report)  # noqa: E731
        else:
            encode = lambda convs: _encode_chats(convs, encoder, recipe, report)  # noqa: E731
    splits = {"train": encode(train_convs)}
    if val_convs:
        splits["val"] = encode(val_convs)
    if not len(splits["train"]):
        raise FtxError(
            "no training example has a learnable token after truncation",
            where="data.max_seq_len",
            fix="raise max_seq_len or shorten the prompts",
        )

    eval_rows: list[dict[str, Any]] = []
    if recipe.evaluate is not None:
        seen = RowReport(read_sha256=report.read_sha256)  # rows not counted in the report
        encoder = encoder or ChatEncoder(tokenizer, recipe.model.template, where="model.template")
        for source in _sources(list(recipe.evaluate.datasets), recipe, "evaluate.datasets"):
            for conv in read_conversations(source, data.on_error, seen, data.max_row_bytes):
                ids, reference = encoder.encode_prompt(conv)
                eval_rows.append({"input_ids": ids, "reference": reference, "source": conv.source})
        eval_rows = eval_rows[: recipe.evaluate.max_samples]

    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "recipe_data_sha256": _json_hash(
            {"data": recipe.data.model_dump(mode="json"), "template": recipe.model.template}
        ),
        "tokenizer_sha256": _tokenizer_hash(Path(recipe.model.path)),
        "stage": recipe.method.stage,
        "tokenizer": recipe.model.path,
        "max_seq_len": data.max_seq_len,
        "packing": data.packing,
        "pad_token_id": tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "report": report.as_dict(),
        "splits": {},
    }
    with staged_dir(dest, replace=True) as tmp:
        for name, examples in splits.items():
            if isinstance(examples, (PairRows, FeedbackRows)):
                manifest["splits"][name] = examples.write(tmp / name)
                continue
            info = _token_stats([ids for ids, _ in examples], [lab for _, lab in examples])
            lengths = [len(ids) for ids, _ in examples]
            if data.packing and name == "train" and recipe.method.stage != "pt":
                groups = first_fit_decreasing(lengths, data.max_seq_len)
                write_split(tmp / name, examples, groups)
                info["rows"] = len(groups)
                efficiency = info["tokens"] / max(1, len(groups) * data.max_seq_len)
                info["packing_efficiency"] = round(efficiency, 6)
                np.save(tmp / name / "example_lengths.npy", np.asarray(lengths, dtype=np.int32))
            else:
                write_split(tmp / name, examples)
                info["rows"] = len(examples)
            manifest["splits"][name] = info
        if eval_rows:
            (tmp / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in eval_rows))
            manifest["splits"]["eval"] = {"examples": len(eval_rows)}
        atomic_write_json(tmp / "manifest.json", manifest)
        if state is not None:
            _unchanged_since(recipe, state, hashes or {}, report.read_sha256)
    return manifest


def _token_stats(ids: list[Any], labels: list[Any]) -> dict[str, Any]:
    """A split's counts for the manifest: examples, tokens, learned tokens, longest row."""
    tokens = sum(len(row) for row in ids)
    learned = sum(int((np.asarray(row) != IGNORE_INDEX).sum()) for row in labels)
    longest = max((len(row) for row in ids), default=0)
    return {"examples": len(ids), "tokens": tokens, "learnable_tokens": learned,
            "max_length": longest}  # fmt: skip


@dataclass
class PairRows:
    """Encoded preference pairs: per pair the chosen and the rejected row, one prompt."""

    pairs: list[tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]]
    prompt_lengths: list[int]

    def __len__(self) -> int:
        return len(self.pairs)

    def write(self, folder: Path) -> dict[str, Any]:
        write_pairs(folder, self.pairs, self.prompt_lengths)
        rows = [row for pair in self.pairs for row in pair]
        info = _token_stats([ids for ids, _ in rows], [labels for _, labels in rows])
        return {**info, "examples": len(self.pairs), "pairs": len(self.pairs), "rows": len(rows)}


@dataclass
class FeedbackRows:
    """Encoded KTO rows: prompt then answer, each tagged desirable or not, and each row's
    KL row (its prompt with another row's answer: KTO's estimate of the KL term)."""

    examples: list[tuple[np.ndarray, np.ndarray]]
    tags: list[bool]
    prompt_lengths: list[int]
    mismatched: list[tuple[np.ndarray, np.ndarray]]

    def __len__(self) -> int:
        return len(self.examples)

    def write(self, folder: Path) -> dict[str, Any]:
        write_split(folder, self.examples)
        write_split(folder / KL_ROWS, self.mismatched)
        np.save(folder / "kto_tag.npy", np.asarray(self.tags, dtype=np.bool_))
        np.save(folder / "prompt_lengths.npy", np.asarray(self.prompt_lengths, dtype=np.int32))
        info = _token_stats([ids for ids, _ in self.examples], [lab for _, lab in self.examples])
        desirable = sum(self.tags)
        return {**info, "rows": len(self.examples), "desirable": desirable,
                "undesirable": len(self.tags) - desirable}  # fmt: skip


def _choices(
    items: list[tuple[Conversation, list[Message]]],
    encoder: ChatEncoder,
    recipe: Recipe,
    report: RowReport,
) -> list[tuple[int, Choices]]:
    """Each (prompt conversation, answers) encoded (ChatEncoder.encode_answers), with its
    index; those left with nothing to learn in some answer are dropped and counted."""
    data, kept = recipe.data, []
    for index, (prompt, answers) in enumerate(items):
        found = encoder.encode_answers(
            prompt, answers, max_len=data.max_seq_len, truncation=data.truncation
        )
        report.truncated += found.truncated
        if any(all(label == IGNORE_INDEX for label in labels) for _, labels in found.answers):
            report.no_learnable += 1
            continue
        kept.append((index, found))
    return kept


def _as_arrays(row: tuple[list[int], list[int]]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(row[0], dtype=np.int32), np.asarray(row[1], dtype=np.int32)


def _encode_pairs(
    convs: list[Conversation], encoder: ChatEncoder, recipe: Recipe, report: RowReport
) -> PairRows:
    """Preference pairs: the conversation is the prompt, chosen and rejected its answers."""
    items = [(c, [c.chosen, c.rejected]) for c in convs if c.chosen and c.rejected]
    rows = PairRows([], [])
    for _, found in _choices(items, encoder, recipe, report):
        chosen, rejected = found.rows()
        rows.pairs.append((_as_arrays(chosen), _as_arrays(rejected)))
        rows.prompt_lengths.append(len(found.prompt))
    return rows


def _encode_feedback(
    convs: list[Conversation], encoder: ChatEncoder, recipe: Recipe, report: RowReport
) -> FeedbackRows:
    """KTO rows: the conversation before its last answer is the prompt, the last answer is
    the one its kto_tag judges."""
    items = [(replace(c, messages=c.messages[:-1]), [c.messages[-1]]) for c in convs]
    rows = FeedbackRows([], [], [], [])
    data = recipe.data
    for index, found in _choices(items, encoder, recipe, report):
        (row,) = found.rows()
        rows.examples.append(_as_arrays(row))
        rows.tags.append(bool(convs[index].kto_tag))
        rows.prompt_lengths.append(len(found.prompt))
        prompt, _ = items[index]
        other = items[kl_partner(index, len(items))][1]
        kl = encoder.encode_answers(
            prompt, other, max_len=data.max_seq_len, truncation=data.truncation
        )
        rows.mismatched.append(_as_arrays(kl.rows()[0]))
    return rows


def kl_partner(index: int, count: int, chunk: int = KL_CHUNK) -> int:
    """The row whose answer row ``index``'s KL row takes: the rows reversed within chunks of
    ``chunk`` rows (LLaMA-Factory reverses each preprocessing batch of 1000), so the pairs
    are fixed by the data alone, whatever the batch size or the number of processes."""
    start = index - index % chunk
    end = min(start + chunk, count)
    return start + end - 1 - index


def _encode_chats(
    convs: list[Conversation], encoder: ChatEncoder, recipe: Recipe, report: RowReport
) -> list[tuple[np.ndarray, np.ndarray]]:
    data = recipe.data
    for conv in convs:
        if conv.text is not None:
            raise FtxError(
                "a plain-text row in an sft dataset",
                where=conv.source,
                fix="use method.stage: pt for text data, or a chat format",
            )
    options = {
        "max_len": data.max_seq_len,
        "train_on_prompt": data.train_on_prompt,
        "mask_history": data.mask_history,
        "truncation": data.truncation,
    }
    chunks = [convs[i : i + BATCH] for i in range(0, len(convs), BATCH)]
    examples: list[tuple[np.ndarray, np.ndarray]] = []
    for lengths, ids, labels, truncated, unlearnable in _map_chunks(encoder, chunks, options):
        report.truncated += truncated
        report.no_learnable += unlearnable
        if len(lengths):
            bounds = np.cumsum(lengths)[:-1]
            examples += zip(np.split(ids, bounds), np.split(labels, bounds), strict=True)
    return examples


_WORKER_ENCODER: ChatEncoder | None = None


def _encode_chunk(chunk: list[Conversation], options: dict[str, Any]) -> tuple:
    """Encode a chunk and return it as flat int32 arrays (lengths, ids, labels) plus the
    truncated and nothing-to-learn counts: arrays cross the process boundary in
    microseconds, where lists of Python ints take the parent a second per 20k examples."""
    assert _WORKER_ENCODER is not None
    encoded = _WORKER_ENCODER.encode_arrays(chunk, **options)
    kept = [(ids, labels) for ids, labels, _ in encoded if (labels != IGNORE_INDEX).any()]
    lengths = np.fromiter((len(ids) for ids, _ in kept), dtype=np.int64, count=len(kept))
    empty = np.zeros(0, dtype=np.int32)
    ids = np.concatenate([i for i, _ in kept]) if kept else empty
    labels = np.concatenate([lab for _, lab in kept]) if kept else empty
    truncated = sum(t for _, _, t in encoded)
    return lengths, ids, labels, truncated, len(encoded) - len(kept)


def _map_chunks(encoder: ChatEncoder, chunks: list[list[Conversation]], options: dict) -> Any:
    """Encode chunks in order: in this process for small data, otherwise in forked worker
    processes (rendering and masking are Python; one process per core). Results come back
    in chunk order, so the output does not depend on the number of workers."""
    global _WORKER_ENCODER
    workers = min(os.cpu_count() or 1, 4, len(chunks))
    _WORKER_ENCODER = encoder
    if workers < 2 or len(chunks) < 4 or "fork" not in mp.get_all_start_methods():
        yield from (_encode_chunk(chunk, options) for chunk in chunks)
        return
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one tokenizer thread per worker
    try:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            yield from pool.map(_encode_chunk, chunks, [options] * len(chunks))
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def _pack_text(
    convs: list[Conversation], tokenizer: Any, block: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pre-training: concatenate documents (each ends with EOS) into blocks of max_seq_len."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for conv in convs:
        text = conv.text if conv.text is not None else "\n".join(m.content for m in conv.messages)
        stream += list(tokenizer(text, add_special_tokens=False)["input_ids"]) + (
            [eos] if eos is not None else []
        )
    blocks = [
        np.asarray(stream[i : i + block], dtype=np.int32) for i in range(0, len(stream), block)
    ]
    return [(b, b) for b in blocks if len(b) > 1]


def cached_prepared(recipe: Recipe, *, say: Callable[[str], None] | None = None) -> Path:
    """The recipe's prepared data in the cache ($FTX_HOME/prepared/<key>), prepared first
    when it is not there yet."""
    state, hashes = input_state(recipe), {}
    key = cache_key(recipe, hashes)
    cached = ftx_home() / "prepared" / key
    if not (cached / "manifest.json").exists():
        if say is not None:
            say("preparing the data (cached by content hash)")
        prepare(recipe, cached, key, state, hashes)
        for path in cached.rglob("*"):
            if path.is_file():
                path.chmod(0o444)  # shared through hard links: never to be written in place
    return cached


def prepared_data(recipe: Recipe, dest: Path) -> dict[str, Any]:
    """Prepare into the cache (or reuse it) and link the result at ``dest`` (staged, then
    renamed into place; the caller has claimed ``dest``)."""
    cached = cached_prepared(recipe)
    with staged_dir(dest, replace=True) as tmp:
        _copy_tree_linked(cached, tmp)
        # The cache is shared by every copy of the same data and tokenizer: this run's
        # manifest names this run's tokenizer (a new file, never a write through a link).
        manifest = json.loads((tmp / "manifest.json").read_text())
        manifest["tokenizer"] = recipe.model.path
        (tmp / "manifest.json").unlink()
        atomic_write_json(tmp / "manifest.json", manifest)
    return manifest


def _copy_tree_linked(src: Path, dst: Path) -> None:
    """Hard-link a prepared folder into place (copy when links are not possible)."""
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)

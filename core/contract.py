"""The worker contract: everything the core and a backend's worker tell each other.

Workers import this module inside their backend's environment, so it uses the
standard library only. Version :data:`CONTRACT_VERSION`; a change that an old
worker could misread bumps it.

core -> worker
    ``OUT/plan/worker.json``   a :class:`WorkerConfig` (validated on read)
    ``OUT/data/``              the prepared examples (:mod:`ftx.core.prepared`)
worker -> core
    ``OUT/metrics.jsonl``      one :class:`MetricsRow` per line (:class:`MetricsLog` writes it)
    stdout                     :class:`ProgressEvent` lines (``FTX_EVENT {...}``) for the display
    ``OUT/checkpoints/``       ``checkpoint-<step>/`` with ``trainer_state.json``
    ``OUT/final/``             Hugging Face format (model or PEFT adapter, tokenizer)
    ``OUT/eval.json``          held-out exact match before/after training
    ``OUT/logs/train_timing.json``  a :class:`TrainTiming`
    ``OUT/error.json``         a :class:`WorkerFailure` when the worker fails
    exit code                  an :class:`ExitCode`

core <-> decoder (``ftx generate``, ``chat``, ``eval``, ``serve``)
    argv[1]                    a :class:`DecoderModel` (JSON): what the backend's decoder loads
    stdin                      one :class:`DecodeRequest` per line
    stdout                     :class:`DecodeEvent` lines (``FTX_DECODE {...}``)

Paths inside a worker config are relative to OUT (the folder holding ``plan/``),
so a plan can be moved, mounted into a container or read on another node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal, TypeVar

CONTRACT_VERSION = 1

T = TypeVar("T")


class ContractError(Exception):
    """A contract file that does not match its schema (stale plan, hand edit, other version)."""


# --------------------------------------------------------------------------- run layout


WORKER_CONFIG = "plan/worker.json"  # relative to OUT, where launch.sh starts
DATA_DIR = "data"  # the prepared data's folder, relative to OUT


def _under(*parts: str) -> Any:
    """A RunLayout property: the path OUT/<parts>."""
    return property(lambda self: self.root.joinpath(*parts), doc="OUT/" + "/".join(parts))


@dataclass(frozen=True)
class RunLayout:
    """Every path under a run's output folder OUT, the same for every backend."""

    root: Path

    @classmethod
    def of_worker_config(cls, path: Path) -> RunLayout:
        """The layout of the run whose ``plan/worker.json`` is ``path``."""
        return cls(path.resolve().parent.parent)

    def at(self, relative: str) -> Path:
        """A path the worker config gives relative to OUT."""
        path = Path(relative)
        return path if path.is_absolute() else self.root / path

    plan = _under("plan")
    worker_config = _under(*WORKER_CONFIG.split("/"))
    launch_script = _under("plan", "launch.sh")
    data = _under("data")
    metrics = _under("metrics.jsonl")
    logs = _under("logs")
    launch_log = _under("logs", "launch.log")
    timing = _under("logs", "train_timing.json")
    tensorboard = _under("logs", "tensorboard")
    checkpoints = _under("checkpoints")
    final = _under("final")
    run_json = _under("run.json")
    eval_json = _under("eval.json")
    error_json = _under("error.json")

    def is_fresh(self) -> bool:
        """True when OUT does not exist or holds nothing."""
        return not self.root.exists() or not any(self.root.iterdir())


# --------------------------------------------------------------------------- core -> worker


@dataclass(frozen=True)
class ModelArgs:
    path: str
    dtype: Literal["float32", "bfloat16", "float16"]
    trust_remote_code: bool
    template: str = "auto"  # the chat template the data was rendered with (ftx generate's)


@dataclass(frozen=True)
class LoraArgs:
    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...] | None  # None: every linear layer
    rslora: bool
    dora: bool


@dataclass(frozen=True)
class QuantizationArgs:
    bits: Literal[4, 8]
    quant_type: Literal["nf4", "fp4"]
    double_quant: bool


@dataclass(frozen=True)
class PreferenceArgs:
    """The preference stages' settings (the recipe's method.preference, reference resolved)."""

    loss: Literal["sigmoid", "ipo", "hinge", "simpo", "orpo"]
    beta: float
    label_smoothing: float
    simpo_gamma: float
    sft_weight: float
    reference: Literal["auto", "precomputed", "none"]
    desirable_weight: float
    undesirable_weight: float


@dataclass(frozen=True)
class MethodArgs:
    stage: str  # a stage an objective trains (ftx.core.worker.objectives.OBJECTIVES)
    finetuning: Literal["full", "lora", "qlora", "freeze", "prefix"]
    lora: LoraArgs | None
    quantization: QuantizationArgs | None
    freeze_trainable_layers: int | None
    prefix_tokens: int | None
    preference: PreferenceArgs | None = None  # stages dpo, kto, rm


@dataclass(frozen=True)
class TrainArgs:
    epochs: float
    max_steps: int | None  # set: optimizer steps, instead of epochs
    learning_rate: float
    scheduler: Literal["linear", "cosine", "constant"]
    warmup_steps: int | None
    warmup_ratio: float
    micro_batch_size: int
    grad_accum: int
    weight_decay: float
    max_grad_norm: float
    adam_beta1: float
    adam_beta2: float
    adam_epsilon: float
    precision: Literal["fp32", "bf16", "fp16"]
    gradient_checkpointing: bool
    seed: int
    data_seed: int
    logging_steps: int
    save_steps: int | None
    save_total_limit: int | None
    eval_steps: int | None
    resume: str | None  # "auto" (newest checkpoint in OUT), a checkpoint folder, or None
    trainer: Literal["ftx", "native"]  # ftx's loop, or the framework's own trainer on the plan


@dataclass(frozen=True)
class DataArgs:
    prepared: str  # relative to OUT
    max_seq_len: int


@dataclass(frozen=True)
class EvaluateArgs:
    max_new_tokens: int
    before_training: bool


@dataclass(frozen=True)
class OutputArgs:
    save_format: Literal["hf", "native", "both"]
    merge_lora: bool
    report_to: Literal["none", "tensorboard"]


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs to train, in the recipe's own terms (OUT/plan/worker.json).

    Backend-specific files (a PEFT or DeepSpeed config, a native YAML) sit beside it
    in OUT/plan under names the backend's translator and worker share.
    """

    version: int
    backend: str
    model: ModelArgs
    method: MethodArgs
    train: TrainArgs
    data: DataArgs
    evaluate: EvaluateArgs | None
    output: OutputArgs

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def read(cls, path: Path) -> WorkerConfig:
        """Read and validate a worker config; any mismatch is a :class:`ContractError`."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ContractError(f"{path}: cannot read the worker config ({exc})") from None
        version = raw.get("version") if isinstance(raw, dict) else None
        if version != CONTRACT_VERSION:
            raise ContractError(
                f"{path}: worker config version {version!r}, this worker reads version"
                f" {CONTRACT_VERSION}. Fix: write the plan again with this ftx (`ftx plan`)"
            )
        return decode(cls, raw, str(path))


# --------------------------------------------------------------------------- worker -> core


@dataclass(frozen=True)
class MetricsRow:
    """One line of metrics.jsonl. A logged training step has loss, lr, grad_norm,
    tokens and tokens_per_s; an evaluation adds (or is only) eval_loss."""

    step: int
    backend: str
    epoch: float | None = None
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    tokens: int | None = None  # real (non-pad) tokens seen so far
    tokens_per_s: float | None = None
    mfu: float | None = None  # on GPUs with a known peak
    eval_loss: float | None = None
    # the preference stages (TRL's and LLaMA-Factory's names, "/" for "_": PREFERENCE_KEYS)
    rewards_chosen: float | None = None  # beta * (policy - reference) log-prob of the chosen
    rewards_rejected: float | None = None
    rewards_accuracies: float | None = None  # share of pairs whose chosen reward is higher
    rewards_margins: float | None = None
    logps_chosen: float | None = None  # the policy's log-probability of the chosen answer
    logps_rejected: float | None = None
    kl: float | None = None  # kto: the KL estimate of the policy from its reference

    def to_dict(self) -> dict[str, Any]:
        row = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return {PREFERENCE_KEYS.get(k, k): v for k, v in row.items()}


# MetricsRow fields written under the names TRL and LLaMA-Factory log them with.
PREFERENCE_KEYS = {
    name: name.replace("_", "/", 1)
    for name in (
        "rewards_chosen",
        "rewards_rejected",
        "rewards_accuracies",
        "rewards_margins",
        "logps_chosen",
        "logps_rejected",
    )
}
_FIELDS_OF_KEYS = {key: name for name, key in PREFERENCE_KEYS.items()}


def read_metrics(layout: RunLayout) -> list[MetricsRow]:
    """The rows of a run's metrics.jsonl, skipping a torn last line."""
    if not layout.metrics.exists():
        return []
    rows = []
    for line in layout.metrics.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            raw = json.loads(line)
            if isinstance(raw, dict):
                raw = {_FIELDS_OF_KEYS.get(k, k): v for k, v in raw.items()}
            rows.append(decode(MetricsRow, raw, str(layout.metrics)))
        except (json.JSONDecodeError, ContractError):
            continue
    return rows


class MetricsLog:
    """The one writer of metrics.jsonl; also feeds TensorBoard-like ``scalars`` sinks."""

    def __init__(
        self,
        layout: RunLayout,
        scalars: Callable[[str, float, int], Any] | None = None,
        close: Callable[[], Any] | None = None,
    ):
        self.layout = layout
        self.scalars = scalars  # e.g. TensorBoard's SummaryWriter.add_scalar(tag, value, step)
        self._close = close

    def write(self, row: MetricsRow) -> None:
        self.layout.root.mkdir(parents=True, exist_ok=True)
        with self.layout.metrics.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row.to_dict()) + "\n")
        if self.scalars is not None:
            for key, value in row.to_dict().items():
                if key not in ("step", "backend"):
                    self.scalars(f"train/{key}", value, row.step)

    def close(self) -> None:
        if self._close is not None:
            self._close()

    def keep_until(self, step: int) -> None:
        """On resume, drop rows past the checkpoint so the log reads as one run."""
        from ftx.core.fsutil import atomic_write_text

        kept = [r for r in read_metrics(self.layout) if r.step <= step]
        atomic_write_text(
            self.layout.metrics, "".join(json.dumps(r.to_dict()) + "\n" for r in kept)
        )


EVENT_PREFIX = "FTX_EVENT "


@dataclass(frozen=True)
class ProgressEvent:
    """A progress event, printed by the worker as one stdout line for the core's display.

    ``start`` opens the run (``step`` = where it starts, after a resume), ``step``
    follows each optimizer step (``logged`` when it also wrote a metrics row),
    ``checkpoint`` a completed save, ``done`` the end of training.
    """

    kind: Literal["start", "step", "checkpoint", "done"]
    step: int
    total: int
    loss: float | None = None
    tokens_per_s: float | None = None
    logged: bool = False
    margin: float | None = None  # the preference stages: the step's mean reward margin
    accuracy: float | None = None  # ... and its reward accuracy (dpo, rm)

    def line(self) -> str:
        fields = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return EVENT_PREFIX + json.dumps(fields)

    @staticmethod
    def parse(line: str) -> ProgressEvent | None:
        """The event on a worker output line, or None for any other line."""
        text = line.strip()
        if not text.startswith(EVENT_PREFIX):
            return None
        try:
            return decode(ProgressEvent, json.loads(text[len(EVENT_PREFIX) :]), "event")
        except (json.JSONDecodeError, ContractError):
            return None


@dataclass(frozen=True)
class TrainTiming:
    """OUT/logs/train_timing.json: the training loop alone (no start-up, evaluation, save)."""

    train_seconds: float
    steps: int
    tokens: int


@dataclass(frozen=True)
class WorkerFailure:
    """Why a worker failed (OUT/error.json): the exception's type and message, and where."""

    type: str
    message: str
    where: str  # "file:line in function" of the innermost frame
    rank: int = 0

    def describe(self) -> str:
        return f"{self.type}: {self.message} (at {self.where}, rank {self.rank})"


class ExitCode(IntEnum):
    """What a worker's exit code means to the core."""

    OK = 0
    FAILED = 1  # an exception; OUT/error.json says which
    BAD_CONFIG = 2  # the worker config broke the contract
    INTERRUPTED_SIGINT = 130  # stopped by Ctrl-C after saving a checkpoint
    INTERRUPTED_SIGTERM = 143  # stopped by SIGTERM (a scheduler, a container stop) likewise
    KILLED = 137  # SIGKILL (128 + 9, as a shell reports it): no error.json; the OOM killer's


def run_status(code: int) -> Literal["completed", "interrupted", "failed"]:
    """The run.json status for a worker's (or launcher's) exit code."""
    if code == ExitCode.OK:
        return "completed"
    if code in (ExitCode.INTERRUPTED_SIGINT, ExitCode.INTERRUPTED_SIGTERM):
        return "interrupted"
    return "failed"


# --------------------------------------------------------------------------- decoding

DECODE_PREFIX = "FTX_DECODE "


@dataclass(frozen=True)
class DecoderModel:
    """What a backend's decoder process loads: a Hugging Face model folder, with a PEFT
    adapter on top where the framework takes one (the core merges it first for those that
    do not), and the longest prompt plus answer it will be asked for."""

    path: str
    adapter: str | None = None
    context: int = 2048


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy at temperature 0; otherwise sampled from the
    softmax at ``temperature`` restricted to the top-p nucleus, from a generator seeded
    with ``seed`` for each request."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class ScoredRow:
    """Token ids and their labels (-100 where nothing is scored), unshifted."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


@dataclass(frozen=True)
class DecodeRequest:
    """One request to the decoder. ``generate``: continue ``prompt`` until a ``stop`` id
    (not emitted) or ``sampling.max_new_tokens``; ``score``: the summed negative
    log-likelihood of ``rows``' labels; ``cancel``: end request ``target`` now (its answer
    ends with finish reason ``cancelled``)."""

    id: str
    op: Literal["generate", "score", "cancel"]
    prompt: tuple[int, ...] = ()
    stop: tuple[int, ...] = ()
    sampling: Sampling = Sampling()
    rows: tuple[ScoredRow, ...] = ()
    target: str = ""

    def line(self) -> str:
        return json.dumps(dataclasses.asdict(self)) + "\n"


@dataclass(frozen=True)
class DecodeEvent:
    """The decoder's answer, in order: ``ready`` once loaded (``context``: its limit),
    ``token`` per generated id, ``done`` (``finish_reason`` stop, length or cancelled),
    ``scored`` (``nll``: summed over ``tokens`` scored), ``error`` (``message``)."""

    id: str
    kind: Literal["ready", "token", "done", "scored", "error"]
    token: int | None = None
    finish_reason: Literal["stop", "length", "cancelled"] | None = None
    nll: float | None = None
    tokens: int | None = None
    context: int | None = None
    message: str | None = None

    def line(self) -> str:
        row = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return DECODE_PREFIX + json.dumps(row)


# --------------------------------------------------------------------------- JSON files


def write_record(path: Path, record: Any) -> None:
    """Write a contract dataclass as JSON, atomically."""
    from ftx.core.fsutil import atomic_write_json

    atomic_write_json(path, dataclasses.asdict(record))


def read_record(cls: type[T], path: Path) -> T | None:
    """A contract dataclass from a JSON file; None when it is missing or unreadable."""
    with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError, ContractError):
        return decode(cls, json.loads(path.read_text(encoding="utf-8")), str(path))
    return None


def decode(cls: type[T], value: Any, where: str) -> T:
    """Build dataclass ``cls`` from parsed JSON, checking every field's type."""
    return _decode(cls, value, where, "")


def _decode(tp: Any, value: Any, where: str, key: str) -> Any:
    def fail(expected: str) -> ContractError:
        at = f"{where}: {key.lstrip('.') or 'top level'}"
        return ContractError(f"{at}: expected {expected}, got {value!r}")

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _decode(inner, value, where, key)
    if origin is Literal:
        options = typing.get_args(tp)
        if any(value == o and type(value) is type(o) for o in options):
            return value
        raise fail(f"one of {list(options)}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise fail("a list")
        (item, _) = typing.get_args(tp)
        return tuple(_decode(item, v, where, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail("an object")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise fail(f"only the keys {sorted(fields)} (unknown: {unknown})")
        args = {}
        for name, field in fields.items():
            if name in value:
                args[name] = _decode(hints[name], value[name], where, f"{key}.{name}")
            elif field.default is dataclasses.MISSING:
                raise ContractError(f"{where}: {f'{key}.{name}'.lstrip('.')}: missing")
        return tp(**args)
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    names = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}
    raise fail(names.get(tp, str(tp)))


def print_event(event: ProgressEvent) -> None:
    """Emit a progress event on stdout (the worker's launcher passes it to the core)."""
    sys.stdout.write(event.line() + "\n")
    sys.stdout.flush()

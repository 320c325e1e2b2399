"""The recipe: one backend-neutral YAML file that describes a fine-tuning run.

Every section is a strict pydantic model: unknown keys are rejected (the
loader turns that into a did-you-mean), types and ranges are checked here, and
rules that tie several keys together live in ``model_validator`` methods.
Rules that depend on the chosen backend live in :mod:`ftx.core.capabilities`.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ftx.core import scripts

# The default size of one dataset row: a tokenizer holds about 400 bytes per byte of text
# while it encodes a row (0.9 GB measured for 2 MiB of Chinese), so a row's cost stays
# bounded; a longer row is a bad row unless data.max_row_bytes says so.
ROW_BYTES = 2 << 20

DATA_FORMATS = ("alpaca", "sharegpt", "openai", "text", "src_tgt")


HALF_PAIR = re.compile("[\ud800-\udfff]")


def _takes_bool(annotation: Any) -> bool:
    """Whether a field's type admits true/false (bool, Any, or a union or literal of one)."""
    if annotation is bool or annotation is Any:
        return True
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return any(isinstance(a, bool) for a in args)
    return any(_takes_bool(a) for a in args)


class Section(BaseModel):
    """Base of every recipe section: strict about unknown keys, immutable; numbers are
    finite (NaN and infinity cannot be meant) and never true/false (``epochs: true`` is
    not 1); no text holds a NUL character or half a surrogate pair."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and not _takes_bool(field.annotation):
            raise ValueError(f"{str(value).lower()} is not a {_kind(field.annotation)}")
        texts = [t for t in (value if isinstance(value, list) else [value]) if isinstance(t, str)]
        if any("\x00" in t for t in texts):
            raise ValueError("holds a NUL character, which no path or name can")
        if any(HALF_PAIR.search(t) for t in texts):
            raise ValueError("holds half of a surrogate pair (\\udXXX), which is no text")
        return value


def _kind(annotation: Any) -> str:
    names = {int: "number", float: "number", str: "text"}
    for arg in (annotation, *typing.get_args(annotation)):
        if arg in names:
            return names[arg]
    return "value of this kind"


class ModelSection(Section):
    path: str = Field(description="Local directory with the model (config, weights, tokenizer).")
    format: Literal["hf", "paddle", "mindspore"] | None = Field(
        None, description="Checkpoint format; detected from the files when omitted."
    )
    template: str = Field(
        "auto", description="Chat template name, or 'auto' for the tokenizer's own template."
    )

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        from ftx.core.data.templates import TEMPLATES

        if value != "auto" and value not in TEMPLATES:
            raise ValueError(
                f"unknown chat template '{value}'; use 'auto' or one of {', '.join(TEMPLATES)}"
            )
        return value

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Dtype the weights are loaded in ('auto': follow train.precision)."
    )
    trust_remote_code: bool = Field(False, description="Allow model code shipped with the model.")


class DatasetSpec(Section):
    """One dataset: a file (``path``) or an entry of dataset_info.json (``name``)."""

    path: str | None = Field(None, description="A json, jsonl, csv or parquet file.")
    name: str | None = Field(None, description="An entry of dataset_info.json in data.dataset_dir.")
    format: Literal["alpaca", "sharegpt", "openai", "text", "src_tgt"] | None = Field(
        None, description="Row format (default alpaca, or the dataset_info.json entry's)."
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="Canonical name -> column name (LLaMA-Factory)."
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="ShareGPT role/content tags (LLaMA-Factory)."
    )
    num_samples: int | None = Field(None, ge=1, description="Take this many rows of this set.")

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if (self.path is None) == (self.name is None):
            raise ValueError("give exactly one of 'path' (a file) or 'name' (dataset_info.json)")
        return self


def _dataset_shorthand(value: Any) -> Any:
    """A bare string is a dataset_info.json name, or a file path when it has a suffix."""
    if isinstance(value, str):
        looks_like_file = any(
            value.endswith(s) for s in (".json", ".jsonl", ".csv", ".parquet", ".txt")
        )
        return {"path": value} if looks_like_file else {"name": value}
    return value


def _expand_datasets(value: Any) -> Any:
    """Accept ``"a,b"`` and bare strings as well as full dataset objects."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list):
        return [_dataset_shorthand(v) for v in value]
    return value


class DataSection(Section):
    datasets: list[DatasetSpec] = Field(min_length=1, description="Training datasets.")
    dataset_dir: str = Field(".", description="Folder holding dataset_info.json and data files.")
    val_size: float = Field(
        0.0, ge=0, description="Held-out share (0 <= x < 1) or count (>= 1) for eval loss."
    )
    max_samples: int | None = Field(None, ge=1, description="Cap on rows per dataset.")
    max_seq_len: int = Field(1024, ge=8, le=1_048_576, description="Tokens per training row.")
    packing: bool = Field(False, description="Pack several examples into each row.")
    train_on_prompt: bool = Field(False, description="Also learn the prompt tokens.")
    mask_history: bool = Field(False, description="Learn only the last assistant turn.")
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="Bad rows: stop with an error, or skip and count them."
    )
    truncation: Literal["oldest_rounds", "lf_split"] = Field(
        "oldest_rounds",
        description="Over-long conversations: drop the oldest rounds (keeping the system"
        " prompt), or cut each round's prompt and answer as LLaMA-Factory does.",
    )
    max_row_bytes: int = Field(
        ROW_BYTES,
        ge=1024,
        le=1 << 31,
        description="A dataset row larger than this is a bad row (memory stays bounded).",
    )
    seed: int = Field(42, description="Seed for shuffling and the validation split.")

    _expand = field_validator("datasets", mode="before")(_expand_datasets)

    @field_validator("val_size")
    @classmethod
    def _val_size(cls, value: float) -> float:
        if value >= 1 and value != int(value):
            raise ValueError("a count (>= 1) must be a whole number; a share must be < 1")
        return value


class EvaluateSection(Section):
    """Held-out generation: greedy answers compared with the references (exact match)."""

    datasets: list[DatasetSpec] = Field(min_length=1)
    max_new_tokens: int = Field(32, ge=1, le=4096)
    max_samples: int | None = Field(200, ge=1)
    before_training: bool = Field(True, description="Also score the model before training.")

    _expand = field_validator("datasets", mode="before")(_expand_datasets)


class LoraSection(Section):
    rank: int = Field(8, ge=1, le=4096)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[str] | Literal["all"] = Field(
        "all", description="Module names (q_proj, v_proj, ...) or 'all' linear layers."
    )
    rslora: bool = Field(False, description="Scale by alpha/sqrt(rank) instead of alpha/rank.")
    dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")


class QuantizationSection(Section):
    bits: Literal[4, 8] = 4
    type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True


class PrefixSection(Section):
    num_tokens: int = Field(128, ge=1, le=4096)


class FreezeSection(Section):
    trainable_layers: int = Field(
        2, description="Train the last N layers (negative: the first N); the rest is frozen."
    )

    @field_validator("trainable_layers")
    @classmethod
    def _nonzero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must not be 0: use N > 0 for the last N layers, N < 0 for the first")
        return value


PREFERENCE_STAGES = ("dpo", "kto", "rm")  # trained on preference (or feedback) data
REFERENCE_FREE = ("simpo", "orpo")  # preference losses without a reference model


class PreferenceSection(Section):
    """Preference training (stages dpo, kto, rm); defaults as TRL's and LLaMA-Factory's."""

    loss: Literal["sigmoid", "ipo", "hinge", "simpo", "orpo"] = Field(
        "sigmoid", description="dpo's loss: sigmoid (DPO), ipo, hinge, simpo, orpo."
    )
    beta: float = Field(0.1, gt=0, le=1000, description="The temperature of the rewards.")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="Conservative DPO: the chance a label is flipped."
    )
    simpo_gamma: float = Field(0.5, ge=0, le=100, description="SimPO's target reward margin.")
    sft_weight: float = Field(
        0.0, ge=0, le=100, description="Weight of an NLL term on the chosen answer (pref_ftx)."
    )
    reference: Literal["auto", "precomputed", "none"] | None = Field(
        None,
        description="auto: the base (adapter off under LoRA, a frozen copy otherwise);"
        " precomputed: reference log-probs written before training; none: reference-free."
        " Unset: auto, or none for simpo/orpo.",
    )
    desirable_weight: float = Field(1.0, gt=0, le=100, description="KTO: desirable rows' weight.")
    undesirable_weight: float = Field(
        1.0, gt=0, le=100, description="KTO: undesirable rows' weight."
    )

    def reference_for(self, stage: str) -> str:
        """The reference this stage and loss train against."""
        if stage == "rm":
            return "none"
        if self.reference is not None:
            return self.reference
        return "none" if stage == "dpo" and self.loss in REFERENCE_FREE else "auto"


class MethodSection(Section):
    stage: Literal["sft", "pt", "dpo", "kto", "rm"] = "sft"
    finetuning: Literal["full", "lora", "qlora", "freeze", "prefix"] = "lora"
    lora: LoraSection = LoraSection()
    quantization: QuantizationSection = QuantizationSection()
    prefix: PrefixSection = PrefixSection()
    freeze: FreezeSection = FreezeSection()
    preference: PreferenceSection = PreferenceSection()

    @model_validator(mode="after")
    def _preference_keys(self) -> MethodSection:
        # What differs from the defaults (a recipe's fields survive a dump and a reload, which
        # makes every field "set")
        pref = self.preference
        given = {
            name
            for name, field in PreferenceSection.model_fields.items()
            if getattr(pref, name) != field.default
        }
        if self.stage not in PREFERENCE_STAGES:
            if given:
                key = sorted(given)[0]
                stages = ", ".join(PREFERENCE_STAGES)
                raise ValueError(
                    f"preference.{key} is for the preference stages ({stages});"
                    f" stage '{self.stage}' does not read it"
                )
            return self
        only = {
            "dpo": {"loss", "beta", "label_smoothing", "simpo_gamma", "sft_weight", "reference"},
            "kto": {"beta", "reference", "desirable_weight", "undesirable_weight"},
            "rm": set(),
        }[self.stage]
        stray = sorted(given - only)
        if stray:
            raise ValueError(
                f"preference.{stray[0]} has no meaning for stage '{self.stage}'"
                f" (it reads: {', '.join(sorted(only)) or 'nothing from this section'})"
            )
        if (
            self.stage == "dpo"
            and pref.loss in REFERENCE_FREE
            and pref.reference
            not in (
                None,
                "none",
            )
        ):
            raise ValueError(
                f"preference.reference: the {pref.loss} loss uses no reference model;"
                " set reference: none (or leave it unset)"
            )
        if self.stage == "kto" and pref.reference == "none":
            raise ValueError(
                "preference.reference: KTO compares each answer with the reference model;"
                " use auto or precomputed"
            )
        if "simpo_gamma" in given and pref.loss != "simpo":
            raise ValueError("preference.simpo_gamma is read by loss: simpo only")
        if "label_smoothing" in given and pref.loss not in ("sigmoid",):
            raise ValueError("preference.label_smoothing is read by loss: sigmoid only")
        if self.stage == "rm" and self.finetuning == "prefix":
            raise ValueError(
                "finetuning 'prefix' leaves a reward model's score head untrained; use full,"
                " lora or freeze for stage 'rm'"
            )
        return self


class TrainSection(Section):
    epochs: float | None = Field(
        None, gt=0, le=100_000, description="Passes over the data (default 3)."
    )
    max_steps: int | None = Field(
        None,
        ge=1,
        le=1_000_000_000,
        description="Optimizer steps; when set it wins over epochs (as in transformers).",
    )
    learning_rate: float = Field(5e-5, gt=0, le=1)
    scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0, le=1_000_000_000)
    micro_batch_size: int = Field(
        1, ge=1, le=1 << 20, description="Rows per device per forward pass."
    )
    grad_accum: int = Field(1, ge=1, le=1 << 20, description="Micro-batches per optimizer step.")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping (0: off).")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 42
    logging_steps: int = Field(10, ge=1)
    save_steps: int | None = Field(None, ge=1, description="Checkpoint every N steps.")
    save_total_limit: int | None = Field(2, ge=1, description="Keep the newest K checkpoints.")
    eval_steps: int | None = Field(None, ge=1, description="Eval loss every N steps.")
    resume: Literal["auto"] | Literal[False] | str = Field(
        False, description="'auto' (newest checkpoint in the output dir), a path, or false."
    )
    trainer: Literal["auto", "ftx", "native"] = Field(
        "auto",
        description="Who trains: 'ftx' (ftx's loop, the same on every backend), 'native' (the"
        " framework's own trainer on the plan: PaddleFormers', MindFormers'), or 'auto' (native"
        " for what only it runs: bf16/fp16, tp, pp, sharding; else ftx).",
    )

    @model_validator(mode="after")
    def _exclusive(self) -> TrainSection:
        if self.warmup_ratio is not None and self.warmup_steps is not None:
            raise ValueError("set either 'warmup_ratio' or 'warmup_steps', not both")
        return self

    @property
    def steps_win(self) -> bool:
        """Both epochs and max_steps are set: max_steps decides, as in transformers'
        TrainingArguments and LLaMA-Factory."""
        return self.epochs is not None and self.max_steps is not None

    @property
    def num_epochs(self) -> float:
        """Epochs to run when max_steps is not set."""
        return 3.0 if self.epochs is None else self.epochs


class ParallelSection(Section):
    nnodes: int = Field(1, ge=1)
    node_rank: int = Field(0, ge=0, description="This node's rank (set per node on the CLI).")
    nproc_per_node: int = Field(1, ge=1)
    tp: int = Field(1, ge=1, description="Tensor-parallel degree.")
    pp: int = Field(1, ge=1, description="Pipeline-parallel degree.")
    zero: Annotated[int, Field(ge=0, le=3)] = Field(
        0, description="ZeRO stage (DeepSpeed / Paddle sharding / parallel optimizer)."
    )
    offload: Literal["none", "optimizer", "all"] = "none"
    master_addr: str = "127.0.0.1"
    master_port: int = Field(29500, ge=1, le=65535)

    @field_validator("master_addr")
    @classmethod
    def _host(cls, value: str) -> str:
        problem = scripts.host_problem(value)
        if problem:  # it reaches launch.sh: only a host may
            raise ValueError(f"{value!r} {problem}")
        return value

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def dp(self) -> int:
        """Data-parallel degree, derived from the world size."""
        return self.world_size // (self.tp * self.pp)

    @model_validator(mode="after")
    def _topology(self) -> ParallelSection:
        if self.world_size % (self.tp * self.pp) != 0:
            raise ValueError(
                f"tp*pp = {self.tp * self.pp} must divide the world size "
                f"nnodes*nproc_per_node = {self.world_size}"
            )
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} must be below nnodes {self.nnodes}")
        if self.offload != "none" and self.zero == 0:
            raise ValueError("offload needs a ZeRO stage: set 'zero' to 1, 2 or 3")
        if self.offload == "all" and self.zero != 3:
            raise ValueError("offloading parameters ('all') needs 'zero: 3'")
        return self


class OutputSection(Section):
    dir: str = Field("runs/default", description="Run output folder (OUT).")

    @field_validator("dir")
    @classmethod
    def _one_line(cls, value: str) -> str:
        problem = scripts.single_line_problem(value)
        if problem:  # it names the job and its logs in job.sbatch
            raise ValueError(f"the folder name {problem}")
        return value

    save_format: Literal["hf", "native", "both"] = "hf"
    merge_lora: bool = Field(False, description="Also write the LoRA-merged model to final/merged.")
    report_to: Literal["none", "tensorboard"] = Field(
        "none", description="Also log metrics for TensorBoard (OUT/logs/tensorboard)."
    )


SLURM_TIME = r"^(\d+-)?\d+(:\d{2}){0,2}$"  # minutes, [D-]HH[:MM[:SS]], as sbatch --time takes
K8S_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # an RFC 1123 label (claim names, namespaces)
GRES = re.compile(r"^[A-Za-z0-9_:.,=/+-]{1,200}$")


class SlurmSection(Section):
    """What `ftx submit --scheduler slurm` writes into OUT/plan/job.sbatch."""

    partition: str | None = None
    account: str | None = None
    time: str | None = Field(None, pattern=SLURM_TIME, description="Time limit (sbatch --time).")
    gpus_per_node: int | None = Field(None, ge=1, description="sbatch --gpus-per-node.")
    gres: str | None = Field(None, description="sbatch --gres (e.g. gpu:8), instead of gpus.")
    cpus_per_task: int | None = Field(None, ge=1)
    mem: str | None = Field(None, pattern=r"^\d+[KMGT]?$", description="Memory per node.")
    job_name: str | None = None
    signal_grace_s: int = Field(
        120, ge=0, description="SIGTERM this long before the time limit (checkpoint time)."
    )
    extra: list[str] = Field(
        default_factory=list, description="More sbatch options, each '--name=value'."
    )

    @field_validator("time", mode="before")
    @classmethod
    def _time_text(cls, value: Any) -> Any:
        if isinstance(value, int):  # YAML reads 1:00:00 as 3600 (base 60) and 60 as a number
            raise ValueError(f"write the time limit as quoted text ('1:00:00'), not {value}")
        return value

    @field_validator("partition", "account", "job_name")
    @classmethod
    def _slurm_name(cls, value: str | None) -> str | None:
        problem = None if value is None else scripts.slurm_name_problem(value)
        if problem:  # it is written into job.sbatch
            raise ValueError(f"{value!r} {problem}")
        return value

    @field_validator("gres")
    @classmethod
    def _gres(cls, value: str | None) -> str | None:
        if value is not None and not GRES.match(value):
            raise ValueError(f"{value!r} is not a Slurm gres list (e.g. gpu:8, gpu:a100:4)")
        return value

    @field_validator("extra")
    @classmethod
    def _options(cls, value: list[str]) -> list[str]:
        for option in value:
            if not option.startswith("--") or scripts.single_line_problem(option):
                raise ValueError(f"{option!r} must be one '--name[=value]' on one line")
        return value

    @model_validator(mode="after")
    def _gpus(self) -> SlurmSection:
        if self.gpus_per_node and self.gres:
            raise ValueError("set gpus_per_node or gres, not both")
        return self


class KubernetesSection(Section):
    """What `ftx plan --scheduler kubernetes` writes into OUT/plan/kubernetes/."""

    namespace: str = Field("default", pattern=K8S_NAME)
    image: str | None = Field(None, description="The backend image (default: ftx's name).")
    model_claim: str = Field("ftx-model", pattern=K8S_NAME, description="PVC with the model.")
    data_claim: str = Field("ftx-data", pattern=K8S_NAME, description="PVC with OUT/data.")
    output_claim: str = Field("ftx-output", pattern=K8S_NAME, description="PVC for OUT.")
    claim_size: str = Field("100Gi", pattern=r"^\d+(Ki|Mi|Gi|Ti)$")
    storage_class: str | None = None
    gpus_per_node: int | None = Field(None, ge=1)
    queue: str = Field("default", description="Volcano queue (paddle, mindformers).")
    runtime_ref: str = Field(
        "torch-distributed", description="Kubeflow Trainer ClusterTrainingRuntime (torch)."
    )


class SchedulerSection(Section):
    slurm: SlurmSection = SlurmSection()
    kubernetes: KubernetesSection = KubernetesSection()


class Recipe(Section):
    """A whole run spec. Relative paths are resolved against the recipe file's folder."""

    model: ModelSection
    data: DataSection
    method: MethodSection = MethodSection()
    train: TrainSection = TrainSection()
    parallel: ParallelSection = ParallelSection()
    output: OutputSection = OutputSection()
    evaluate: EvaluateSection | None = None
    scheduler: SchedulerSection = SchedulerSection()
    backends: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-backend native overrides (escape hatch)."
    )

    @model_validator(mode="after")
    def _cross_section(self) -> Recipe:
        stage = self.method.stage
        if stage == "pt" and self.data.train_on_prompt:
            raise ValueError("data.train_on_prompt has no meaning for stage 'pt' (all is learned)")
        if stage in PREFERENCE_STAGES:
            if self.data.train_on_prompt:
                raise ValueError(
                    f"data.train_on_prompt: stage '{stage}' compares answers; the prompt is"
                    " never learned (set it false)"
                )
            if self.data.packing:
                raise ValueError(
                    f"data.packing: stage '{stage}' scores whole answers, one per row; packed"
                    " rows would let one example's answer see another's (set it false)"
                )
        if stage == "rm" and self.evaluate is not None:
            raise ValueError(
                "evaluate: stage 'rm' trains a reward model, which scores answers and"
                " generates none; remove the evaluate section (the eval loss and reward"
                " accuracy on data.val_size pairs measure it)"
            )
        if self.method.finetuning not in ("lora", "qlora") and self.output.merge_lora:
            raise ValueError("output.merge_lora needs method.finetuning 'lora' or 'qlora'")
        return self

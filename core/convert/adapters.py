"""LoRA adapters across PEFT, PaddleNLP and MindFormers.

Every form is read into one neutral description: per Hugging Face weight name
(``model.layers.0.self_attn.q_proj.weight``) the pair A [r, in], B [out, r] in PEFT's
orientation, plus rank, alpha, dropout and rsLoRA. Writers produce each framework's
own folder:

- PEFT: ``adapter_config.json`` + ``adapter_model.safetensors``
  (``base_model.model.<module>.lora_A.weight``).
- PaddleNLP: ``lora_config.json`` + ``peft_model.safetensors`` and its index (or
  ``lora_model_state.pdparams``); names ``<prefix>.layers.N...q_proj.lora_A`` with
  A [in, r] and B [r, out], i.e. both transposed. PaddleFormers writes the same files
  with Hugging Face module names (``model.layers.N...q_proj.lora_A``); both are read.
- MindFormers: ``adapter_config.json`` (the form MindFormers itself writes) +
  ``pet_config.json`` (the YAML ``pet_config`` section) + ``adapter_model.safetensors``
  (``{"format": "ms"}``) or ``adapter_model.ckpt``; names
  ``model.layers.N.attention.wq.mindpet_delta_lora_a`` (older ``tk_delta_lora_a`` is read
  too), same orientation as PEFT. Its scaling is alpha / r with an integer alpha, so an
  rsLoRA adapter whose alpha * sqrt(r) is not whole has that factor folded into B.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ftx.core.convert.floats import from_float32, to_float32
from ftx.core.convert.layout import METADATA, transpose_2d
from ftx.core.convert.mindspore_ckpt import write_ckpt
from ftx.core.convert.names import FAMILIES, NameMap
from ftx.core.convert.safetensors_stream import TensorInfo, WeightFile, write_safetensors
from ftx.core.convert.sources import indexed_files, open_weights
from ftx.core.errors import FtxError
from ftx.core.fsutil import staged_dir
from ftx.core.models.formats import safetensors_metadata

PEFT_PREFIX = "base_model.model."
HF_ROOTS = ("model", "lm_head")  # first name parts of Hugging Face (and PaddleFormers) names
MS_SUFFIXES = {"A": "mindpet_delta_lora_a", "B": "mindpet_delta_lora_b"}
MS_LEGACY = {"A": "tk_delta_lora_a", "B": "tk_delta_lora_b"}
DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


@dataclass(frozen=True)
class Factor:
    """One LoRA matrix in a file, and whether the file stores it transposed."""

    reader: WeightFile
    name: str
    transpose: bool

    @property
    def info(self) -> TensorInfo:
        info = self.reader.info(self.name)
        return TensorInfo(info.name, info.dtype, info.shape[::-1] if self.transpose else info.shape)

    def read(self) -> np.ndarray:
        array = self.reader.read(self.name)
        return transpose_2d(array) if self.transpose else array


@dataclass
class Adapter:
    """A LoRA adapter in neutral form: HF weight name -> (A [r, in], B [out, r])."""

    rank: int
    alpha: float
    dropout: float = 0.0
    rslora: bool = False
    model_type: str | None = None
    base: str | None = None  # base_model_name_or_path, carried across forms
    pairs: dict[str, dict[str, Factor]] = field(default_factory=dict)
    # PEFT's modules_to_save: whole tensors by HF name (a reward model's score.weight)
    modules: dict[str, Factor] = field(default_factory=dict)
    task_type: str = "CAUSAL_LM"

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.rank) if self.rslora else self.alpha / self.rank

    @property
    def dtype(self) -> str:
        return next(iter(self.pairs.values()))["A"].info.dtype


def adapter_format(folder: Path) -> str | None:
    """hf, paddle or mindspore when ``folder`` holds a LoRA adapter, else None."""
    if (folder / "lora_config.json").exists():
        return "paddle"
    if not (folder / "adapter_config.json").exists():
        return None
    if (folder / "adapter_model.ckpt").exists():
        return "mindspore"
    weights = folder / "adapter_model.safetensors"
    if weights.exists() and safetensors_metadata(weights).get("format") == "ms":
        return "mindspore"
    return "hf"


def _json(path: Path) -> dict[str, Any]:
    """An adapter's config file as a JSON object (the usual paragraph when it is not)."""
    try:
        value = json.loads(_need(path, "config").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FtxError(
            f"not JSON ({exc})", where=str(path), fix="restore the adapter's config file"
        ) from None
    if not isinstance(value, dict):
        raise FtxError(
            f"a JSON {type(value).__name__}, not an object",
            where=str(path),
            fix="restore the adapter's config file",
        )
    return value


def _settings(config: dict[str, Any], path: Path, rslora_key: str) -> dict[str, Any]:
    """rank, alpha, dropout and rsLoRA of an adapter config, each of its type: a whole
    rank of at least 1, a finite positive alpha and a dropout in [0, 1) (a NaN alpha
    would merge into NaN weights; a string one would not scale at all)."""

    def number(key: str, whole: bool, default: Any = None) -> Any:
        value = config.get(key, default)
        kinds = (int,) if whole else (int, float)
        if value is None:
            raise FtxError(f"'{key}' is missing", where=str(path), fix=f"add '{key}'")
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            raise FtxError(
                f"'{key}' is {value!r}, not a {'whole ' if whole else ''}finite number",
                where=str(path),
                fix=f"write '{key}' as a JSON number",
            )
        return value

    rank, alpha = number("r", True), number("lora_alpha", False)
    dropout = number("lora_dropout", False, 0.0)
    if rank < 1 or alpha <= 0 or not 0 <= dropout < 1:
        raise FtxError(
            f"r {rank}, lora_alpha {alpha}, lora_dropout {dropout}: the rank must be at least"
            " 1, alpha above 0, the dropout in [0, 1)",
            where=str(path),
            fix="restore the adapter's config file",
        )
    return {"rank": rank, "alpha": float(alpha), "dropout": float(dropout),
            "rslora": bool(config.get(rslora_key))}  # fmt: skip


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise FtxError(
            f"{path.name} is missing", where=str(path.parent), fix=f"copy the adapter's {what}"
        )
    return path


def _base(config: dict[str, Any]) -> tuple[str | None, str | None]:
    """The base model's path as the adapter config records it, and its model_type."""
    base = config.get("base_model_name_or_path")
    base = None if base in (None, "", "none") else str(base)
    path = Path(base) / "config.json" if base else None
    if path and path.is_file():
        with contextlib.suppress(OSError, UnicodeDecodeError, ValueError, RecursionError):
            found = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(found, dict) and isinstance(found.get("model_type"), str):
                return base, found["model_type"]
    return base, None


def read_adapter(folder: Path, *, trust_pickle: bool = False) -> Adapter:
    """Any of the three adapter forms, as an Adapter (tensors stay on disk until read)."""
    fmt = adapter_format(folder)
    if fmt is None:
        raise FtxError(
            "not a LoRA adapter folder (no adapter_config.json or lora_config.json)",
            where=str(folder),
            fix="point at a PEFT, PaddleNLP or MindFormers adapter folder",
        )
    if fmt == "paddle":
        adapter = _read_paddle(folder, trust_pickle)
    elif fmt == "hf":
        adapter = _read_peft(folder)
    else:
        adapter = _read_mindformers(folder)
    return _checked(adapter, folder)


def _read_paddle(folder: Path, trust_pickle: bool) -> Adapter:
    config = _json(folder / "lora_config.json")
    adapter = Adapter(
        **_settings(config, folder / "lora_config.json", "rslora"), base=_base(config)[0]
    )
    files = indexed_files(folder, "peft_model.safetensors.index.json")
    if not files:
        files = [_need(folder / "lora_model_state.pdparams", "weights")]
    pattern = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])$")
    for path in files:
        reader = open_weights(path, trust_pickle=trust_pickle)
        for name in reader.names:
            found = pattern.match(name)
            if not found:
                raise FtxError(f"tensor {name} is not a LoRA weight", where=str(path))
            module = found["module"]
            if module.split(".")[0] in HF_ROOTS:  # PaddleFormers: Hugging Face names
                _add(adapter, module + ".weight", found["part"], Factor(reader, name, True))
                continue
            model_type = _paddle_family(module, path)
            adapter.model_type = adapter.model_type or model_type
            hf = NameMap(model_type, "paddle", "hf").map(module + ".weight")
            _add(adapter, hf.name if hf else None, found["part"], Factor(reader, name, True))
    return adapter


def _adapter_config(folder: Path) -> Adapter:
    """An Adapter (without weights) from a PEFT-style adapter_config.json."""
    path = folder / "adapter_config.json"
    config = _json(path)
    if config.get("use_dora"):
        raise FtxError(
            "DoRA adapters have a magnitude vector that other frameworks do not load",
            where=str(path),
            fix="merge it into the base with peft's merge_and_unload first",
        )
    base, model_type = _base(config)
    return Adapter(
        **_settings(config, path, "use_rslora"),
        model_type=model_type,
        base=base,
        task_type=str(config.get("task_type") or "CAUSAL_LM"),
    )


def _read_peft(folder: Path) -> Adapter:
    adapter = _adapter_config(folder)
    saved = _json(folder / "adapter_config.json").get("modules_to_save") or []
    if not isinstance(saved, list) or not all(isinstance(m, str) for m in saved):
        raise FtxError(
            f"'modules_to_save' is {saved!r}, not a list of module names",
            where=str(folder / "adapter_config.json"),
            fix="restore the adapter's config file",
        )
    whole = set(saved)
    path = _need(folder / "adapter_model.safetensors", "weights")
    reader = open_weights(path)
    pattern = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(\.default)?\.weight$")
    for name in reader.names:
        found = pattern.match(name)
        hf_name = name.removeprefix(PEFT_PREFIX).replace(".modules_to_save.default", "")
        if not found and hf_name.split(".")[0] in whole:
            adapter.modules[hf_name] = Factor(reader, name, False)
            continue
        if not found:
            raise FtxError(
                f"tensor {name} is not a LoRA A/B weight (embedding LoRA or extra"
                " modules are not converted)",
                where=str(path),
            )
        module = found["module"].removeprefix(PEFT_PREFIX)
        _add(adapter, module + ".weight", found["part"], Factor(reader, name, False))
    return adapter


def _read_mindformers(folder: Path) -> Adapter:
    adapter = _adapter_config(folder)
    ckpt = folder / "adapter_model.ckpt"
    path = ckpt if ckpt.exists() else _need(folder / "adapter_model.safetensors", "weights")
    reader = open_weights(path)
    to_hf = NameMap("llama", "mindspore", "hf")  # family-independent names
    parts = {v: k for k, v in (*MS_SUFFIXES.items(), *MS_LEGACY.items())}
    for name in reader.names:
        module, _, suffix = name.rpartition(".")
        if suffix not in parts:
            raise FtxError(f"tensor {name} is not a LoRA weight", where=str(path))
        hf = to_hf.map(module + ".weight")
        _add(adapter, hf.name if hf else None, parts[suffix], Factor(reader, name, False))
    return adapter


def _paddle_family(module: str, path: Path) -> str:
    prefix = module.split(".")[0]
    for model_type, (_, family_prefix) in FAMILIES.items():
        if family_prefix == prefix:
            return model_type
    raise FtxError(f"unknown PaddleNLP model prefix {prefix!r} in {module}", where=str(path))


def _add(adapter: Adapter, hf_name: str | None, part: str, factor: Factor) -> None:
    if hf_name is None:
        raise FtxError(
            f"LoRA weight {factor.name} adapts a module ftx has no name for",
            where=str(factor.reader.path),
            fix=f"ftx converts adapters of: {', '.join(FAMILIES)}",
        )
    adapter.pairs.setdefault(hf_name, {})[part] = factor


def _checked(adapter: Adapter, folder: Path) -> Adapter:
    if not adapter.pairs:
        raise FtxError("the adapter has no LoRA weights", where=str(folder))
    for name, pair in adapter.pairs.items():
        if set(pair) != {"A", "B"}:
            raise FtxError(f"adapter weights for {name} lack lora_A or lora_B", where=str(folder))
        a, b = pair["A"].info.shape, pair["B"].info.shape
        if len(a) != 2 or len(b) != 2:
            raise FtxError(
                f"LoRA weights for {name} have shapes {list(a)} and {list(b)}: each factor"
                " is a matrix",
                where=str(folder),
                fix="the adapter's weights are damaged: re-export the adapter",
            )
        if a[0] != adapter.rank or b[1] != adapter.rank:
            raise FtxError(
                f"LoRA weights for {name} have shapes {list(a)} and {list(b)}, not rank"
                f" {adapter.rank}",
                where=str(folder),
                fix="the adapter's config and weights disagree: re-export the adapter",
            )
    return adapter


def _module(name: str) -> str:
    return name.removesuffix(".weight")


def write_adapter(adapter: Adapter, out: Path, to: str, file_format: str) -> list[TensorInfo]:
    """Write ``adapter`` in ``to``'s form into the (staging) folder ``out``."""
    model_type = adapter.model_type
    if to == "paddle" and model_type is None:
        raise FtxError(
            "cannot tell the base model's family, which PaddleNLP names need",
            where="adapter_config.json base_model_name_or_path",
            fix=f"pass --model-type ({', '.join(FAMILIES)})",
        )
    names = NameMap(model_type or "llama", "hf", to)
    items: list[tuple[TensorInfo, Any]] = []
    targets: list[str] = []
    ms_factor, ms_alpha = 1.0, adapter.alpha
    if to == "mindspore" and (adapter.rslora or adapter.scaling * adapter.rank % 1):
        whole = adapter.scaling * adapter.rank
        ms_alpha = round(whole) if abs(whole - round(whole)) < 1e-9 else adapter.rank
        ms_factor = adapter.scaling * adapter.rank / ms_alpha
    for hf_name, pair in adapter.pairs.items():
        mapped = names.map(hf_name)
        if mapped is None:
            raise FtxError(
                f"the adapter adapts {hf_name}, which has no {to} name",
                fix=f"ftx converts adapters of: {', '.join(FAMILIES)}",
            )
        module = _module(mapped.name)
        short = module.rsplit(".", 1)[-1]
        if short not in targets:
            targets.append(short)
        for part in ("A", "B"):
            factor = pair[part]
            if to == "hf":
                name, flip = f"{PEFT_PREFIX}{module}.lora_{part}.weight", False
            elif to == "paddle":
                name, flip = f"{module}.lora_{part}", True
            else:
                name, flip = f"{module}.{MS_SUFFIXES[part]}", False
            scale = ms_factor if part == "B" and ms_factor != 1.0 else None
            info = factor.info
            shape = info.shape[::-1] if flip else info.shape
            items.append((TensorInfo(name, info.dtype, shape), _produce(factor, flip, scale)))
    if to == "hf":
        _write_single(out, items, "adapter_model.safetensors", "safetensors", fmt="hf")
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": adapter.rank,
            "lora_alpha": adapter.alpha,
            "lora_dropout": adapter.dropout,
            "use_rslora": adapter.rslora,
            "target_modules": targets,
            "bias": "none",
            "fan_in_fan_out": False,
            "inference_mode": True,
            "base_model_name_or_path": adapter.base,
        }
        _write_json(out / "adapter_config.json", config)
    elif to == "paddle":
        _write_paddle(out, items, file_format)
        config = {
            "r": adapter.rank,
            "lora_alpha": adapter.alpha,
            "lora_dropout": adapter.dropout,
            "rslora": adapter.rslora,
            "target_modules": [f".*{t}.*" for t in targets],
            "merge_weights": False,
            "trainable_bias": None,
            "trainable_modules": None,
            "tensor_parallel_degree": -1,
            "dtype": DTYPE_NAMES.get(adapter.dtype, "float32"),
            "base_model_name_or_path": adapter.base,
        }
        _write_json(out / "lora_config.json", config)
    else:
        name = "adapter_model.ckpt" if file_format == "ckpt" else "adapter_model.safetensors"
        _write_single(out, items, name, file_format)
        pattern = "|".join(f".*{t}" for t in targets)
        pet = {
            "pet_type": "lora",
            "lora_rank": adapter.rank,
            "lora_alpha": int(ms_alpha),
            "lora_dropout": adapter.dropout,
            "target_modules": pattern,
        }
        _write_json(out / "pet_config.json", pet)
        _write_json(
            out / "adapter_config.json",
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": adapter.rank,
                "lora_alpha": int(ms_alpha),
                "lora_dropout": adapter.dropout,
                "target_modules": [f".*{t}" for t in targets],
                "bias": "none",
                "base_model_name_or_path": adapter.base or "none",
            },
        )
    return [info for info, _ in items]


def _produce(factor: Factor, flip: bool, scale: float | None):
    def make() -> np.ndarray:
        array = factor.read()
        if scale is not None:
            dtype = factor.info.dtype
            array = from_float32(to_float32(array, dtype) * np.float32(scale), dtype)
        return transpose_2d(array) if flip else array

    return make


def _write_paddle(out: Path, items: list, file_format: str) -> None:
    if file_format == "pdparams":
        from ftx.core.convert.pickled import write_pdparams

        write_pdparams(out / "lora_model_state.pdparams", items)
        return
    _write_single(out, items, "peft_model.safetensors", "safetensors", fmt="paddle")
    index = {
        "metadata": {"total_size": sum(info.nbytes for info, _ in items)},
        "weight_map": {info.name: "peft_model.safetensors" for info, _ in items},
    }
    _write_json(out / "peft_model.safetensors.index.json", index)


def _write_single(
    out: Path, items: list, name: str, file_format: str, fmt: str = "mindspore"
) -> None:
    """One weight file named ``name``: safetensors with ``fmt``'s metadata, or .ckpt."""
    if file_format == "ckpt":
        write_ckpt(out / name, items)
    else:
        write_safetensors(out / name, items, {"format": METADATA[fmt]})


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def convert_adapter(
    src: Path,
    dst: Path,
    to: str,
    *,
    file_format: str = "safetensors",
    verify: bool = False,
    model_type: str | None = None,
    trust_pickle: bool = False,
) -> dict:
    """Convert the adapter folder ``src`` to ``to``'s form in ``dst`` (staged, then renamed)."""
    source = adapter_format(src)
    if source == to:
        raise FtxError(f"{src} is already a {to} adapter", fix="pick another --to")
    adapter = read_adapter(src, trust_pickle=trust_pickle)
    if adapter.modules:
        raise FtxError(
            f"the adapter also trains whole modules ({', '.join(adapter.modules)}), which"
            " the other frameworks' adapter forms have no place for",
            where=str(src / "adapter_config.json"),
            fix="merge it into the base with ftx merge-lora, then convert the merged model",
        )
    adapter.model_type = model_type or adapter.model_type
    with staged_dir(dst, replace=True) as tmp:
        written = write_adapter(adapter, tmp, to, file_format)
        if verify:
            checked = verify_adapter(adapter, tmp, to)
    summary = {
        "from": f"{source} adapter",
        "to": f"{to} adapter",
        "tensors": len(written),
        "bytes": sum(info.nbytes for info in written),
    }
    if verify:
        summary["verified"] = checked
    return summary


def verify_adapter(adapter: Adapter, out: Path, to: str) -> int:
    """Re-read the written adapter and compare every factor with the source, bit for bit
    (B after MindSpore's alpha folding is compared by value)."""
    again = read_adapter(out, trust_pickle=True)  # ftx wrote it a moment ago
    if set(again.pairs) != set(adapter.pairs):
        raise FtxError("verify: the written adapter adapts other modules", where=str(out))
    folded = to == "mindspore"  # MindFormers may carry part of the scaling inside B
    if not folded and not math.isclose(again.scaling, adapter.scaling, rel_tol=1e-12):
        raise FtxError("verify: the written adapter's scaling differs", where=str(out))
    checked = 0
    for name, pair in adapter.pairs.items():
        for part in ("A", "B"):
            want, got = pair[part].read(), again.pairs[name][part].read()
            same = np.ascontiguousarray(want).tobytes() == np.ascontiguousarray(got).tobytes()
            if not same and to == "mindspore" and part == "B":  # alpha folded into B
                dtype = pair[part].info.dtype
                same = np.allclose(
                    to_float32(got, dtype) * again.scaling,
                    to_float32(want, dtype) * adapter.scaling,
                    rtol=1e-2 if dtype != "F32" else 1e-6,
                    atol=1e-6,
                )
            if not same:
                raise FtxError(f"verify: LoRA {part} of {name} differs", where=str(out))
            checked += 1
    return checked

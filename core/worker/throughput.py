"""Model FLOPs utilisation: FLOPs per token, the peak of known accelerators, and the
running figure the metrics rows carry on GPUs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# Dense bf16 peak FLOP/s by device name fragment.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def flops_per_token(params: int, layers: int, hidden: int, seq_len: float, full: bool) -> float:
    """Training FLOPs for one token: 6N for full fine-tuning, about 4N for LoRA (frozen
    weights get no weight-gradient matmul), plus attention's 12 * layers * hidden *
    sequence length (PaLM appendix B)."""
    return (6 if full else 4) * params + 12 * layers * hidden * seq_len


def peak_flops(device_name: str) -> float | None:
    """The bf16 peak of a known GPU (None when unknown)."""
    return next((peak for key, peak in PEAK_BF16.items() if key in device_name), None)


def mfu(tokens_per_s: float, per_token: float, peak: float | None) -> float | None:
    return None if not peak else tokens_per_s * per_token / peak


@dataclass(frozen=True)
class Utilisation:
    """MFU of one run: its parameter counts, the model's shape and the device's peak."""

    params: int
    trainable: int
    layers: int
    hidden: int
    peak: float | None  # None: a CPU or an unknown device, no MFU

    @classmethod
    def of(cls, model_path: str, params: int, trainable: int, device: str | None) -> Utilisation:
        config = json.loads((Path(model_path) / "config.json").read_text())
        layers = int(config.get("num_hidden_layers", 0))
        hidden = int(config.get("hidden_size", 0))
        return cls(params, trainable, layers, hidden, peak_flops(device) if device else None)

    def at(self, tokens_per_s: float, mean_row_tokens: float, world: int) -> float | None:
        """MFU of one rank at the job's ``tokens_per_s`` (rows of ``mean_row_tokens``)."""
        if not (self.peak and self.layers and self.hidden):
            return None
        full = self.trainable == self.params
        per_token = flops_per_token(self.params, self.layers, self.hidden, mean_row_tokens, full)
        value = mfu(tokens_per_s / world, per_token, self.peak)
        return round(value, 4) if value is not None else None

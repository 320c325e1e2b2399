"""Model FLOPs utilisation: achieved training FLOP/s over the device's peak.

Training FLOPs per token: 6N for full fine-tuning and about 4N for LoRA (frozen
weights get no weight-gradient matmul), plus attention's 12 * layers * hidden *
sequence length (PaLM appendix B; torchtitan).
"""

from __future__ import annotations

# Dense bf16 peak FLOP/s by device name fragment.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def flops_per_token(params: int, layers: int, hidden: int, seq_len: float, full: bool) -> float:
    """Training FLOPs for one token."""
    return (6 if full else 4) * params + 12 * layers * hidden * seq_len


def peak_flops(device_name: str) -> float | None:
    """The bf16 peak of a known GPU (None when unknown)."""
    return next((peak for key, peak in PEAK_BF16.items() if key in device_name), None)


def mfu(tokens_per_s: float, per_token: float, peak: float | None) -> float | None:
    return None if not peak else tokens_per_s * per_token / peak

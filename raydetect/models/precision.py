"""Numeric precision of the forward pass: `auto | fp32 | bf16 | fp16`, resolved once per process and device.

`auto` is bf16 autocast on CPUs that execute bf16 natively (AMX-BF16 or AVX-512 BF16, read from the CPU at run
time, never assumed), bf16 autocast on CUDA devices that support it and fp16 autocast on older ones, and fp32
anywhere else (other CPUs, MPS). An explicit `bf16` or `fp16` is honoured on any device (slow where it is not
native). Autocast runs convolutions and matrix products in the low precision and keeps reductions, softmax
and the loss in fp32; callers take `logits.float()` afterwards.

Scoring, Serve, evaluation and training all go through `resolve_precision` and `autocast`; Grad-CAM does not
(its gradients run in fp32).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import get_args

import torch

from raydetect.config import PrecisionSetting

PRECISIONS: tuple[str, ...] = get_args(PrecisionSetting)  # auto, fp32, bf16, fp16
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# CPU features with which oneDNN runs bf16 convolutions and matrix products in hardware.
CPU_BF16_FEATURES = ("amx_bf16", "avx512_bf16")


def cpu_capabilities() -> Mapping[str, object]:
    """What this CPU supports, as torch detected it (`torch.cpu.get_capabilities()`)."""
    return torch.cpu.get_capabilities()


def cpu_has_native_bf16(capabilities: Mapping[str, object] | None = None) -> bool:
    """True when the CPU executes bf16 in hardware (AMX-BF16 or AVX-512 BF16)."""
    caps = cpu_capabilities() if capabilities is None else capabilities
    return any(bool(caps.get(feature, False)) for feature in CPU_BF16_FEATURES)


def resolve_precision(
    setting: str, device: torch.device | str, cpu_bf16: Callable[[], bool] = cpu_has_native_bf16
) -> str:
    """The precision `setting` means on `device`: "fp32", "bf16" or "fp16". `cpu_bf16` answers whether this
    CPU has native bf16 (tests pass their own to play a CPU without it)."""
    if setting not in PRECISIONS:
        raise ValueError(f"unknown precision {setting!r}; choose one of {', '.join(PRECISIONS)}")
    if setting != "auto":
        return setting
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if kind == "cpu" and cpu_bf16():
        return "bf16"
    return "fp32"


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved `precision` on `device` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in DTYPES:
        raise ValueError(f"autocast needs a resolved precision (fp32, bf16, fp16), got {precision!r}")
    return torch.autocast(torch.device(device).type, dtype=DTYPES[precision])

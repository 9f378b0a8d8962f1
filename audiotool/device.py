"""Compute device and precision selection."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

from audiotool.errors import UsageError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
Precision = Literal["fp32", "fp16", "bf16"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; an explicit device that is absent is an error.

    ``cuda:1`` style indices are accepted.
    """
    import torch

    base = name.split(":")[0]
    if base not in DEVICES:
        raise UsageError(f"--device must be one of {list(DEVICES)}, got {name!r}")
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available", hint="use --device cpu")
    if base == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise UsageError("--device mps: Apple MPS is not available", hint="use --device cpu")
    return torch.device(name)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (None for fp32).

    fp16 on the CPU is refused (slow or unsupported kernels); bf16 works on CPU and GPU.
    """
    import torch

    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type == "cpu":
            raise UsageError("--precision fp16 needs a GPU", hint="use bf16 or fp32 on the CPU")
        return torch.float16
    return torch.bfloat16

"""Noise schedules and DDIM timestep spacings (pure functions)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from audiotool.errors import EngineError

Spacing = Literal["uniform", "trailing", "linspace"]


def cosine_betas(num_steps: int = 1000, s: float = 0.008) -> Tensor:
    """β_t of the cosine schedule (Nichol & Dhariwal 2021, eq. 17), AudioSR-exact: float64,
    without clipping (so β_{T-1} = 1, as the AudioSR checkpoint's buffers hold);
    ``(num_steps,)``. Derive further quantities in float64 before any float32 cast."""
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps + s
    f = torch.cos(t / (1 + s) * math.pi / 2) ** 2
    f = f / f[0]
    return 1 - f[1:] / f[:-1]


def cosine_alphas_cumprod(num_steps: int = 1000, s: float = 0.008) -> Tensor:
    """ᾱ_t of :func:`cosine_betas`, computed in float64, returned as float32 (ᾱ_{T-1} = 0
    exactly); ``(num_steps,)``."""
    return torch.cumprod(1 - cosine_betas(num_steps, s), dim=0).float()


def ddim_timesteps(
    num_inference_steps: int, num_train_steps: int = 1000, spacing: Spacing = "uniform"
) -> Tensor:
    """Timesteps to visit, in DESCENDING order, ``(S,)`` int64.

    - ``uniform``: AudioSR / LDM ``range(0, T, T // S) + 1`` (50 steps -> 981, 961, ..., 1).
    - ``trailing``: ``round(arange(T, 0, -T/S)) - 1`` (ends at t = T-1; diffusers "trailing").
    - ``linspace``: ``round(linspace(0, T-1, S))``.
    """
    if not 1 <= num_inference_steps <= num_train_steps:
        raise EngineError(f"steps must be in 1..{num_train_steps}, got {num_inference_steps}")
    if spacing == "uniform":
        c = num_train_steps // num_inference_steps
        steps = torch.arange(0, num_train_steps, c)[:num_inference_steps] + 1
        steps = steps.clamp(max=num_train_steps - 1)
    elif spacing == "trailing":
        ratio = num_train_steps / num_inference_steps
        steps = torch.round(torch.arange(num_train_steps, 0, -ratio)).long() - 1
        steps = steps.flip(0)
    elif spacing == "linspace":
        steps = torch.round(torch.linspace(0, num_train_steps - 1, num_inference_steps)).long()
    else:
        raise EngineError(f"spacing must be one of uniform/trailing/linspace, got {spacing!r}")
    steps = torch.unique(steps.long())  # sorted ascending, no repeated step (e.g. S == T)
    return steps.flip(0)

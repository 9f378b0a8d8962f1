"""DDIM sampling with classifier-free guidance: a pure function over a denoiser callable.

Legend: ``B`` batch, ``...`` any latent shape (e.g. ``C, T, F``).

The update follows DDIM (Song et al. 2021, eq. 12) as AudioSR implements it (see
``shared/reference/audiosr.md``, "Diffusion and sampler"): with ᾱ_t and ᾱ_prev,

    x̂₀ = √ᾱ_t x − √(1−ᾱ_t) v            ε = √ᾱ_t v + √(1−ᾱ_t) x        (v-parameterisation)
    σ  = η √((1−ᾱ_prev)/(1−ᾱ_t) · (1 − ᾱ_t/ᾱ_prev))
    x ← √ᾱ_prev x̂₀ + √(1−ᾱ_prev−σ²) ε + σ z

and ᾱ_prev = ᾱ[0] on the last step unless ``final_alpha`` overrides it. Classifier-free guidance
``out = u + s (c − u)`` runs the conditional and unconditional passes as ONE batched forward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from audiotool.errors import EngineError

Denoiser = Callable[[Tensor, Tensor, Mapping[str, Tensor]], Tensor]
StepCallback = Callable[[int, int, Tensor], None]
Generators = torch.Generator | Sequence[torch.Generator] | None


def randn_like_batch(
    shape: Sequence[int],
    generator: Generators,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise of ``shape`` drawn on the CPU and moved to ``device``.

    With a sequence of generators, item ``i`` of the batch is drawn from ``generator[i]`` — so
    the noise of an item does not depend on which other items share its mini-batch.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(*shape, generator=generator, dtype=dtype).to(device)
    if len(generator) != shape[0]:
        raise EngineError(f"{len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(*shape[1:], generator=g, dtype=dtype) for g in generator]).to(
        device
    )


def _cfg_forward(
    denoiser: Denoiser,
    x: Tensor,
    t: Tensor,
    cond: Mapping[str, Tensor],
    uncond: Mapping[str, Tensor] | None,
    guidance: float,
) -> Tensor:
    if uncond is None or guidance == 1.0:
        return denoiser(x, t, cond)
    if set(cond) != set(uncond):
        raise EngineError(
            f"cond and uncond must have the same keys, got {sorted(cond)} vs {sorted(uncond)}"
        )
    both = {k: torch.cat([cond[k], uncond[k].expand_as(cond[k])]) for k in cond}
    out = denoiser(torch.cat([x, x]), torch.cat([t, t]), both)
    c, u = out.chunk(2)
    return u + guidance * (c - u)


def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    alphas_cumprod: Tensor,
    *,
    cond: Mapping[str, Tensor],
    uncond: Mapping[str, Tensor] | None = None,
    guidance: float = 1.0,
    eta: float = 0.0,
    parameterization: Literal["v", "eps"] = "v",
    generator: Generators = None,
    final_alpha: float | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Run DDIM from noise ``x`` ``(B, ...)`` to a sample ``(B, ...)``.

    Args:
        denoiser: ``(x_t (B, ...), t (B,), cond) -> v or ε (B, ...)``.
        x: the starting noise x_T.
        timesteps: descending timesteps to visit, ``(S,)`` (see ``ddim_timesteps``).
        alphas_cumprod: ᾱ of the training schedule, ``(T,)``.
        cond / uncond: conditioning tensors (leading dim B; uncond may have leading dim 1).
        guidance: classifier-free guidance scale (1 = conditional pass only).
        eta: DDIM stochasticity (0 deterministic, 1 = AudioSR's default).
        parameterization: what the denoiser predicts.
        generator: one generator, or one per batch item, for the η noise.
        final_alpha: ᾱ after the last step (None = ᾱ[0], as AudioSR; 1.0 = fully clean).
        callback: ``(step_index, num_steps, x)`` after each step.
    """
    if parameterization not in ("v", "eps"):
        raise EngineError(f"parameterization must be 'v' or 'eps', got {parameterization!r}")
    acp = alphas_cumprod.to(device=x.device, dtype=torch.float64)
    steps = [int(t) for t in timesteps]
    n = len(steps)
    x = x.float()
    for i, t in enumerate(steps):
        a_t = acp[t]
        if i + 1 < n:
            a_prev = acp[steps[i + 1]]
        else:
            a_prev = acp.new_tensor(final_alpha) if final_alpha is not None else acp[0]
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        out = _cfg_forward(denoiser, x, t_batch, cond, uncond, guidance).float()
        sa, s1a = a_t.sqrt().float(), (1 - a_t).sqrt().float()
        if parameterization == "v":
            x0 = sa * x - s1a * out
            eps = sa * out + s1a * x
        else:
            eps = out
            x0 = (x - s1a * eps) / sa.clamp(min=1e-4)  # t = T-1 has ᾱ = 0 under cosine
        sigma = (
            eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
            if eta > 0
            else acp.new_tensor(0.0)
        )
        dir_coef = (1 - a_prev - sigma**2).clamp(min=0).sqrt().float()
        x = a_prev.sqrt().float() * x0 + dir_coef * eps
        if eta > 0 and float(sigma) > 0:
            x = x + sigma.float() * randn_like_batch(x.shape, generator, device=x.device)
        if callback is not None:
            callback(i + 1, n, x)
    return x

"""Diffusion samplers with classifier-free guidance: pure functions over a denoiser callable.

Legend: ``B`` batch, ``...`` any latent shape (e.g. ``C, T, F``).

Three samplers share one signature (k-diffusion style) and one guided forward
(:func:`guided_model`); every one makes ONE (batched) denoiser call per step:

- :func:`sample_ddim` — DDIM (Song et al. 2021), first order, optional η noise;
- :func:`sample_dpmpp_2m` — DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for
  Guided Sampling of Diffusion Probabilistic Models", Algorithm 2), second-order multistep;
- :func:`sample_unipc` — UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector
  Framework for Fast Sampling of Diffusion Models"), UniP-2 + UniC with B(h) = e^h − 1 ("bh2").

All work on the data prediction x̂₀ in log-SNR time λ = log(√ᾱ / √(1−ᾱ)); the schedule's
coefficients are computed in float64 from ``alphas_cumprod``.

DDIM

The update follows DDIM (Song et al. 2021, eq. 12) as AudioSR implements it (see
``shared/reference/audiosr.md``, "Diffusion and sampler"): with ᾱ_t and ᾱ_prev,

    x̂₀ = √ᾱ_t x − √(1−ᾱ_t) v            ε = √ᾱ_t v + √(1−ᾱ_t) x        (v-parameterisation)
    σ  = η √((1−ᾱ_prev)/(1−ᾱ_t) · (1 − ᾱ_t/ᾱ_prev))
    x ← √ᾱ_prev x̂₀ + √(1−ᾱ_prev−σ²) ε + σ z

and ᾱ_prev = ᾱ[0] on the last step unless ``final_alpha`` overrides it. Classifier-free guidance
``out = u + s (c − u)`` runs the conditional and unconditional passes as ONE batched forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, Protocol

import torch
from torch import Tensor

from audiotool.errors import EngineError

Denoiser = Callable[[Tensor, Tensor, Mapping[str, Tensor]], Tensor]
StepCallback = Callable[[int, int, Tensor], None]
Generators = torch.Generator | Sequence[torch.Generator] | None
Parameterization = Literal["v", "eps"]
SamplerName = Literal["ddim", "dpmpp-2m", "unipc"]
SAMPLER_NAMES: tuple[str, ...] = ("ddim", "dpmpp-2m", "unipc")
#: log-SNR is clamped here (ᾱ = 0 at t = T−1 under the cosine schedule gives λ = −∞)
_LAMBDA_MIN = -20.0


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


GuidedModel = Callable[[Tensor, int], Tensor]
#: guidance at every noise level (AudioSR's)
FULL_INTERVAL: tuple[float, float] = (0.0, 1.0)


def check_interval(interval: tuple[float, float]) -> tuple[float, float]:
    """``interval`` as two floats with ``0 <= lo <= hi <= 1``.

    Raises:
        EngineError: otherwise.
    """
    lo, hi = (float(v) for v in interval)
    if not 0.0 <= lo <= hi <= 1.0:
        raise EngineError(f"a guidance interval needs 0 <= lo <= hi <= 1, got ({lo:g}, {hi:g})")
    return lo, hi


def guided_model(
    denoiser: Denoiser,
    cond: Mapping[str, Tensor],
    uncond: Mapping[str, Tensor] | None,
    guidance: float,
    interval: tuple[float, float] = FULL_INTERVAL,
    num_train_steps: int = 1000,
) -> GuidedModel:
    """``(x_t, t) -> u + s (c − u)`` (float32) for an integer timestep ``t``: classifier-free
    guidance as ONE batched forward.

    The doubled conditioning batch (``cond`` then ``uncond``) is built once here, not at every
    step; each call only doubles ``x_t`` and ``t``. Without ``uncond`` (or with ``guidance``
    1) it is the conditional forward alone, and so it is at the timesteps whose noise level
    ``t / num_train_steps`` lies outside ``interval``: guidance in a limited interval of noise
    levels (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval Improves Sample
    and Distribution Quality in Diffusion Models") — a step outside it costs half a guided one.
    """
    lo, hi = check_interval(interval)

    def conditional(x: Tensor, t: int) -> Tensor:
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        return denoiser(x, t_batch, cond).float()

    if uncond is None or guidance == 1.0:
        return conditional
    if set(cond) != set(uncond):
        raise EngineError(
            f"cond and uncond must have the same keys, got {sorted(cond)} vs {sorted(uncond)}"
        )
    both = {k: torch.cat([cond[k], uncond[k].expand_as(cond[k])]) for k in cond}

    def forward(x: Tensor, t: int) -> Tensor:
        if not lo <= t / num_train_steps <= hi:
            return conditional(x, t)
        t_batch = torch.full((2 * x.shape[0],), t, device=x.device, dtype=torch.long)
        out = denoiser(torch.cat([x, x]), t_batch, both).float()
        c, u = out.chunk(2)
        return u + guidance * (c - u)

    return forward


def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    alphas_cumprod: Tensor,
    *,
    cond: Mapping[str, Tensor],
    uncond: Mapping[str, Tensor] | None = None,
    guidance: float = 1.0,
    guidance_interval: tuple[float, float] = FULL_INTERVAL,
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
        guidance_interval: the noise levels ``t / T`` (``T = len(alphas_cumprod)``) where
            guidance applies, ``(lo, hi)`` inclusive; elsewhere the conditional pass alone.
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
    model = guided_model(denoiser, cond, uncond, guidance, guidance_interval, len(alphas_cumprod))
    for i, t in enumerate(steps):
        a_t = acp[t]
        if i + 1 < n:
            a_prev = acp[steps[i + 1]]
        else:
            a_prev = acp.new_tensor(final_alpha) if final_alpha is not None else acp[0]
        out = model(x, t)
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


def _to_x0(out: Tensor, x: Tensor, abar: float, parameterization: Parameterization) -> Tensor:
    """The data prediction x̂₀ from the model output ``out`` (v or ε) at ᾱ = ``abar``."""
    sa, s1a = math.sqrt(abar), math.sqrt(1.0 - abar)
    if parameterization == "v":
        return sa * x - s1a * out
    return (x - s1a * out) / max(sa, 1e-4)  # same guard as DDIM: ᾱ = 0 at t = T-1 (cosine)


def _log_snr(abar: float) -> float:
    """λ = log(√ᾱ / √(1−ᾱ)), clamped below at ``_LAMBDA_MIN`` (+∞ for ᾱ = 1)."""
    if abar >= 1.0:
        return math.inf
    if abar <= 0.0:
        return _LAMBDA_MIN
    return max(0.5 * (math.log(abar) - math.log1p(-abar)), _LAMBDA_MIN)


def _ode_grid(
    timesteps: Tensor, alphas_cumprod: Tensor, final_alpha: float | None
) -> tuple[list[int], list[float]]:
    """Visited timesteps and the ᾱ of every node, the final one included (float64)."""
    acp = alphas_cumprod.detach().to(device="cpu", dtype=torch.float64)
    steps = [int(t) for t in timesteps]
    abars = [float(acp[t]) for t in steps]
    abars.append(float(acp[0]) if final_alpha is None else float(final_alpha))
    return steps, abars


def _check(parameterization: str) -> None:
    if parameterization not in ("v", "eps"):
        raise EngineError(f"parameterization must be 'v' or 'eps', got {parameterization!r}")


def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    alphas_cumprod: Tensor,
    *,
    cond: Mapping[str, Tensor],
    uncond: Mapping[str, Tensor] | None = None,
    guidance: float = 1.0,
    guidance_interval: tuple[float, float] = FULL_INTERVAL,
    parameterization: Parameterization = "v",
    final_alpha: float | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """DPM-Solver++(2M) from noise ``x`` ``(B, ...)`` to a sample ``(B, ...)`` (deterministic).

    Lu et al. 2022, Algorithm 2 (multistep second order on x̂₀, in λ): with
    ``h_i = λ_i − λ_{i−1}`` and ``r_i = h_{i−1} / h_i``,

        D_i = (1 + 1/(2 r_i)) x̂₀_{i−1} − 1/(2 r_i) x̂₀_{i−2}      (D = x̂₀ on the first step)
        x_i = (σ_i / σ_{i−1}) x_{i−1} − α_i (e^{−h_i} − 1) D_i

    The nodes are ``timesteps`` then ᾱ[0] (or ``final_alpha``), as in :func:`sample_ddim`, so
    S steps cost S guided forwards. A step to σ = 0 (``final_alpha=1``) returns x̂₀ (first
    order, as k-diffusion).

    Args: as :func:`sample_ddim` (no η: the solver is for the probability-flow ODE).
    """
    _check(parameterization)
    steps, abars = _ode_grid(timesteps, alphas_cumprod, final_alpha)
    n = len(steps)
    x = x.float()
    model = guided_model(denoiser, cond, uncond, guidance, guidance_interval, len(alphas_cumprod))
    prev_x0: Tensor | None = None
    h_prev = 0.0
    for i, t in enumerate(steps):
        a_cur, a_next = abars[i], abars[i + 1]
        out = model(x, t)
        x0 = _to_x0(out, x, a_cur, parameterization)
        s_cur, s_next = math.sqrt(1.0 - a_cur), math.sqrt(max(1.0 - a_next, 0.0))
        if s_next == 0.0:
            x = x0
        else:
            h = _log_snr(a_next) - _log_snr(a_cur)
            d = x0
            if prev_x0 is not None:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
            x = (s_next / s_cur) * x - math.sqrt(a_next) * math.expm1(-h) * d
            h_prev = h
        prev_x0 = x0
        if callback is not None:
            callback(i + 1, n, x)
    return x


def sample_unipc(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    alphas_cumprod: Tensor,
    *,
    cond: Mapping[str, Tensor],
    uncond: Mapping[str, Tensor] | None = None,
    guidance: float = 1.0,
    guidance_interval: tuple[float, float] = FULL_INTERVAL,
    parameterization: Parameterization = "v",
    final_alpha: float | None = None,
    corrector: bool = True,
    callback: StepCallback | None = None,
) -> Tensor:
    """UniPC-2 (bh2) from noise ``x`` ``(B, ...)`` to a sample ``(B, ...)`` (deterministic).

    Zhao et al. 2023, Algorithms 2-3 with B(h) = e^h − 1 on x̂₀ (diffusers'
    ``UniPCMultistepScheduler``, ``solver_order=2``, ``predict_x0=True``): the predictor UniP-2
    (which equals DPM-Solver++(2M)'s step) moves to the next node; there the model output
    that the next predictor needs anyway feeds the corrector UniC, which refines the node
    before the next step — so the order rises by one at no extra forward. The first step is
    first order; no corrector follows the last step (it would cost a forward).

    Args: as :func:`sample_dpmpp_2m`; ``corrector=False`` gives DPM-Solver++(2M) exactly.
    """
    _check(parameterization)
    steps, abars = _ode_grid(timesteps, alphas_cumprod, final_alpha)
    lams = [_log_snr(a) for a in abars]
    n = len(steps)
    x = x.float()
    model = guided_model(denoiser, cond, uncond, guidance, guidance_interval, len(alphas_cumprod))
    hist: list[tuple[float, Tensor]] = []  # (λ, x̂₀) of the last two nodes
    last_x: Tensor | None = None  # the node the previous predictor started from
    last_order = 1
    for i, t in enumerate(steps):
        out = model(x, t)
        x0 = _to_x0(out, x, abars[i], parameterization)
        if corrector and last_x is not None:
            x = _unipc_update(last_x, hist, abars[i - 1], abars[i], lams[i], last_order, x0)
        hist = [*hist[-1:], (lams[i], x0)]
        if 1.0 - abars[i + 1] <= 0.0:
            x = x0
        else:
            last_x, last_order = x, min(2, len(hist))
            x = _unipc_update(x, hist, abars[i], abars[i + 1], lams[i + 1], last_order, None)
        if callback is not None:
            callback(i + 1, n, x)
    return x


def _unipc_update(
    x: Tensor,
    hist: list[tuple[float, Tensor]],
    a_s: float,
    a_t: float,
    lam_t: float,
    order: int,
    x0_t: Tensor | None,
) -> Tensor:
    """One UniP (``x0_t`` None) or UniC (``x0_t`` = x̂₀ at the target) step with B(h) = e^h − 1
    from node ``s`` (ᾱ ``a_s``, x̂₀ ``hist[-1]``) to node ``t``; ``hist[-2]`` is the node before.
    """
    lam_s, m0 = hist[-1]
    h = lam_t - lam_s
    hh = -h  # data prediction
    h_phi_1 = math.expm1(hh)
    b_h = h_phi_1
    rks: list[float] = []
    d1s: list[Tensor] = []
    if order == 2:
        lam_p, m_p = hist[-2]
        rk = (lam_p - lam_s) / h
        rks.append(rk)
        d1s.append((m_p - m0) / rk)
    rks.append(1.0)
    # b_k = φ_{k+1}(hh) k! / B(h), φ from h_phi_k = φ_1/hh − 1 and φ_{k+1} = φ_k/hh − 1/(k+1)!
    h_phi_k = h_phi_1 / hh - 1
    fact = 1
    b: list[float] = []
    for k in range(1, order + 1):
        b.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    a_sq, s_s, s_t = math.sqrt(a_t), math.sqrt(1.0 - a_s), math.sqrt(1.0 - a_t)
    base = (s_t / s_s) * x - a_sq * h_phi_1 * m0
    if x0_t is None:  # predictor UniP: ρ = 1/2 for order 2
        if not d1s:
            return base
        return base - a_sq * b_h * (0.5 * d1s[0])
    # corrector UniC: solve R ρ = b with R[k, j] = r_j^k (r = (r_1, ..., 1))
    if order == 1:
        rhos = [0.5]
    else:
        rk = rks[0]
        # [[1, 1], [rk, 1]] @ [ρ0, ρ1] = [b0, b1]
        rho0 = (b[0] - b[1]) / (1 - rk)
        rhos = [rho0, b[0] - rho0]
    corr = rhos[-1] * (x0_t - m0)
    if d1s:
        corr = corr + rhos[0] * d1s[0]
    return base - a_sq * b_h * corr


class Sampler(Protocol):
    def __call__(
        self,
        denoiser: Denoiser,
        x: Tensor,
        timesteps: Tensor,
        alphas_cumprod: Tensor,
        *,
        cond: Mapping[str, Tensor],
        uncond: Mapping[str, Tensor] | None = ...,
        guidance: float = ...,
        guidance_interval: tuple[float, float] = ...,
        parameterization: Parameterization = ...,
        final_alpha: float | None = ...,
        callback: StepCallback | None = ...,
    ) -> Tensor: ...


def sample(
    name: str,
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    alphas_cumprod: Tensor,
    *,
    cond: Mapping[str, Tensor],
    uncond: Mapping[str, Tensor] | None = None,
    guidance: float = 1.0,
    guidance_interval: tuple[float, float] = FULL_INTERVAL,
    eta: float = 0.0,
    parameterization: Parameterization = "v",
    generator: Generators = None,
    final_alpha: float | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Dispatch to the sampler ``name`` (one of :data:`SAMPLER_NAMES`); ``eta`` and
    ``generator`` only apply to DDIM (the others solve the deterministic ODE).
    """
    if name == "ddim":
        return sample_ddim(
            denoiser,
            x,
            timesteps,
            alphas_cumprod,
            cond=cond,
            uncond=uncond,
            guidance=guidance,
            guidance_interval=guidance_interval,
            eta=eta,
            parameterization=parameterization,
            generator=generator,
            final_alpha=final_alpha,
            callback=callback,
        )
    solvers: dict[str, Sampler] = {"dpmpp-2m": sample_dpmpp_2m, "unipc": sample_unipc}
    if name not in solvers:
        raise EngineError(f"sampler must be one of {', '.join(SAMPLER_NAMES)}, got {name!r}")
    if eta > 0:
        raise EngineError(f"eta > 0 is only supported by the ddim sampler, not {name!r}")
    return solvers[name](
        denoiser,
        x,
        timesteps,
        alphas_cumprod,
        cond=cond,
        uncond=uncond,
        guidance=guidance,
        guidance_interval=guidance_interval,
        parameterization=parameterization,
        final_alpha=final_alpha,
        callback=callback,
    )

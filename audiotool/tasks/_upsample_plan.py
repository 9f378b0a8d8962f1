"""Settings shared by the in-memory and the streamed upsample paths
(:mod:`audiotool.tasks.upsample`, :mod:`audiotool.tasks.upsample_stream`)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from audiotool.errors import EngineError, UsageError
from audiotool.progress import Progress

if TYPE_CHECKING:
    from audiotool.engine.diffusion import SamplingSettings
    from audiotool.models.latent_diffusion import LatentDiffusionConfig
    from audiotool.tasks.upsample import UpsampleOptions

#: the global encoder sees at most this many mel frames (longer files are averaged in time)
MAX_CONTEXT_FRAMES = 60_000
#: a cutoff this close to 24 kHz means there is nothing to generate
FULL_BAND_FRACTION = 0.97
#: mel frames mirrored onto each file edge before vocoding (cropped afterwards)
EDGE_FRAMES = 8


@dataclasses.dataclass(frozen=True)
class SamplingPlan:
    """The resolved sampler settings of a run (options, else the model's defaults)."""

    sampler: str
    steps: int
    guidance: float
    guidance_interval: tuple[float, float]
    eta: float
    acp: Tensor  # (num_train_steps,) float64 alphas_cumprod
    timesteps: Tensor
    chunk_s: float
    overlap_s: float

    def settings(
        self, *, uncond_latent: float, parameterization: Literal["v", "eps"]
    ) -> SamplingSettings:
        """The :class:`~audiotool.engine.diffusion.SamplingSettings` of this plan for a model
        whose unconditional ``concat`` value is ``uncond_latent``
        (:attr:`~audiotool.models.latent_diffusion.LatentDiffusion.uncond_value`) and which
        predicts ``parameterization``."""
        from audiotool.engine.diffusion import SamplingSettings

        return SamplingSettings(
            timesteps=self.timesteps,
            alphas_cumprod=self.acp,
            sampler=self.sampler,
            guidance=self.guidance,
            guidance_interval=self.guidance_interval,
            eta=self.eta,
            parameterization=parameterization,
            uncond_latent=uncond_latent,
        )


def sampling_plan(config: LatentDiffusionConfig, options: UpsampleOptions) -> SamplingPlan:
    """Resolve ``options`` against ``config`` (the same for in-memory and streamed runs).

    Raises:
        UsageError: ``--eta`` with an ODE sampler, a guidance interval outside [0, 1], or an
            overlap not below the chunk.
    """
    from audiotool.engine.samplers import check_interval
    from audiotool.engine.schedules import cosine_alphas_cumprod, sampler_timesteps

    sampler = options.sampler or config.default_sampler
    steps = options.steps or config.default_steps
    guidance = config.default_guidance if options.guidance is None else options.guidance
    try:
        lo, hi = check_interval(options.guidance_interval or config.default_guidance_interval)
    except EngineError as exc:
        raise UsageError(f"--guidance-interval: {exc}") from None
    eta = config.default_eta if options.eta is None else options.eta
    if sampler != "ddim":
        if options.eta:
            raise UsageError(f"--eta applies to the ddim sampler only, not {sampler!r}")
        eta = 0.0  # the ODE solvers are deterministic
    acp = cosine_alphas_cumprod(config.num_train_steps, config.cosine_s, dtype=torch.float64)
    timesteps = sampler_timesteps(sampler, steps, acp, spacing=options.spacing)
    chunk_s, overlap_s = chunk_settings(config, options)
    return SamplingPlan(sampler, steps, guidance, (lo, hi), eta, acp, timesteps, chunk_s, overlap_s)


def chunk_settings(config: LatentDiffusionConfig, options: UpsampleOptions) -> tuple[float, float]:
    """``(chunk, overlap)`` in seconds from the options or the model's defaults.

    Raises:
        UsageError: an overlap not below the chunk.
    """
    chunk_s = options.chunk_seconds or config.chunk_seconds
    overlap_s = (
        config.overlap_seconds if options.overlap_seconds is None else options.overlap_seconds
    )
    if overlap_s >= chunk_s:
        raise UsageError(
            f"--overlap-seconds ({overlap_s}) must be below --chunk-seconds ({chunk_s})"
        )
    return chunk_s, overlap_s


class StepBar:
    """Progress of the sampler steps within the current mini-batch."""

    def __init__(self, progress: Progress, steps: int) -> None:
        self.progress, self.steps, self.started = progress, steps, False

    def __call__(self, i: int, n: int) -> None:
        if not self.started or i == 1:
            self.progress.start("steps", n)
            self.started = True
        self.progress.update("steps", i, n)

"""Per-stem augmentations that break the identity of a sound source (for separation training).

Each function maps a stereo stem ``(2, T)`` to a new ``(2, T)`` and draws its randomness from an
explicit ``torch.Generator``. The mixture is built afterwards as the sum of the augmented stems,
so it stays an exact sum. :func:`augment_stem` chains them with per-effect probabilities.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from audiotool.errors import ConfigError


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=gen))


def tilt_eq(x: Tensor, slope_db_per_octave: float, *, pivot_hz: float, sample_rate: int) -> Tensor:
    """Spectral tilt: gain ``slope * log2(f / pivot)`` dB at frequency ``f`` (clamped to
    +-18 dB), applied in the frequency domain of the whole signal. ``x``: ``(..., T)``."""
    n = x.shape[-1]
    spec = torch.fft.rfft(x, dim=-1)
    freqs = torch.fft.rfftfreq(n, 1.0 / sample_rate).clamp_min(20.0)
    gain_db = (slope_db_per_octave * torch.log2(freqs / pivot_hz)).clamp(-18.0, 18.0)
    gain = torch.pow(10.0, gain_db / 20.0).to(spec.dtype)
    return torch.fft.irfft(spec * gain, n=n, dim=-1).to(x.dtype)


def change_speed(x: Tensor, factor: float) -> Tensor:
    """Play ``x`` ``factor`` times faster (pitch and tempo together, as a tape would) by linear
    interpolation; the output keeps the input's length (cropped, or zero-padded at the end).
    ``x``: ``(C, T)``."""
    if factor <= 0:
        raise ConfigError(f"speed factor must be positive, got {factor}")
    n = x.shape[-1]
    new_len = max(2, int(round(n / factor)))
    y = F.interpolate(x[None], size=new_len, mode="linear", align_corners=False)[0]
    if new_len >= n:
        return y[..., :n]
    return F.pad(y, (0, n - new_len))


def synthetic_ir(
    gen: torch.Generator, *, rt60: float, sample_rate: int, channels: int = 2
) -> Tensor:
    """A room-like impulse response: independent Gaussian noise per channel under an
    exponential decay reaching -60 dB at ``rt60`` seconds, a unit direct path first.
    Returns ``(channels, L)``."""
    length = max(2, int(rt60 * sample_rate))
    t = torch.arange(length, dtype=torch.float32) / sample_rate
    decay = torch.exp(-6.9078 * t / rt60)  # ln(1000) = 6.9078: -60 dB at rt60
    noise = torch.randn(channels, length, generator=gen) * decay
    noise[:, 0] = 0.0
    noise = noise / noise.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    ir = noise
    ir[:, 0] = 1.0
    return ir


def add_reverb(x: Tensor, ir: Tensor, *, wet: float) -> Tensor:
    """``(1 - wet) * x + wet * (x * ir)`` (FFT convolution, cropped to ``x``'s length), the
    wet part scaled to the dry part's energy. ``x``: ``(C, T)``, ``ir``: ``(C, L)``."""
    n = x.shape[-1]
    size = n + ir.shape[-1] - 1
    fft_n = 1 << (size - 1).bit_length()
    y = torch.fft.irfft(torch.fft.rfft(x, fft_n) * torch.fft.rfft(ir, fft_n), fft_n)[..., :n]
    scale = x.norm() / y.norm().clamp_min(1e-8)
    return (1.0 - wet) * x + wet * y * scale


def stereo_width(x: Tensor, width: float) -> Tensor:
    """Scale the side signal by ``width`` (0 = mono, 1 = unchanged, >1 = wider); the mid is
    kept. ``x``: ``(2, T)``."""
    mid = 0.5 * (x[0] + x[1])
    side = 0.5 * (x[0] - x[1]) * width
    return torch.stack([mid + side, mid - side])


@dataclasses.dataclass(frozen=True)
class StemAugment:
    """Probabilities and ranges of :func:`augment_stem` (the defaults used for training).

    Attributes:
        gain_db: uniform range of the stem gain.
        p_tilt, tilt_db: probability and range (dB per octave, around 1 kHz) of the EQ tilt.
        p_speed, speed: probability and range of the speed factor (pitch + tempo).
        p_reverb, rt60, wet: probability, RT60 range (s) and wet range of the reverb.
        p_width, width: probability and range of the stereo width.
        p_swap: probability of swapping left and right.
    """

    gain_db: tuple[float, float] = (-9.0, 3.0)
    p_tilt: float = 0.5
    tilt_db: tuple[float, float] = (-3.0, 3.0)
    p_speed: float = 0.3
    speed: tuple[float, float] = (0.9, 1.1)
    p_reverb: float = 0.3
    rt60: tuple[float, float] = (0.2, 1.0)
    wet: tuple[float, float] = (0.1, 0.4)
    p_width: float = 0.5
    width: tuple[float, float] = (0.0, 1.5)
    p_swap: float = 0.5

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> StemAugment:
        """From a recipe's ``data.extra.augment`` mapping (unknown keys are an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(
                f"unknown augment keys {unknown}", hint=f"known keys: {sorted(names)}"
            )
        kwargs: dict[str, object] = {
            k: tuple(float(x) for x in v) if isinstance(v, list | tuple) else float(v)  # type: ignore[arg-type]
            for k, v in values.items()
        }
        return cls(**kwargs)  # type: ignore[arg-type]


def augment_stem(
    x: Tensor, gen: torch.Generator, *, sample_rate: int, config: StemAugment
) -> Tensor:
    """One random chain of :class:`StemAugment`'s effects on a stem ``(2, T)``; the output has
    the same shape. Order: speed, tilt, reverb, width, swap, gain."""
    if float(torch.rand(1, generator=gen)) < config.p_speed:
        x = change_speed(x, _uniform(gen, *config.speed))
    if float(torch.rand(1, generator=gen)) < config.p_tilt:
        x = tilt_eq(x, _uniform(gen, *config.tilt_db), pivot_hz=1000.0, sample_rate=sample_rate)
    if float(torch.rand(1, generator=gen)) < config.p_reverb:
        ir = synthetic_ir(gen, rt60=_uniform(gen, *config.rt60), sample_rate=sample_rate)
        x = add_reverb(x, ir, wet=_uniform(gen, *config.wet))
    if x.shape[0] == 2 and float(torch.rand(1, generator=gen)) < config.p_width:
        x = stereo_width(x, _uniform(gen, *config.width))
    if x.shape[0] == 2 and float(torch.rand(1, generator=gen)) < config.p_swap:
        x = x.flip(0)
    return x * math.pow(10.0, _uniform(gen, *config.gain_db) / 20.0)

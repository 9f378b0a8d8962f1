"""Quality metrics, following the conventions the field reports (``shared/reference/``
``upsample_anchors.md`` section 4, ``separation_anchors.md`` section 5).

All take ``(C, T)`` or ``(T,)`` tensors, accumulate in float64, and return Python floats
(mean over channels). Higher is better for SDR-type metrics, lower for distances.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from audiotool.errors import UsageError
from audiotool.features import log_mel_power
from audiotool.losses import multi_resolution_stft_loss


def _pair(ref: Tensor, est: Tensor) -> tuple[Tensor, Tensor]:
    """Both as float64 ``(C, T)`` on the CPU (numpy arrays accepted), cut to the shorter length
    (evaluators pad or crop estimates to the reference's length before calling)."""
    ref = torch.as_tensor(ref).detach().double().cpu()
    est = torch.as_tensor(est).detach().double().cpu()
    if ref.dim() == 1:
        ref = ref[None]
    if est.dim() == 1:
        est = est[None]
    n = min(ref.shape[-1], est.shape[-1])
    if ref.shape[0] != est.shape[0]:
        raise UsageError(f"channel counts differ: {ref.shape[0]} vs {est.shape[0]}")
    return ref[..., :n], est[..., :n]


def _log_power_spec(x: Tensor, n_fft: int, hop: int) -> Tensor:
    win = torch.hann_window(n_fft, dtype=torch.float64)
    spec = torch.stft(x, n_fft, hop, window=win, center=True, return_complex=True)
    return torch.log10(spec.abs().pow(2).clamp(min=1e-8))  # (C, F, N)


def lsd(
    ref: Tensor,
    est: Tensor,
    *,
    sample_rate: int = 48000,
    n_fft: int = 2048,
    hop: int = 512,
    input_rate: int | None = None,
    band: str = "full",
) -> float:
    """Log-spectral distance (NU-Wave 2 / AERO convention).

    ``mean_frames sqrt(mean_bins (log10 |S|^2 - log10 |Ŝ|^2)^2)``, STFT ``n_fft``/``hop`` Hann,
    power clamped at 1e-8, averaged over channels. ``band``: ``"full"``, ``"hf"`` (bins at or
    above ``int((n_fft/2+1) * input_rate / sample_rate)``, i.e. above the input's Nyquist) or
    ``"lf"`` (the bins below).
    """
    if band not in ("full", "hf", "lf"):
        raise UsageError(f"lsd band must be 'full', 'hf' or 'lf', got {band!r}")
    r, e = _pair(ref, est)
    if r.shape[-1] <= n_fft // 2:
        raise UsageError(f"signals of {r.shape[-1]} samples are too short for LSD (n_fft {n_fft})")
    sr, se = _log_power_spec(r, n_fft, hop), _log_power_spec(e, n_fft, hop)
    bins = sr.shape[1]
    if band != "full":
        if input_rate is None:
            raise UsageError("lsd band 'hf'/'lf' needs input_rate")
        split = int(bins * input_rate / sample_rate)
        sl = slice(split, bins) if band == "hf" else slice(0, split)
        sr, se = sr[:, sl], se[:, sl]
        if sr.shape[1] == 0:
            return 0.0
    per_frame = (sr - se).pow(2).mean(dim=1).sqrt()  # (C, N)
    return float(per_frame.mean())


def high_band_energy_ratio(
    ref: Tensor,
    est: Tensor,
    *,
    sample_rate: int = 48000,
    input_rate: int,
    n_fft: int = 2048,
    hop: int = 512,
) -> float:
    """Energy of ``est`` over that of ``ref`` above ``input_rate / 2``, in dB (all channels).

    The level check of bandwidth extension: 0 dB = the generated band is as loud as the true
    one, > 0 louder. ``-inf`` when ``est`` has nothing there, ``nan`` when ``ref`` has nothing.
    """
    r, e = _pair(ref, est)
    win = torch.hann_window(n_fft, dtype=torch.float64)
    spec = lambda x: torch.stft(x, n_fft, hop, window=win, return_complex=True)  # noqa: E731
    sr, se = spec(r), spec(e)
    split = int(math.ceil(input_rate / 2 * n_fft / sample_rate))
    num = float(se[:, split:].abs().pow(2).sum())
    den = float(sr[:, split:].abs().pow(2).sum())
    if den <= 0:
        return float("nan")
    return 10 * math.log10(num / den) if num > 0 else float("-inf")


def si_sdr(ref: Tensor, est: Tensor, eps: float = 1e-12) -> float:
    """Scale-invariant SDR in dB (Le Roux et al. 2019), zero-mean, per channel then averaged.

    ``eps`` guards divisions; a silent reference gives -inf, a perfect estimate +inf (capped
    at 200 dB so results stay finite).
    """
    r, e = _pair(ref, est)
    r = r - r.mean(-1, keepdim=True)
    e = e - e.mean(-1, keepdim=True)
    alpha = (e * r).sum(-1, keepdim=True) / (r.pow(2).sum(-1, keepdim=True) + eps)
    target = alpha * r
    noise = e - target
    ratio = target.pow(2).sum(-1) / (noise.pow(2).sum(-1) + eps)
    vals = [min(200.0, 10 * math.log10(float(v))) if float(v) > 0 else float("-inf") for v in ratio]
    return sum(vals) / len(vals)


class StreamingSiSdr:
    """:func:`si_sdr` of a pair of long signals given block by block (float64 running sums of
    ``r``, ``e``, ``r^2``, ``e^2``, ``r e`` per channel; the means are removed at the end)."""

    def __init__(self, eps: float = 1e-12) -> None:
        self.eps = eps
        self.sums: Tensor | None = None  # (5, C)
        self.n = 0

    def update(self, ref: Tensor, est: Tensor) -> None:
        """Add the next blocks ``(C, n)`` of the reference and the estimate."""
        r, e = _pair(ref, est)
        part = torch.stack(
            [r.sum(-1), e.sum(-1), r.pow(2).sum(-1), e.pow(2).sum(-1), (r * e).sum(-1)]
        )
        self.sums = part if self.sums is None else self.sums + part
        self.n += int(r.shape[-1])

    def value(self) -> float:
        if self.sums is None or self.n == 0:
            return float("nan")
        sr, se, srr, see, sre = self.sums
        n = self.n
        rr = srr - sr * sr / n
        ee = see - se * se / n
        re = sre - sr * se / n
        alpha = re / (rr + self.eps)
        target = alpha * alpha * rr
        noise = (ee - 2 * alpha * re + alpha * alpha * rr).clamp(min=0)
        ratio = target / (noise + self.eps)
        vals = [
            min(200.0, 10 * math.log10(float(v))) if float(v) > 0 else float("-inf") for v in ratio
        ]
        return sum(vals) / len(vals)


def usdr(ref: Tensor, est: Tensor, eps: float = 1e-7) -> float:
    """ "Utterance"/whole-signal SDR (MDX'21, SDX'23; demucs' ``new_sdr``):
    ``10 log10((sum s^2 + eps) / (sum (s - ŝ)^2 + eps))`` over the whole signal, channels
    included (eps 1e-7 as demucs)."""
    r, e = _pair(ref, est)
    num = float(r.pow(2).sum()) + eps
    den = float((r - e).pow(2).sum()) + eps
    return 10 * math.log10(num / den)


def csdr(ref: Tensor, est: Tensor, sample_rate: int) -> float:
    """museval's BSS Eval v4 SDR: median over 1 s windows (needs ``pip install
    'audiotool[eval]'``)."""
    try:
        import museval
    except ImportError as exc:
        raise UsageError("cSDR needs museval", hint="pip install 'audiotool[eval]'") from exc
    import numpy as np

    r, e = _pair(ref, est)
    sdr, _, _, _ = museval.evaluate(
        r.T[None].numpy(), e.T[None].numpy(), win=sample_rate, hop=sample_rate
    )
    return float(np.nanmedian(sdr))


def log_mel_distance(ref: Tensor, est: Tensor, *, sample_rate: int = 16000) -> float:
    """Mean absolute difference of log10 mel power spectrograms (:func:`log_mel_power`, in
    float64), averaged over channels — a single-scale, DAC-like mel distance (DAC uses 7
    scales of mel magnitudes)."""
    r, e = _at_least(*_pair(ref, est), n_fft=1024)
    mel_r = log_mel_power(r, sample_rate=sample_rate)
    return float((mel_r - log_mel_power(e, sample_rate=sample_rate)).abs().mean())


def multi_resolution_stft_distance(
    ref: Tensor, est: Tensor, fft_sizes: tuple[int, ...] = (512, 1024, 2048)
) -> float:
    """Spectral convergence + log-magnitude L1 (the two terms of Parallel WaveGAN's
    multi-resolution STFT loss), averaged over FFT sizes 512 / 1024 / 2048 with hop n/4 and a
    full-length Hann window (Parallel WaveGAN uses other hops and windows)."""
    r, e = _at_least(*_pair(ref, est), n_fft=max(fft_sizes))
    return float(multi_resolution_stft_loss(r, e, fft_sizes, norm_floor=1e-12))


def _at_least(ref: Tensor, est: Tensor, *, n_fft: int) -> tuple[Tensor, Tensor]:
    """Zero-pad ``(..., T)`` pairs to ``n_fft`` samples: a centred STFT needs more than
    ``n_fft / 2`` (clips shorter than that are compared on the same zero-padded frame)."""
    if ref.shape[-1] >= n_fft:
        return ref, est
    pad = n_fft - ref.shape[-1]
    return torch.nn.functional.pad(ref, (0, pad)), torch.nn.functional.pad(est, (0, pad))

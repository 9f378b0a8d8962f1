"""Signal processing around bandwidth extension (pure functions on ``(C, T)`` tensors).

- :func:`estimate_cutoff`: the effective bandwidth of a recording.
- :func:`lowpass` / :func:`degrade`: deterministic band-limiting (the simulation of low-rate
  inputs that training and evaluation use).
- :func:`replace_low_band` / :func:`replace_low_mel_bins`: keep the input's own low band in a
  generated signal, with a raised-cosine crossfade across a transition band (AudioSR replaces
  the band with a hard cut; see ``shared/reference/audiosr.md`` "Post-processing").
- :func:`split_bands`: the same split as two parts, with the generated band's level bounded by
  what the input's top octave predicts (:func:`predicted_band_power`), and
  :func:`limit_generated`: a look-ahead gain on the generated band only that keeps the sum
  within full scale.
- ``match_level`` (restore the input's level; AudioSR peak-normalises to 0.5 instead) lives in
  :mod:`audiotool.audio` with the other level helpers and is re-exported here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from audiotool.audio import fit_length
from audiotool.audio import match_level as match_level  # re-export; its home is audio.py
from audiotool.errors import UsageError

CutoffMethod = Literal["cliff", "energy"]


def _as_2d(audio: Tensor) -> Tensor:
    return audio.unsqueeze(0) if audio.dim() == 1 else audio


def long_term_spectrum(
    audio: Tensor, sample_rate: int, *, n_fft: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Welch power spectrum averaged over frames and channels: (freqs Hz, power) numpy arrays.

    Computed frames-block by frames-block in float32 (:func:`audiotool.stream.long_term_spectrum`):
    memory does not grow with the length of ``audio``.
    """
    from audiotool.stream import long_term_spectrum as streamed
    from audiotool.stream import tensor_span

    x = _as_2d(audio).float()
    return streamed(tensor_span(x), int(x.shape[-1]), sample_rate, n_fft=n_fft)


def estimate_cutoff(
    audio: Tensor,
    sample_rate: int,
    *,
    method: CutoffMethod = "cliff",
    energy: float = 0.985,
    drop_db: float = 20.0,
) -> float:
    """Highest frequency (Hz) with real content in ``audio`` ``(C, T)``.

    ``cliff`` (default): in the smoothed long-term spectrum (dB), find the highest frequency
    after which the level falls by ``drop_db`` within 6 % of the Nyquist range and never comes
    back (the signature of a low-pass / low sample rate / lossy codec), then return the -2 dB
    point relative to the passband level just below it. Without such a cliff the content reaches
    Nyquist and ``sample_rate / 2`` is returned. A natural roll-off (speech, a dull mix) is not a
    cliff, so full-band recordings are not mistaken for band-limited ones.

    ``energy``: AudioSR's rule — the frequency below which ``energy`` of the summed STFT
    magnitude lies (underestimates full-band material; kept for comparison).

    Silence returns 0.
    """
    freqs, power = long_term_spectrum(audio, sample_rate)
    return estimate_cutoff_from_spectrum(
        freqs, power, sample_rate, method=method, energy=energy, drop_db=drop_db
    )


def estimate_cutoff_from_spectrum(
    freqs: np.ndarray,
    power: np.ndarray,
    sample_rate: int,
    *,
    method: CutoffMethod = "cliff",
    energy: float = 0.985,
    drop_db: float = 20.0,
) -> float:
    """:func:`estimate_cutoff` of a long-term spectrum ``(K,)`` (from
    :func:`long_term_spectrum`, or :func:`audiotool.stream.long_term_spectrum` of a file read
    in blocks)."""
    nyquist = sample_rate / 2
    if not np.any(power > 0):
        return 0.0
    if method == "energy":
        mag = np.sqrt(power)
        cum = np.cumsum(mag)
        k = int(np.searchsorted(cum, energy * cum[-1]))
        return float(freqs[min(k, len(freqs) - 1)])
    if method != "cliff":
        raise UsageError(f"cutoff method must be 'cliff' or 'energy', got {method!r}")
    level = 10 * np.log10(power + 1e-30)
    n = len(level)
    width = max(1, n // 200)
    padded = np.pad(level, (width // 2, width - 1 - width // 2), mode="edge")
    level = np.convolve(padded, np.ones(width) / width, mode="valid")
    delta = max(2, int(round(0.06 * n)))
    # suffix maximum: the loudest level at or above each bin
    tail_max = np.maximum.accumulate(level[::-1])[::-1]
    candidates = [k for k in range(delta, n - delta) if level[k] - tail_max[k + delta] >= drop_db]
    if not candidates:
        return float(nyquist)
    k0 = max(candidates)
    # walk down the cliff to its knee (slope < 3 dB per 2 % of Nyquist), take the level there
    half = max(1, delta // 2)
    knee = k0
    while knee - half >= 0 and level[knee - half] - level[knee] > 3.0:
        knee -= 1
    ref = float(level[max(0, knee - half)])
    above = np.nonzero(level[knee : k0 + 1] >= ref - 2.0)[0]
    k = knee + int(above.max()) if above.size else knee
    return float(min(freqs[k], nyquist))


def lowpass(
    audio: Tensor,
    sample_rate: int,
    cutoff_hz: float,
    *,
    order: int = 8,
    kind: Literal["cheby1", "butter", "ellip", "bessel"] = "cheby1",
) -> Tensor:
    """Zero-phase IIR low-pass of ``(C, T)``, as a forward-backward filter; deterministic.

    The filter is the bilinear-transform digital filter of an analogue prototype of ``order``:
    Chebyshev-I with 0.1 dB ripple (``cutoff_hz`` is the ripple band's edge), Butterworth
    (-3 dB at ``cutoff_hz``), elliptic 0.1 dB / 60 dB (AudioSR's settings) or Bessel. Running a
    filter forward and backward multiplies the spectrum by ``|H|²``: twice the attenuation in
    dB and no phase shift. That product is applied in the frequency domain (one real FFT of the
    signal, odd-reflected at both ends by as many samples as the filter's response lasts, then
    zero-padded so the circular convolution does not wrap); ``|H|²`` of Butterworth and
    Chebyshev-I is closed-form (:func:`lowpass_power_response`), so the common filters need no
    filter-design library. Equal to scipy's ``sosfiltfilt`` of the same design away from the
    edges (the edge transient differs: scipy pads 27 samples and starts in a steady state).
    A cutoff at or above Nyquist returns the input unchanged.
    """
    x = _as_2d(audio)
    nyquist = sample_rate / 2
    if cutoff_hz >= nyquist * 0.999:
        return x.clone()
    if cutoff_hz <= 0:
        raise UsageError(f"cutoff must be positive, got {cutoff_hz} Hz")
    if kind not in ("cheby1", "butter", "ellip", "bessel"):
        raise UsageError(f"filter kind must be cheby1/butter/ellip/bessel, got {kind!r}")
    length = int(x.shape[-1])
    if length == 0:
        return x.clone()
    wn = cutoff_hz / nyquist
    need = _response_length(kind, order, wn)
    pad = min(length - 1, need)
    data = x.detach().to(torch.float64)
    if pad > 0:
        left = 2 * data[..., :1] - data[..., 1 : pad + 1].flip(-1)
        right = 2 * data[..., -1:] - data[..., -pad - 1 : -1].flip(-1)
        data = torch.cat([left, data, right], dim=-1)
    n_fft = _fast_length(int(data.shape[-1]) + need)
    spec = torch.fft.rfft(data, n=n_fft)
    omega = torch.arange(spec.shape[-1], dtype=torch.float64, device=data.device)
    omega = omega * (2 * math.pi / n_fft)
    spec = spec * lowpass_power_response(omega, wn, order=order, kind=kind)
    y = torch.fft.irfft(spec, n=n_fft)[..., pad : pad + length]
    return y.to(dtype=torch.float32).contiguous()


def lowpass_power_response(
    omega: Tensor,
    wn: float,
    *,
    order: int = 8,
    kind: Literal["cheby1", "butter", "ellip", "bessel"] = "cheby1",
) -> Tensor:
    """``|H(e^{jω})|²`` of :func:`lowpass`'s digital filter at ``omega`` (rad / sample, float64).

    ``wn`` is the cutoff as a fraction of Nyquist. The bilinear transform maps ``e^{jω}`` to the
    analogue frequency ``tan(ω / 2) / tan(π wn / 2)`` of the prototype normalised to a 1 rad/s
    cutoff, where Butterworth has ``1 / (1 + Ω^{2N})`` and Chebyshev-I
    ``1 / (1 + ε² T_N(Ω)²)`` (``T_N`` the Chebyshev polynomial, ``ε² = 10^{0.01} − 1`` for
    0.1 dB ripple). Elliptic and Bessel responses come from scipy's designs (imported only for
    those kinds). Returns a tensor shaped like ``omega``.
    """
    if kind in ("butter", "cheby1"):
        warped = torch.tan(omega.clamp(max=math.pi) / 2) / math.tan(math.pi * wn / 2)
        warped = warped.abs()
        if kind == "butter":
            return 1.0 / (1.0 + warped.pow(2 * order))
        eps2 = 10 ** (_CHEBY_RIPPLE_DB / 10) - 1
        inside = torch.cos(order * torch.acos(warped.clamp(max=1.0)))
        outside = torch.cosh(order * torch.acosh(warped.clamp(min=1.0)))
        cheb = torch.where(warped <= 1.0, inside, outside)
        return 1.0 / (1.0 + eps2 * cheb.pow(2))
    from scipy import signal

    z, p, k = _scipy_zpk(kind, order, wn)
    _, h = signal.freqz_zpk(z, p, k, worN=omega.detach().cpu().numpy())
    return torch.from_numpy(np.abs(h) ** 2).to(omega)


@functools.lru_cache(maxsize=256)
def _scipy_zpk(kind: str, order: int, wn: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Zeros, poles and gain of :func:`lowpass`'s elliptic or Bessel digital filter, designed
    once per ``(kind, order, wn)``; the arrays are read-only (they are shared by every caller)."""
    from scipy import signal  # elliptic / Bessel only: their designs need special functions

    if kind == "ellip":
        z, p, k = signal.ellip(order, _CHEBY_RIPPLE_DB, 60, wn, output="zpk")
    else:
        z, p, k = signal.bessel(order, wn, output="zpk", norm="mag")
    z.setflags(write=False)
    p.setflags(write=False)
    return z, p, k


#: passband ripple of the Chebyshev-I and elliptic low-passes (dB), AudioSR's setting
_CHEBY_RIPPLE_DB = 0.1


@functools.lru_cache(maxsize=256)
def _response_length(kind: str, order: int, wn: float) -> int:
    """Samples after which the forward-backward response of :func:`lowpass`'s filter has
    decayed below ~1e-12 of its peak, from its largest digital pole radius (capped at 2^20).
    Cached: it depends only on the design."""
    if kind in ("butter", "cheby1"):
        k = torch.arange(1, order + 1, dtype=torch.float64)
        theta = math.pi * (2 * k - 1) / (2 * order)
        sigma, omega = 1.0, 1.0  # Butterworth: poles on the unit circle
        if kind == "cheby1":  # on an ellipse
            eps = math.sqrt(10 ** (_CHEBY_RIPPLE_DB / 10) - 1)
            mu = math.asinh(1 / eps) / order
            sigma, omega = math.sinh(mu), math.cosh(mu)
        analog = torch.complex(-sigma * torch.sin(theta), omega * torch.cos(theta))
        analog = analog * 4 * math.tan(math.pi * wn / 2)  # prewarped cutoff, fs = 2
        radius = float(((4 + analog) / (4 - analog)).abs().max())
    else:
        _, poles, _ = _scipy_zpk(kind, order, wn)
        radius = float(np.abs(poles).max())
    if radius >= 1.0:
        return 1 << 20
    # both passes, and a margin for the polynomial factor of repeated / clustered poles
    n = math.log(1e-12) / math.log(radius)
    return int(min(1 << 20, 2 * n + 8 * order))


def _fast_length(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= ``n`` (a length the FFT handles fast)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def degrade(audio: Tensor, sample_rate: int, target_rate: int) -> Tensor:
    """Simulate a recording made at ``target_rate``: resample down, then back to ``sample_rate``.

    Filter: :func:`audiotool.audio.resample`'s Kaiser-windowed sinc (width 64 zero crossings,
    rolloff 0.9476 of the lower Nyquist, β = 14.77; the "kaiser_best" settings), whose stop band
    is below -100 dB above ``target_rate / 2``. The output has the input's length.
    """
    from audiotool.audio import resample

    x = _as_2d(audio)
    if target_rate >= sample_rate:
        return x.clone()
    low = resample(x, sample_rate, target_rate)
    back = resample(low, target_rate, sample_rate)
    return fit_length(back, x.shape[-1])


def _crossfade_mask(freqs: Tensor, cutoff_hz: float, transition_hz: float) -> Tensor:
    """1 below ``cutoff - transition``, raised-cosine down to 0 at ``cutoff``."""
    lo = cutoff_hz - transition_hz
    if transition_hz <= 0:
        return (freqs < cutoff_hz).float()
    pos = ((freqs - lo) / transition_hz).clamp(0, 1)
    return 0.5 * (1 + torch.cos(math.pi * pos))


def replace_low_band(
    generated: Tensor,
    reference: Tensor,
    sample_rate: int,
    cutoff_hz: float,
    *,
    transition_hz: float | None = None,
    n_fft: int = 2048,
    hop: int = 512,
    match_energy: bool = True,
    bound_level: bool = False,
) -> Tensor:
    """Keep ``reference``'s spectrum below the cutoff and ``generated``'s above it.

    The sum of the two parts of :func:`split_bands` (see there); ``(C, T)`` in and out.
    """
    kept, gen = split_bands(
        generated,
        reference,
        sample_rate,
        cutoff_hz,
        transition_hz=transition_hz,
        n_fft=n_fft,
        hop=hop,
        match_energy=match_energy,
        bound_level=bound_level,
    )
    return kept + gen


def default_transition_hz(cutoff_hz: float) -> float:
    """:func:`split_bands`' crossfade width when none is given: 10 % of the cutoff, at most
    1 kHz (the kept band is whole below ``cutoff_hz - default_transition_hz(cutoff_hz)``)."""
    return min(0.1 * cutoff_hz, 1000.0)


def split_bands(
    generated: Tensor,
    reference: Tensor,
    sample_rate: int,
    cutoff_hz: float,
    *,
    transition_hz: float | None = None,
    n_fft: int = 2048,
    hop: int = 512,
    match_energy: bool = True,
    bound_level: bool = True,
    stats: BandStats | None = None,
) -> tuple[Tensor, Tensor]:
    """The kept band of ``reference`` and the generated band of ``generated``, ``(C, T)`` each.

    Both inputs are ``(C, T)`` at ``sample_rate`` (``generated`` is cropped / padded to
    ``reference``'s length). In the STFT domain (Hann ``n_fft`` / ``hop``) the kept part is
    ``m·R`` and the generated part ``(1 - m)·g·b·G``, where ``m`` is 1 below
    ``cutoff - transition``, a raised cosine across the transition band and 0 above the cutoff;
    ``g`` (when ``match_energy``) scales the generated band so its magnitude in the transition
    band equals the reference's (clamped to [0.25, 4]; AudioSR does the opposite — rescales the
    input by a ratio taken at the single cutoff bin — which changes the input's level); ``b``
    (when ``bound_level``) is the per-frame ceiling of :func:`predicted_band_power`: the
    generated band is never louder than what the reference's own top octave predicts. The kept
    part equals the reference below the transition band up to STFT round-off.

    ``g`` and the slope of ``b`` are whole-signal statistics; ``stats`` gives them for a window
    of a longer signal (:func:`band_stats`; the result is then exact except within
    ``n_fft / 2 + hop`` samples of the window's edges, unless they are the signal's).
    """
    ref = _as_2d(reference).float()
    gen = _as_2d(generated).float().to(ref.device)
    length = ref.shape[-1]
    gen = fit_length(gen, length)
    nyquist = sample_rate / 2
    if cutoff_hz >= nyquist:
        return ref.clone(), torch.zeros_like(ref)
    if transition_hz is None:
        transition_hz = default_transition_hz(cutoff_hz)
    if length < n_fft:  # too short for a spectral crossfade: a plain zero-phase split
        low = lowpass(ref, sample_rate, cutoff_hz)
        return low, gen - lowpass(gen, sample_rate, cutoff_hz)
    win = torch.hann_window(n_fft, device=ref.device)
    stft = lambda s: torch.stft(s, n_fft, hop, window=win, return_complex=True)  # noqa: E731
    r_spec, g_spec = stft(ref), stft(gen)
    freqs = torch.arange(r_spec.shape[-2], device=ref.device) * sample_rate / n_fft
    mask = _crossfade_mask(freqs, cutoff_hz, transition_hz)[:, None]
    if match_energy and stats is not None:
        g_spec = g_spec * stats.gain.to(g_spec.device)[:, None, None]
    elif match_energy:
        band = (freqs >= cutoff_hz - transition_hz) & (freqs < cutoff_hz)
        if bool(band.any()):
            num = r_spec[:, band].abs().sum(dim=(1, 2))
            den = g_spec[:, band].abs().sum(dim=(1, 2)).clamp(min=1e-12)
            gain = (num / den).clamp(0.25, 4.0)[:, None, None]
            g_spec = g_spec * gain
    g_spec = (1 - mask) * g_spec
    if bound_level:
        long_term = stats.long_term if stats is not None else None
        allowed = predicted_band_power(
            r_spec, freqs, cutoff_hz - transition_hz, long_term=long_term
        )  # (C, K, N)
        weight = (1 - mask).pow(2)
        have = g_spec.abs().pow(2).sum(dim=1)  # (C, N)
        want = (allowed * weight).sum(dim=1)
        g_spec = g_spec * (want / have.clamp(min=1e-20)).clamp(max=1.0).sqrt()[:, None, :]
    istft = lambda s: torch.istft(s, n_fft, hop, window=win, length=length)  # noqa: E731
    return istft(mask * r_spec), istft(g_spec)


@dataclasses.dataclass(frozen=True)
class BandStats:
    """The whole-signal statistics of :func:`split_bands`, for a signal split window by window.

    Attributes:
        gain: ``(C,)`` the generated band's level match ``g`` (1 without ``match_energy``).
        long_term: ``(C, K)`` mean power per STFT bin of the reference over all frames.
    """

    gain: Tensor
    long_term: Tensor


def band_stats(
    ref_band_sum: Tensor, gen_band_sum: Tensor, ref_power_sum: Tensor, frames: int
) -> BandStats:
    """:class:`BandStats` from sums over all STFT frames (``n_fft`` / ``hop`` of
    :func:`split_bands`, centred, reflect-padded): of the reference's and the generated
    signal's magnitudes over the transition band ``(C,)`` each, and of the reference's power
    per bin ``(C, K)``."""
    gain = (ref_band_sum / gen_band_sum.clamp(min=1e-12)).clamp(0.25, 4.0).float()
    return BandStats(gain=gain, long_term=ref_power_sum.double() / max(1, frames))


def predicted_band_power(
    spec: Tensor,
    freqs: Tensor,
    top_hz: float,
    *,
    max_slope_db: float = 0.0,
    long_term: Tensor | None = None,
) -> Tensor:
    """Per-frame power the content above ``top_hz`` may have, extrapolated from the octave below.

    ``spec`` ``(C, K, N)`` complex STFT, ``freqs`` ``(K,)`` Hz. The level is each frame's mean
    power in the top half-octave ``[top / sqrt 2, top)`` (the max of the frame and its two
    neighbours, so a transient's onset frame is not starved); the shape is a power law whose
    slope (dB / octave) is fitted to the long-term spectrum of the whole top octave
    ``[top / 2, top)`` per channel and clamped to at most ``max_slope_db`` (a spectrum that rises
    towards the cutoff is extrapolated flat). Returns ``(C, K, N)`` power per bin (0 below
    ``top_hz``). ``long_term`` ``(C, K)``: the mean power per bin over all frames of a longer
    signal ``spec`` is a window of (default: ``spec``'s own).
    """
    power = spec.abs().pow(2).double()  # (C, K, N)
    octave = (freqs >= top_hz / 2) & (freqs < top_hz) & (freqs > 0)
    half = (freqs >= top_hz / math.sqrt(2)) & (freqs < top_hz)
    if int(half.sum()) < 1 or int(octave.sum()) < 2:
        return torch.zeros_like(power, dtype=spec.real.dtype)
    level = power[:, half].mean(dim=1)  # (C, N)
    level = torch.nn.functional.max_pool1d(level[:, None], 3, stride=1, padding=1)[:, 0]
    x = torch.log2(freqs[octave].double())
    mean = power[:, octave].mean(dim=2) if long_term is None else long_term[:, octave].double()
    y = 10 * torch.log10(mean.to(power.device) + 1e-30)  # (C, K_oct)
    xc = x - x.mean()
    slope = ((y - y.mean(dim=1, keepdim=True)) * xc).sum(dim=1) / xc.pow(2).sum()  # dB / oct
    slope = slope.clamp(max=max_slope_db)
    f_ref = top_hz / 2**0.25  # the half-octave's geometric centre
    octaves = torch.log2(freqs.double().clamp(min=1e-9) / f_ref)  # (K,)
    shape = torch.pow(10.0, slope[:, None] * octaves[None] / 10)  # (C, K)
    out = shape[:, :, None] * level[:, None, :]
    out = out * (freqs >= top_hz).double()[None, :, None]
    return out.to(spec.real.dtype)


def limit_generated(
    kept: Tensor,
    generated: Tensor,
    sample_rate: int,
    *,
    ceiling: float = 0.999,
    window_s: float = 0.004,
) -> tuple[Tensor, Tensor]:
    """Scale ``generated`` down where ``kept + generated`` would exceed ``ceiling``.

    ``kept`` / ``generated`` ``(C, T)``. The gain is the largest ``a(t)`` in [0, 1] with
    ``|kept + a·generated| <= ceiling`` at every sample (0 where ``kept`` alone is over), then a
    sliding minimum over ``2W + 1`` samples (look-ahead and hold of ``W = window_s``) smoothed by
    a Hann window of the same length, so it never exceeds the per-sample bound and has no
    clicks; one gain for all channels (the stereo image stays). ``kept`` is never changed.

    Returns ``(kept + a·generated, a)`` with ``a`` of shape ``(T,)``.
    """
    h = generated.double()
    k = kept.double()
    mag = h.abs()
    direction = torch.sign(h)
    bound = ((ceiling - k * direction) / mag.clamp(min=1e-12)).clamp(0.0, 1.0)
    bound = torch.where(mag > 1e-12, bound, torch.ones_like(bound))
    a = bound.amin(dim=0)  # (T,)
    if bool((a >= 1.0).all()):
        return (k + h).to(generated.dtype), torch.ones_like(a, dtype=generated.dtype)
    w = max(1, int(round(window_s * sample_rate)))
    size = 2 * w + 1
    padded = torch.nn.functional.pad(a[None, None], (w, w), value=1.0)
    a = -torch.nn.functional.max_pool1d(-padded, size, stride=1)[0, 0]
    win = torch.hann_window(size + 2, periodic=False, dtype=torch.float64)[1:-1]
    win = win / win.sum()
    # edge values, not 1: every sample the smoothing sees is a minimum over a window holding t
    padded = torch.nn.functional.pad(a[None, None], (w, w), mode="replicate")
    a = torch.nn.functional.conv1d(padded, win[None, None])[0, 0].clamp(0.0, 1.0)
    return (k + a * h).to(generated.dtype), a.to(generated.dtype)


def mel_bin_for_frequency(
    freq_hz: float,
    *,
    n_mels: int,
    sample_rate: int,
    f_min: float = 20.0,
    f_max: float | None = None,
) -> int:
    """Index of the highest Slaney mel band whose centre is at or below ``freq_hz``."""
    from audiotool.features import mel_frequencies

    centres = mel_frequencies(n_mels + 2, f_min, f_max or sample_rate / 2)[1:-1]
    return int(np.searchsorted(centres, freq_hz, side="right"))


def replace_low_mel_bins(
    generated: Tensor, condition: Tensor, cutoff_bin: int, *, transition_bins: int = 4
) -> Tensor:
    """Log-mel ``(..., F)``: ``condition`` below ``cutoff_bin``, ``generated`` above.

    A raised-cosine crossfade over the ``transition_bins`` bins below ``cutoff_bin`` (AudioSR
    copies bins ``[:cutoff]`` with a hard edge).
    """
    n = generated.shape[-1]
    idx = torch.arange(n, device=generated.device, dtype=torch.float32)
    lo = cutoff_bin - transition_bins
    if transition_bins <= 0:
        mask = (idx < cutoff_bin).float()
    else:
        mask = 0.5 * (1 + torch.cos(math.pi * ((idx - lo) / transition_bins).clamp(0, 1)))
    return mask * condition + (1 - mask) * generated

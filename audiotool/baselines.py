"""DSP baselines the models must beat (no learning, deterministic).

- :func:`spectral_band_replication`: bandwidth extension by copying the top octave of the
  existing band upwards, shaped by an extrapolated spectral envelope (the idea of HE-AAC's SBR,
  Dietz et al. 2002, without transmitted side information).
- :func:`hpss_separation`: drums = percussive part of harmonic/percussive separation
  (Fitzgerald 2010, median filtering), bass = harmonic part below 200 Hz, vocals = harmonic
  centre (mid) channel between 200 Hz and 4 kHz, other = the remainder, so the stems sum to the
  mixture.
- :func:`griffin_lim_from_mel`: the representation round-trip baseline: the log-mel of the
  input (80 bands, FFT 1024, hop 160 at 16 kHz: the RAE's target), inverted with the mel
  pseudo-inverse and Griffin-Lim (Griffin & Lim 1984; 32 iterations, momentum 0.99).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from audiotool.audio import fit_length
from audiotool.errors import UsageError

N_FFT, HOP = 2048, 512


def _stft(x: Tensor) -> Tensor:
    return torch.stft(
        x.double(),
        N_FFT,
        HOP,
        window=torch.hann_window(N_FFT, dtype=torch.float64),
        return_complex=True,
    )


def _istft(spec: Tensor, length: int) -> Tensor:
    return torch.istft(
        spec, N_FFT, HOP, window=torch.hann_window(N_FFT, dtype=torch.float64), length=length
    )


def spectral_band_replication(audio: Tensor, sample_rate: int, cutoff_hz: float) -> Tensor:
    """Fill the band above ``cutoff_hz`` of ``audio`` ``(C, T)``.

    Per STFT frame (2048 / 512, Hann): the bins of the octave below the cutoff are copied
    (magnitude and phase) periodically into every bin above it; their level follows a straight
    line in log-magnitude over log-frequency, fitted to that octave and extrapolated (its slope
    clamped to at most -3 dB / octave, so the copy never rises). The output is the input plus
    the generated high band only, so the band below the cutoff is the input, bit for bit up to
    float round-off.
    """
    x = audio.unsqueeze(0) if audio.dim() == 1 else audio
    length = x.shape[-1]
    if length < N_FFT:
        return x.clone()
    spec = _stft(x)  # (C, F, N)
    n_bins = spec.shape[1]
    kc = int(round(cutoff_hz / (sample_rate / 2) * (n_bins - 1)))
    if kc >= n_bins - 1 or kc < 8:
        return x.clone()
    width = kc // 2
    src_lo = kc - width
    freqs = torch.arange(n_bins, dtype=torch.float64) * sample_rate / N_FFT
    logf = torch.log2(freqs.clamp(min=1.0))
    mag = spec.abs().clamp(min=1e-12)
    band = slice(src_lo, kc)
    lf = logf[band]
    lm = torch.log(mag[:, band])  # (C, W, N)
    lf_c = lf - lf.mean()
    slope = ((lm - lm.mean(1, keepdim=True)) * lf_c[None, :, None]).sum(1) / (lf_c**2).sum()
    max_slope = -3.0 / 20 * np.log(10)  # -3 dB per octave, in ln-magnitude per octave
    slope = slope.clamp(max=max_slope)  # (C, N)
    intercept = lm.mean(1) - slope * lf.mean()  # (C, N)
    targets = torch.arange(kc, n_bins)
    sources = src_lo + (targets - kc) % width
    env_target = intercept[:, None, :] + slope[:, None, :] * logf[targets][None, :, None]
    env_source = intercept[:, None, :] + slope[:, None, :] * logf[sources][None, :, None]
    gain = torch.exp(env_target - env_source)  # (C, K, N)
    high = torch.zeros_like(spec)
    high[:, kc:] = spec[:, sources] * gain
    out = x.double() + _istft(high, length)
    return out.to(x.dtype)


STEMS = ("vocals", "drums", "bass", "other")


def _median_filter(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    from scipy.ndimage import median_filter

    shape = [1] * x.ndim
    shape[axis] = size
    return median_filter(x, size=tuple(shape), mode="reflect")


def hpss_separation(
    mixture: Tensor, sample_rate: int, stems: tuple[str, ...] = STEMS
) -> dict[str, Tensor]:
    """The DSP separation baseline for ``mixture`` ``(C, T)`` (see the module docstring)."""
    unknown = [s for s in stems if s not in STEMS]
    if unknown:
        raise UsageError(
            f"the HPSS baseline has no stem(s) {unknown}", hint=f"supported: {list(STEMS)}"
        )
    x = mixture.unsqueeze(0) if mixture.dim() == 1 else mixture
    length = x.shape[-1]
    spec = _stft(x)
    mag = spec.abs().numpy()
    harm = _median_filter(mag, 17, axis=2)  # smooth across time: sustained partials
    perc = _median_filter(mag, 17, axis=1)  # smooth across frequency: transients
    mask_p = torch.from_numpy(perc**2 / (harm**2 + perc**2 + 1e-20))
    drums = _istft(spec * mask_p, length)
    harmonic = _istft(spec * (1 - mask_p), length)
    hspec = _stft(harmonic)
    freqs = torch.arange(hspec.shape[1], dtype=torch.float64) * sample_rate / N_FFT
    bass = _istft(hspec * (freqs < 200)[None, :, None], length)
    mid = hspec.mean(0, keepdim=True).expand_as(hspec)
    vocal_band = ((freqs >= 200) & (freqs < 4000))[None, :, None]
    vocals = _istft(mid * vocal_band, length)
    other = x.double() - drums - bass - vocals
    out = {"vocals": vocals, "drums": drums, "bass": bass, "other": other}
    return {s: out[s].to(x.dtype) for s in stems}


def griffin_lim_from_mel(
    audio: Tensor,
    sample_rate: int = 16000,
    *,
    n_fft: int = 1024,
    hop: int = 160,
    n_mels: int = 80,
    n_iter: int = 32,
) -> Tensor:
    """Griffin-Lim from the true log-mel of ``audio`` ``(C, T)`` -> ``(C, T)`` (see the module
    docstring): what a mel alone keeps, with no learning. Defaults match the RAE's mel."""
    from audiotool.features import AudioSRMel
    from audiotool.models.vocoder import GriffinLimVocoder

    x = audio.unsqueeze(0) if audio.dim() == 1 else audio
    mel = AudioSRMel(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels, f_min=0.0)
    vocoder = GriffinLimVocoder(
        n_fft=n_fft,
        hop_length=hop,
        n_mels=n_mels,
        sample_rate=sample_rate,
        f_min=0.0,
        n_iter=n_iter,
    )
    with torch.no_grad():
        y = vocoder(mel(x.float()).transpose(1, 2))[:, 0]
    return fit_length(y, x.shape[-1]).to(x.dtype)

"""Front-ends and encodings shared by the models and metrics: mel filterbanks, the three
log-mels (AudioSR's, the audio branch's, the metrics' log10 mel power) and sinusoidal
positions.

Legend: ``B`` batch, ``T`` samples, ``N`` frames, ``F`` / ``M`` mel bins, ``D`` channels.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@functools.lru_cache(maxsize=16)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> Tensor:
    from torchaudio.functional import melscale_fbanks

    # always on the CPU: a model built under ``torch.device("meta")`` (shape checks) must not
    # cache a meta tensor, nor fail in melscale_fbanks' data-dependent ops
    with torch.device("cpu"):
        return melscale_fbanks(
            n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate, norm="slaney", mel_scale="slaney"
        ).T.contiguous()


def mel_basis(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> Tensor:
    """Slaney-normalised mel filterbank ``(F, n_fft // 2 + 1)`` on the Slaney mel scale — the
    filters of ``librosa.filters.mel`` (htk=False) to float32 rounding, built by torchaudio
    (librosa's first call costs ~1 s of imports; this one 0.05 s)."""
    return _mel_basis(sample_rate, n_fft, n_mels, float(f_min), float(f_max)).clone()


def hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (linear below 1 kHz, logarithmic above; librosa's htk=False)."""
    hz = np.asarray(hz, dtype=np.float64)
    lin = hz * 3.0 / 200.0
    return np.where(
        hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), lin
    )


def mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hz_to_mel_slaney`."""
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(
        mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * 200.0 / 3.0
    )


def mel_frequencies(n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """``n_mels`` frequencies evenly spaced on the Slaney mel scale from ``f_min`` to ``f_max``
    (``librosa.mel_frequencies(htk=False)``)."""
    lo, hi = hz_to_mel_slaney(np.array(f_min)), hz_to_mel_slaney(np.array(f_max))
    return mel_to_hz_slaney(np.linspace(lo, hi, n_mels))


class AudioSRMel(nn.Module):
    """AudioSR's log-mel (``shared/reference/audiosr.md``, "Audio features").

    Reflect-pad by ``(n_fft - hop) / 2`` each side, STFT (periodic Hann, ``center=False``),
    magnitude, Slaney mel (20 Hz to Nyquist), natural log of ``max(x, 1e-5)``. Defaults are
    AudioSR's: 48 kHz, n_fft 2048, hop 480, 256 mels. ``N = T // hop`` frames.
    """

    window: Tensor
    basis: Tensor

    def __init__(
        self,
        *,
        sample_rate: int = 48000,
        n_fft: int = 2048,
        hop_length: int = 480,
        n_mels: int = 256,
        f_min: float = 20.0,
        f_max: float | None = None,
    ) -> None:
        super().__init__()
        self.sample_rate, self.n_fft, self.hop_length = sample_rate, n_fft, hop_length
        self.n_mels = n_mels
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer(
            "basis",
            mel_basis(sample_rate, n_fft, n_mels, f_min, f_max or sample_rate / 2),
            persistent=False,
        )

    def stft_magnitude(self, wave: Tensor) -> Tensor:
        """``(B, T)`` or ``(B, 1, T)`` -> ``(B, n_fft/2+1, N)``."""
        if wave.dim() == 3:
            wave = wave.squeeze(1)
        pad = (self.n_fft - self.hop_length) // 2
        x = F.pad(wave.unsqueeze(1).float(), (pad, pad), mode="reflect").squeeze(1)
        spec = torch.stft(
            x, self.n_fft, self.hop_length, window=self.window, center=False, return_complex=True
        )
        return spec.abs()

    def from_magnitude(self, magnitude: Tensor) -> Tensor:
        """:meth:`stft_magnitude`'s ``(B, n_fft/2+1, N)`` -> log-mel ``(B, N, F)`` (for callers
        that also need the magnitude, so the STFT runs once)."""
        mel = torch.matmul(self.basis, magnitude)
        return torch.log(mel.clamp(min=1e-5)).transpose(1, 2)

    def forward(self, wave: Tensor) -> Tensor:
        """``(B, T)`` or ``(B, 1, T)`` waveform -> log-mel ``(B, N, F)``."""
        return self.from_magnitude(self.stft_magnitude(wave))

    def frames(self, samples: int) -> int:
        """Number of frames for ``samples`` input samples."""
        return samples // self.hop_length


class LogMel(nn.Module):
    """Waveform ``(B, T)`` -> log-mel ``(B, N, M)`` with ``N = T // hop`` (Hann, center).

    The log has a floor (``log(mel + 1e-6)``). With ``normalize`` every mel bin is scaled to
    zero mean and unit variance over the item's valid frames (per-utterance normalisation, as in
    NeMo's ``normalize: per_feature``); deterministic, and padding frames are ignored.
    """

    window: Tensor
    basis: Tensor

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        n_fft: int = 512,
        win_length: int = 400,
        hop: int = 160,
        n_mels: int = 80,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        self.n_fft, self.win_length, self.hop = n_fft, win_length, hop
        self.normalize = normalize
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        self.register_buffer(
            "basis", mel_basis(sample_rate, n_fft, n_mels, 0.0, sample_rate / 2), persistent=False
        )

    def forward(self, wave: Tensor, frame_lengths: Tensor | None = None) -> Tensor:
        """``(B, T)`` (+ valid mel frame counts ``(B,)``) -> ``(B, N, M)``."""
        n = wave.shape[-1] // self.hop
        x = wave.float()
        if x.shape[-1] <= self.n_fft // 2:  # reflect padding needs a few samples
            x = F.pad(x, (0, self.n_fft // 2 + 1 - x.shape[-1]))
        spec = (
            torch.stft(
                x, self.n_fft, self.hop, self.win_length, window=self.window, return_complex=True
            )
            .abs()
            .pow(2)
        )
        mel = torch.matmul(self.basis, spec)[..., : max(n, 1)]
        out = torch.log(mel + 1e-6).transpose(1, 2)
        if not self.normalize:
            return out
        if frame_lengths is None:
            frame_lengths = torch.full((out.shape[0],), out.shape[1], device=out.device)
        valid = frame_mask(frame_lengths, out.shape[1])[..., None].to(out.dtype)  # (B, N, 1)
        count = valid.sum(1, keepdim=True)
        mean = (out * valid).sum(1, keepdim=True) / count
        var = ((out - mean) ** 2 * valid).sum(1, keepdim=True) / count
        return (out - mean) / (var + 1e-5).sqrt() * valid


def frame_mask(lengths: Tensor, frames: int) -> Tensor:
    """``(B,)`` valid counts -> ``(B, frames)`` bool, True on valid frames."""
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]


def log_mel_power(x: Tensor, *, sample_rate: int = 16000) -> Tensor:
    """log10 mel power spectrogram ``(..., T) -> (..., 80, N)`` (n_fft 1024, hop 256, Hann,
    centred, floor 1e-5), in ``x``'s dtype and device and differentiable: the representation
    :func:`log_mel_distance` compares (training losses use it too)."""
    basis = mel_basis(sample_rate, 1024, 80, 0.0, sample_rate / 2).to(x.device, x.dtype)
    win = torch.hann_window(1024, dtype=x.dtype, device=x.device)
    spec = torch.stft(x, 1024, 256, window=win, return_complex=True).abs().pow(2)
    return torch.log10((basis @ spec).clamp(min=1e-5))


def sinusoidal_positions(
    length: int, dim: int, *, device: torch.device, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``(length, dim)`` sine/cosine positions (Vaswani et al. 2017), built for any length."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freqs = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freqs)
    pe[:, 1::2] = torch.cos(pos * freqs[: dim // 2])
    return pe.to(dtype)

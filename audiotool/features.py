"""Spectral front-ends shared by the models.

Legend: ``B`` batch, ``T`` samples, ``N`` frames, ``F`` mel bins.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@functools.lru_cache(maxsize=16)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    import librosa

    return librosa.filters.mel(
        sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max
    ).astype(np.float32)


def mel_basis(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> Tensor:
    """Slaney-normalised mel filterbank ``(F, n_fft // 2 + 1)`` (librosa, htk=False)."""
    return torch.from_numpy(_mel_basis(sample_rate, n_fft, n_mels, float(f_min), float(f_max)))


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

    def forward(self, wave: Tensor) -> Tensor:
        """``(B, T)`` or ``(B, 1, T)`` waveform -> log-mel ``(B, N, F)``."""
        mel = torch.matmul(self.basis, self.stft_magnitude(wave))
        return torch.log(mel.clamp(min=1e-5)).transpose(1, 2)

    def frames(self, samples: int) -> int:
        """Number of frames for ``samples`` input samples."""
        return samples // self.hop_length

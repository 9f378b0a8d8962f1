"""Training losses shared by the families (the model files keep only their own
combinations: ``rae_loss``, ``codec_loss``, ``separation_loss``).

Legend: ``B`` batch, ``T`` samples.
"""

from __future__ import annotations

import torch
from torch import Tensor


def multi_resolution_stft_loss(
    ref: Tensor,
    est: Tensor,
    fft_sizes: tuple[int, ...] = (512, 1024, 2048),
    *,
    norm_floor: float = 1e-7,
) -> Tensor:
    """Differentiable multi-resolution STFT loss between ``(B, T)`` waveforms: spectral
    convergence + log-magnitude L1, averaged over FFT sizes (hop n/4, Hann) — Yamamoto et al.
    2020 (Parallel WaveGAN), eq. 4-6."""
    total = ref.new_zeros(())
    for n in fft_sizes:
        win = torch.hann_window(n, device=ref.device, dtype=ref.dtype)
        mr = torch.stft(ref, n, n // 4, window=win, return_complex=True).abs()
        me = torch.stft(est, n, n // 4, window=win, return_complex=True).abs()
        sc = torch.linalg.norm(mr - me) / torch.linalg.norm(mr).clamp(min=norm_floor)
        mag = (torch.log(mr.clamp(min=1e-7)) - torch.log(me.clamp(min=1e-7))).abs().mean()
        total = total + sc + mag
    return total / len(fft_sizes)

"""Mel-to-waveform vocoders: HiFi-GAN (V1-style generator, AudioSR layout) and Griffin-Lim.

Legend: ``B`` batch, ``F`` mel bins, ``N`` frames, ``T`` samples.

HiFi-GAN: Kong et al. 2020, "HiFi-GAN: Generative Adversarial Networks for Efficient and High
Fidelity Speech Synthesis", generator with multi-receptive-field fusion (ResBlock1). The layer
names and sizes of :func:`hifigan_audiosr` equal AudioSR's ``first_stage_model.vocoder``
(``shared/reference/audiosr.md``, "Vocoder"); output length ``hop * N + extra`` (480 N + 16).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiotool.errors import ConfigError
from audiotool.features import mel_basis


class ResBlock1(nn.Module):
    """Three dilated convs, each followed by a plain conv, LeakyReLU(0.1), residual."""

    def __init__(self, *, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(
                channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2
            )
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)
            for _ in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            y = c2(F.leaky_relu(c1(F.leaky_relu(x, 0.1)), 0.1))
            x = x + y
        return x


class HiFiGANGenerator(nn.Module):
    """HiFi-GAN generator: log-mel ``(B, F, N)`` -> waveform ``(B, 1, T)``.

    Args:
        n_mels: input mel bins.
        upsample_rates / upsample_kernel_sizes: transposed-conv stages (hop = product of rates).
        upsample_initial_channel: channels after ``conv_pre`` (halved at each stage).
        resblock_kernel_sizes / resblock_dilation_sizes: the multi-receptive-field ResBlocks.
    """

    def __init__(
        self,
        *,
        n_mels: int = 256,
        upsample_rates: tuple[int, ...] = (6, 5, 4, 2, 2),
        upsample_kernel_sizes: tuple[int, ...] = (12, 10, 8, 4, 4),
        upsample_initial_channel: int = 1536,
        resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11, 15),
        resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5),) * 4,
    ) -> None:
        super().__init__()
        if len(upsample_rates) != len(upsample_kernel_sizes):
            raise ConfigError(
                f"upsample_rates {list(upsample_rates)} and upsample_kernel_sizes "
                f"{list(upsample_kernel_sizes)} must have equal length"
            )
        self.num_kernels = len(resblock_kernel_sizes)
        self.conv_pre = nn.Conv1d(n_mels, upsample_initial_channel, 7, padding=3)
        self.ups = nn.ModuleList()
        ch = upsample_initial_channel
        for u, k in zip(upsample_rates, upsample_kernel_sizes, strict=True):
            self.ups.append(nn.ConvTranspose1d(ch, ch // 2, k, u, padding=(k - u) // 2))
            ch //= 2
        self.resblocks = nn.ModuleList()
        ch = upsample_initial_channel
        for _ in upsample_rates:
            ch //= 2
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes, strict=True):
                self.resblocks.append(ResBlock1(channels=ch, kernel_size=k, dilations=tuple(d)))
        self.conv_post = nn.Conv1d(ch, 1, 7, padding=3)
        self.hop_length = math.prod(upsample_rates)

    def forward(self, mel: Tensor) -> Tensor:
        """``(B, F, N)`` log-mel -> ``(B, 1, hop * N + extra)`` in [-1, 1]."""
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, 0.1))
            acc = self.resblocks[i * self.num_kernels](x)
            for j in range(1, self.num_kernels):
                acc = acc + self.resblocks[i * self.num_kernels + j](x)
            x = acc / self.num_kernels
        return torch.tanh(self.conv_post(F.leaky_relu(x)))


def hifigan_audiosr() -> HiFiGANGenerator:
    """AudioSR's vocoder: 256 mels, hop 480, 1536 channels (190.3 M parameters)."""
    return HiFiGANGenerator()


def hifigan_tiny(n_mels: int = 256) -> HiFiGANGenerator:
    """A small HiFi-GAN for CPU use: hop 480, 128 channels, two ResBlock kernels."""
    return HiFiGANGenerator(
        n_mels=n_mels,
        upsample_rates=(6, 5, 4, 2, 2),
        upsample_kernel_sizes=(12, 10, 8, 4, 4),
        upsample_initial_channel=128,
        resblock_kernel_sizes=(3, 7),
        resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)),
    )


class GriffinLimVocoder(nn.Module):
    """Log-mel -> waveform without training: pseudo-inverse mel, then Griffin-Lim.

    The mel magnitude is mapped back to a linear spectrogram with the least-squares inverse of
    the Slaney filterbank (non-negative), then :func:`torchaudio.functional.griffinlim`
    (momentum 0.99, deterministic start: ``rand_init=False``) recovers a phase. The mel is the
    *magnitude* mel (power 1), log base ``e`` (AudioSR) or 10.
    """

    inverse: Tensor
    window: Tensor

    def __init__(
        self,
        *,
        n_fft: int = 2048,
        hop_length: int = 480,
        win_length: int | None = None,
        n_mels: int = 256,
        sample_rate: int = 48000,
        f_min: float = 20.0,
        f_max: float | None = None,
        n_iter: int = 32,
        log_base: str = "e",
    ) -> None:
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.win_length = win_length or n_fft
        self.n_iter = n_iter
        self.log_base = log_base
        basis = mel_basis(sample_rate, n_fft, n_mels, f_min, f_max or sample_rate / 2)
        self.register_buffer("inverse", torch.linalg.pinv(basis), persistent=False)
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)

    def forward(self, mel: Tensor) -> Tensor:
        """``(B, F, N)`` log-mel -> ``(B, 1, hop * N)``.

        Frame ``k`` of an AudioSR-style mel is centred on sample ``k * hop + hop / 2``; the
        Griffin-Lim signal (frames centred on ``k * hop``) is shifted by half a hop to match.
        """
        import torchaudio.functional as taf

        n = mel.shape[-1]
        mag = torch.exp(mel) if self.log_base == "e" else torch.pow(10.0, mel)
        spec = torch.matmul(self.inverse, mag.float()).clamp(min=0)
        wave = taf.griffinlim(
            spec,
            self.window,
            self.n_fft,
            self.hop_length,
            self.win_length,
            power=1.0,
            n_iter=self.n_iter,
            momentum=0.99,
            length=(n - 1) * self.hop_length,
            rand_init=False,
        )
        shift = self.hop_length // 2
        total = n * self.hop_length
        wave = F.pad(wave, (shift, max(0, total - wave.shape[-1] - shift)))[..., :total]
        return wave.unsqueeze(1)

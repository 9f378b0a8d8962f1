"""First stages of the latent diffusion: the mel VAE (AudioSR's AutoencoderKL) and an identity.

Legend: ``B`` batch, ``T`` mel frames, ``F`` mel bins, ``Z`` latent channels.

AutoencoderKL: Rombach et al. 2022 ("High-Resolution Image Synthesis with Latent Diffusion
Models") KL-regularised autoencoder, as AudioSR configures it (``shared/reference/audiosr.md``,
"VAE"): a mel ``(B, 1, T, F)`` is encoded to a diagonal Gaussian over ``(B, Z, T/8, F/8)``.
Parameter names match AudioSR's ``first_stage_model.*`` so its weights load strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiotool.errors import ConfigError


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GroupNorm-swish-conv x2 with a 1x1 ``nin_shortcut`` when channels change."""

    def __init__(self, *, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if self.nin_shortcut is not None else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 q/k/v/proj convs (scale c^-0.5)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).reshape(b, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Zero-pad (0, 1, 0, 1) then a stride-2 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(in_channels=channels, out_channels=channels, dropout=dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(in_channels=channels, out_channels=channels, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution level: ``block`` list plus an optional resampler."""

    downsample: nn.Module
    upsample: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()


class Encoder(nn.Module):
    """``(B, in, T, F)`` -> ``(B, 2Z, T/2^(L-1), F/2^(L-1))`` (mean and log-variance)."""

    def __init__(
        self,
        *,
        in_channels: int,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        z_channels: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        prev = ch
        for i, mult in enumerate(ch_mult):
            level = _Level()
            for _ in range(num_res_blocks):
                level.block.append(
                    ResnetBlock(in_channels=prev, out_channels=ch * mult, dropout=dropout)
                )
                prev = ch * mult
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(prev)
            self.down.append(level)
        self.mid = _Mid(prev, dropout)
        self.norm_out = _norm(prev)
        self.conv_out = nn.Conv2d(prev, 2 * z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        level: _Level
        for level in self.down:  # type: ignore[assignment]
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """``(B, Z, T', F')`` -> ``(B, out, T' 2^(L-1), F' 2^(L-1))``."""

    def __init__(
        self,
        *,
        out_channels: int,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        z_channels: int,
        dropout: float,
    ) -> None:
        super().__init__()
        top = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, top, 3, padding=1)
        self.mid = _Mid(top, dropout)
        levels: list[_Level] = []
        prev = top
        for i in reversed(range(len(ch_mult))):
            level = _Level()
            for _ in range(num_res_blocks + 1):
                level.block.append(
                    ResnetBlock(in_channels=prev, out_channels=ch * ch_mult[i], dropout=dropout)
                )
                prev = ch * ch_mult[i]
            if i != 0:
                level.upsample = Upsample(prev)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(prev)
        self.conv_out = nn.Conv2d(prev, out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        level: _Level
        for level in reversed(self.up):  # type: ignore[assignment]
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class DiagonalGaussian:
    """Posterior ``N(mean, exp(logvar))`` over latents; logvar clamped to [-30, 20]."""

    def __init__(self, moments: Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL to N(0, I), summed over latent dims, ``(B,)``."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1 - self.logvar).sum(dim=(1, 2, 3))


class AutoencoderKL(nn.Module):
    """AudioSR's mel VAE (optionally holding the vocoder, as AudioSR's first stage does)."""

    decoder: Decoder
    post_quant_conv: nn.Conv2d
    vocoder: nn.Module

    def __init__(
        self,
        *,
        in_channels: int = 1,
        ch: int = 128,
        ch_mult: tuple[int, ...] = (1, 2, 4, 8),
        num_res_blocks: int = 2,
        z_channels: int = 16,
        embed_dim: int = 16,
        dropout: float = 0.0,
        with_decoder: bool = True,
        vocoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(
            in_channels=in_channels,
            ch=ch,
            ch_mult=ch_mult,
            num_res_blocks=num_res_blocks,
            z_channels=z_channels,
            dropout=dropout,
        )
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
        if with_decoder:
            self.decoder = Decoder(
                out_channels=in_channels,
                ch=ch,
                ch_mult=ch_mult,
                num_res_blocks=num_res_blocks,
                z_channels=z_channels,
                dropout=dropout,
            )
            self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        if vocoder is not None:
            self.vocoder = vocoder
        self.embed_dim = embed_dim
        self._factor = 2 ** (len(ch_mult) - 1)

    @property
    def downsample_factor(self) -> int:
        return self._factor

    @property
    def latent_channels(self) -> int:
        return self.embed_dim

    def encode(self, mel: Tensor) -> DiagonalGaussian:
        """``(B, 1, T, F)`` -> posterior over ``(B, Z, T/8, F/8)``."""
        return DiagonalGaussian(self.quant_conv(self.encoder(mel)))

    def decode(self, z: Tensor) -> Tensor:
        """``(B, Z, T/8, F/8)`` -> ``(B, 1, T, F)``."""
        return self.decoder(self.post_quant_conv(z))


class IdentityFirstStage(nn.Module):
    """A parameter-free "first stage": the latent IS the (normalised, pooled) log-mel.

    ``encode``: average-pool ``freq_pool`` mel bins together, then ``(x - shift) / scale``;
    ``decode``: the inverse affine map and linear interpolation back to ``n_mels`` bins. Used by
    the small CPU model, whose generated band is coarse anyway; an untrained first stage cannot
    be mistaken for a trained one because it has no weights.
    """

    def __init__(
        self,
        *,
        n_mels: int = 256,
        freq_pool: int = 4,
        shift: float = -5.0,
        scale: float = 2.5,
        vocoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if n_mels % freq_pool:
            raise ConfigError(f"n_mels ({n_mels}) must be a multiple of freq_pool ({freq_pool})")
        self.n_mels, self.freq_pool = n_mels, freq_pool
        self.shift, self.scale = shift, scale
        if vocoder is not None:
            self.vocoder = vocoder

    downsample_factor = 1
    vocoder: nn.Module

    @property
    def latent_channels(self) -> int:
        return 1

    def encode(self, mel: Tensor) -> DiagonalGaussian:
        """``(B, 1, T, F)`` -> a point mass at ``(B, 1, T, F / freq_pool)``."""
        pooled = F.avg_pool2d(mel, (1, self.freq_pool)) if self.freq_pool > 1 else mel
        mean = (pooled - self.shift) / self.scale
        return DiagonalGaussian(torch.cat([mean, torch.full_like(mean, -30.0)], dim=1))

    def decode(self, z: Tensor) -> Tensor:
        """``(B, 1, T, F / freq_pool)`` -> ``(B, 1, T, F)``."""
        x = z * self.scale + self.shift
        if self.freq_pool > 1:
            x = F.interpolate(
                x, size=(x.shape[2], self.n_mels), mode="bilinear", align_corners=False
            )
        return x

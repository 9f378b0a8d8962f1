"""Hybrid Transformer Demucs (Demucs v4; Rouard, Massa & Défossez 2023, "Hybrid Transformers for
Music Source Separation"), for inference with the published checkpoints.

Legend: ``B`` batch, ``C`` audio channels, ``S`` stems, ``L`` samples of one segment, ``Fr``
frequency rows, ``N`` frames, ``D`` hidden channels.

Two U-Nets share a bottleneck: a spectral branch over the complex STFT (real and imaginary
parts as channels, "CaC") and a waveform branch. Their deepest layers meet in a cross-domain
Transformer (self-attention within a branch alternating with cross-attention between them).
Each branch's output is added: ``istft(spectral) + waveform``. Both inputs are standardised
(mean/std over the whole segment) and the outputs de-standardised.

The module names follow ``demucs.htdemucs.HTDemucs`` 4.1.0 so that its state dicts load
strictly; only the inference path of the published configuration family is kept (CaC, no
Wiener filtering, no band-split ``MultiWrap``, sinusoidal positions, dense attention). A model
always sees ``segment_samples`` samples (its training length); shorter inputs are zero-padded
on the right and the output trimmed back, as demucs does.

:class:`HTDemucsBag` is a bag of such models (demucs' ``BagOfModels``): every member separates
and each stem is the weighted mean of the members' estimates (one weight per member and stem).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiotool.errors import EngineError
from audiotool.models._config import ModelConfig, ModelFamily

STEMS4 = ("drums", "bass", "other", "vocals")


@dataclasses.dataclass(frozen=True)
class HTDemucsConfig(ModelConfig):
    """Config of the ``htdemucs`` family (the constructor arguments of demucs' ``HTDemucs``
    that change inference; training-only ones are not kept).

    ``segment_samples`` is the training segment in samples (``int(segment * samplerate)`` with
    demucs' exact fraction, 343980 for 7.8 s). ``bag_weights`` holds one row of per-stem
    weights per member of a bag; empty for a single model.
    """

    family: ClassVar[str] = "htdemucs"
    task: ClassVar[str] = "separate"

    sample_rate: int = 44100
    stems: tuple[str, ...] = STEMS4
    audio_channels: int = 2
    channels: int = 48
    channels_time: int | None = None
    growth: float = 2.0
    nfft: int = 4096
    depth: int = 4
    rewrite: bool = True
    freq_emb: float = 0.2
    emb_scale: float = 10.0
    kernel_size: int = 8
    time_stride: int = 2
    stride: int = 4
    context: int = 1
    context_enc: int = 0
    norm_starts: int = 4
    norm_groups: int = 4
    dconv_mode: int = 1
    dconv_depth: int = 2
    dconv_comp: float = 8.0
    bottom_channels: int = 0
    t_layers: int = 5
    t_hidden_scale: float = 4.0
    t_heads: int = 8
    t_norm_in: bool = True
    t_norm_first: bool = True
    t_norm_out: bool = True
    t_max_period: float = 10000.0
    t_layer_scale: bool = True
    t_gelu: bool = True
    t_weight_pos_embed: float = 1.0
    t_cross_first: bool = False
    segment_samples: int = 343980
    bag_weights: tuple[tuple[float, ...], ...] = ()
    default_overlap: float = 0.25

    def __post_init__(self) -> None:
        if self.bag_weights and any(len(r) != len(self.stems) for r in self.bag_weights):
            raise ValueError("every row of bag_weights needs one weight per stem")
        for k, stem in enumerate(self.stems):
            if self.bag_weights and sum(r[k] for r in self.bag_weights) <= 0:
                raise ValueError(f"bag_weights give stem '{stem}' no weight")


# --------------------------------------------------------------------------- building blocks


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (Touvron et al. 2021)."""

    def __init__(self, channels: int, *, channel_last: bool) -> None:
        super().__init__()
        self.channel_last = channel_last
        self.scale = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x if self.channel_last else self.scale[:, None] * x


class DConv(nn.Module):
    """Residual stack of dilated convolutions ``(B, D, N) -> (B, D, N)``: per layer,
    conv(k=3, dilation 2^i) -> GroupNorm -> GELU -> 1x1 conv -> GroupNorm -> GLU -> scale."""

    def __init__(self, channels: int, *, compress: float, depth: int) -> None:
        super().__init__()
        hidden = int(channels / compress)
        self.layers = nn.ModuleList()
        for d in range(depth):
            dilation = 2**d
            self.layers.append(
                nn.Sequential(
                    nn.Conv1d(channels, hidden, 3, dilation=dilation, padding=dilation),
                    nn.GroupNorm(1, hidden),
                    nn.GELU(),
                    nn.Conv1d(hidden, 2 * channels, 1),
                    nn.GroupNorm(1, 2 * channels),
                    nn.GLU(1),
                    LayerScale(channels, channel_last=False),
                )
            )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


def _norm(norm: bool, groups: int, channels: int) -> nn.Module:
    return nn.GroupNorm(groups, channels) if norm else nn.Identity()


def _dconv_rows(dconv: DConv, y: Tensor, freq: bool) -> Tensor:
    """Apply ``dconv`` along time, to every frequency row of a ``(B, D, Fr, N)`` input."""
    if not freq:
        return dconv(y)
    b, d, fr, n = y.shape
    out = dconv(y.permute(0, 2, 1, 3).reshape(-1, d, n))
    return out.view(b, fr, d, n).permute(0, 2, 1, 3)


class EncLayer(nn.Module):
    """Encoder layer of either branch: strided conv (+ injected time features) -> norm -> GELU
    -> DConv -> 1x1 "rewrite" conv -> norm -> GLU. Frequency layers convolve along ``Fr``
    (``(B, D, Fr, N)``), time layers along ``T`` (``(B, D, T)``)."""

    def __init__(
        self,
        chin: int,
        chout: int,
        *,
        kernel_size: int,
        stride: int,
        norm_groups: int,
        empty: bool = False,
        freq: bool,
        dconv: bool,
        norm: bool,
        context: int,
        dconv_comp: float,
        dconv_depth: int,
        pad: bool,
        rewrite: bool,
    ) -> None:
        super().__init__()
        self.freq, self.stride, self.empty = freq, stride, empty
        padding = kernel_size // 4 if pad else 0
        if freq:
            self.conv: nn.Module = nn.Conv2d(
                chin, chout, (kernel_size, 1), (stride, 1), (padding, 0)
            )
        else:
            self.conv = nn.Conv1d(chin, chout, kernel_size, stride, padding)
        if empty:
            return
        conv_cls = nn.Conv2d if freq else nn.Conv1d
        self.norm1 = _norm(norm, norm_groups, chout)
        self.rewrite: nn.Module | None = None
        if rewrite:
            self.rewrite = conv_cls(chout, 2 * chout, 1 + 2 * context, 1, context)
            self.norm2 = _norm(norm, norm_groups, 2 * chout)
        self.dconv = DConv(chout, compress=dconv_comp, depth=dconv_depth) if dconv else None

    def forward(self, x: Tensor, inject: Tensor | None = None) -> Tensor:
        if not self.freq:
            if x.dim() == 4:
                x = x.reshape(x.shape[0], -1, x.shape[-1])
            rest = x.shape[-1] % self.stride
            if rest:
                x = F.pad(x, (0, self.stride - rest))
        y = self.conv(x)
        if self.empty:
            return y
        if inject is not None:
            if inject.shape[-1] != y.shape[-1]:  # internal invariant of the branch layout
                raise AssertionError((inject.shape, y.shape))
            y = y + (inject[:, :, None] if inject.dim() == 3 and y.dim() == 4 else inject)
        y = F.gelu(self.norm1(y))
        if self.dconv is not None:
            y = _dconv_rows(self.dconv, y, self.freq)
        if self.rewrite is None:
            return y
        return F.glu(self.norm2(self.rewrite(y)), dim=1)


class DecLayer(nn.Module):
    """Decoder layer: (+ skip) -> rewrite conv -> norm -> GLU -> DConv -> transposed conv ->
    norm (-> GELU unless last). Returns the output and the features before the transposed conv
    (used where the branches split)."""

    def __init__(
        self,
        chin: int,
        chout: int,
        *,
        last: bool,
        kernel_size: int,
        stride: int,
        norm_groups: int,
        empty: bool = False,
        freq: bool,
        dconv: bool,
        norm: bool,
        context: int,
        dconv_comp: float,
        dconv_depth: int,
        pad: bool,
        rewrite: bool,
    ) -> None:
        super().__init__()
        self.pad = kernel_size // 4 if pad else 0
        self.last, self.freq, self.chin, self.empty = last, freq, chin, empty
        if freq:
            self.conv_tr: nn.Module = nn.ConvTranspose2d(chin, chout, (kernel_size, 1), (stride, 1))
        else:
            self.conv_tr = nn.ConvTranspose1d(chin, chout, kernel_size, stride)
        self.norm2 = _norm(norm, norm_groups, chout)
        if empty:
            return
        conv_cls = nn.Conv2d if freq else nn.Conv1d
        self.rewrite: nn.Module | None = None
        if rewrite:
            self.rewrite = conv_cls(chin, 2 * chin, 1 + 2 * context, 1, context)
            self.norm1 = _norm(norm, norm_groups, 2 * chin)
        self.dconv = DConv(chin, compress=dconv_comp, depth=dconv_depth) if dconv else None

    def forward(self, x: Tensor, skip: Tensor | None, length: int) -> tuple[Tensor, Tensor]:
        if self.freq and x.dim() == 3:
            x = x.view(x.shape[0], self.chin, -1, x.shape[-1])
        if self.empty:
            y = x
        else:
            assert skip is not None
            y = x + skip
            if self.rewrite is not None:
                y = F.glu(self.norm1(self.rewrite(y)), dim=1)
            if self.dconv is not None:
                y = _dconv_rows(self.dconv, y, self.freq)
        z = self.norm2(self.conv_tr(y))
        if self.freq:
            if self.pad:
                z = z[..., self.pad : -self.pad, :]
        else:
            z = z[..., self.pad : self.pad + length]
        if not self.last:
            z = F.gelu(z)
        return z, y


class ScaledEmbedding(nn.Module):
    """Frequency embedding with a learning-rate boost: ``embedding(i) * scale``."""

    def __init__(self, num: int, dim: int, *, scale: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num, dim)
        self.scale = scale

    def forward(self, idx: Tensor) -> Tensor:
        return self.embedding(idx) * self.scale


# --------------------------------------------------------------------------- transformer


def sin_embedding(length: int, dim: int, *, max_period: float, device: torch.device) -> Tensor:
    """1-D sinusoidal positions ``(1, length, dim)``: cos then sin halves."""
    pos = torch.arange(length, device=device).view(-1, 1)
    half = dim // 2
    adim = torch.arange(half, device=device).view(1, -1)
    phase = pos / (max_period ** (adim / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)[None]


def sin_embedding_2d(
    dim: int, height: int, width: int, *, max_period: float, device: torch.device
) -> Tensor:
    """2-D sinusoidal positions ``(1, width * height, dim)`` (width-major, as the tokens):
    the first half of the channels encodes the column (time), the second the row (frequency),
    interleaving sin and cos."""
    pe = torch.zeros(dim, height, width)
    half = dim // 2
    div = torch.exp(torch.arange(0.0, half, 2) * -(math.log(max_period) / half))
    pos_w = torch.arange(0.0, width).unsqueeze(1)
    pos_h = torch.arange(0.0, height).unsqueeze(1)
    pe[0:half:2] = torch.sin(pos_w * div).t()[:, None, :].expand(-1, height, -1)
    pe[1:half:2] = torch.cos(pos_w * div).t()[:, None, :].expand(-1, height, -1)
    pe[half::2] = torch.sin(pos_h * div).t()[:, :, None].expand(-1, -1, width)
    pe[half + 1 :: 2] = torch.cos(pos_h * div).t()[:, :, None].expand(-1, -1, width)
    return pe.permute(2, 1, 0).reshape(1, width * height, dim).to(device)


class _TransformerLayer(nn.Module):
    """Pre-norm (or post-norm) attention + feed-forward block on ``(B, N, D)`` tokens; self-
    attention when ``cross`` is False, else attention from ``q`` to the other branch ``k``."""

    def __init__(
        self,
        dim: int,
        heads: int,
        hidden: int,
        *,
        cross: bool,
        norm_first: bool,
        norm_out: bool,
        layer_scale: bool,
        gelu: bool,
    ) -> None:
        super().__init__()
        self.cross, self.norm_first = cross, norm_first
        attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        if cross:
            self.cross_attn = attn
        else:
            self.self_attn = attn
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        if cross:
            self.norm3 = nn.LayerNorm(dim)
        self.norm_out = nn.GroupNorm(1, dim) if norm_first and norm_out else None
        self.gamma_1: nn.Module = (
            LayerScale(dim, channel_last=True) if layer_scale else nn.Identity()
        )
        self.gamma_2: nn.Module = (
            LayerScale(dim, channel_last=True) if layer_scale else nn.Identity()
        )
        self.act = F.gelu if gelu else F.relu

    def _attn(self, q: Tensor, k: Tensor) -> Tensor:
        attn = self.cross_attn if self.cross else self.self_attn
        return attn(q, k, k, need_weights=False)[0]

    def _ff(self, x: Tensor) -> Tensor:
        return self.linear2(self.act(self.linear1(x)))

    def forward(self, q: Tensor, k: Tensor | None = None) -> Tensor:
        if self.norm_first:
            if self.cross:
                assert k is not None
                x = q + self.gamma_1(self._attn(self.norm1(q), self.norm2(k)))
                x = x + self.gamma_2(self._ff(self.norm3(x)))
            else:
                h = self.norm1(q)
                x = q + self.gamma_1(self._attn(h, h))
                x = x + self.gamma_2(self._ff(self.norm2(x)))
            if self.norm_out is not None:
                x = self.norm_out(x.transpose(1, 2)).transpose(1, 2)
            return x
        x = self.norm1(q + self.gamma_1(self._attn(q, q if k is None else k)))
        return self.norm2(x + self.gamma_2(self._ff(x)))


class CrossTransformer(nn.Module):
    """Cross-domain Transformer: ``(B, D, Fr, N)`` spectral and ``(B, D, T')`` waveform
    features; layers alternate self-attention within each branch and cross-attention between
    the branches (Rouard et al. 2023, Fig. 1)."""

    def __init__(self, cfg: HTDemucsConfig, dim: int) -> None:
        super().__init__()
        hidden = int(dim * cfg.t_hidden_scale)
        self.classic_parity = 1 if cfg.t_cross_first else 0
        self.max_period, self.weight_pos = cfg.t_max_period, cfg.t_weight_pos_embed
        self.norm_in: nn.Module = nn.LayerNorm(dim) if cfg.t_norm_in else nn.Identity()
        self.norm_in_t: nn.Module = nn.LayerNorm(dim) if cfg.t_norm_in else nn.Identity()
        self.layers = nn.ModuleList()
        self.layers_t = nn.ModuleList()
        for idx in range(cfg.t_layers):
            for stack in (self.layers, self.layers_t):
                stack.append(
                    _TransformerLayer(
                        dim,
                        cfg.t_heads,
                        hidden,
                        cross=idx % 2 != self.classic_parity,
                        norm_first=cfg.t_norm_first,
                        norm_out=cfg.t_norm_out,
                        layer_scale=cfg.t_layer_scale,
                        gelu=cfg.t_gelu,
                    )
                )

    def forward(self, x: Tensor, xt: Tensor) -> tuple[Tensor, Tensor]:
        b, d, fr, n = x.shape
        pos2 = sin_embedding_2d(d, fr, n, max_period=self.max_period, device=x.device)
        x = x.permute(0, 3, 2, 1).reshape(b, n * fr, d)
        x = self.norm_in(x) + self.weight_pos * pos2
        t2 = xt.shape[-1]
        xt = xt.transpose(1, 2)
        pos1 = sin_embedding(t2, d, max_period=self.max_period, device=x.device)
        xt = self.norm_in_t(xt) + self.weight_pos * pos1
        for layer, layer_t in zip(self.layers, self.layers_t, strict=True):
            if layer.cross:
                x, xt = layer(x, xt), layer_t(xt, x)
            else:
                x, xt = layer(x), layer_t(xt)
        x = x.reshape(b, n, fr, d).permute(0, 3, 2, 1)
        return x, xt.transpose(1, 2)


# --------------------------------------------------------------------------- the model


class HTDemucs(nn.Module):
    """``(B, C, L)`` mixture segment -> ``{stem: (B, C, L)}`` (``L <= segment_samples``)."""

    def __init__(self, cfg: HTDemucsConfig) -> None:
        super().__init__()
        self.sources = tuple(cfg.stems)
        self.audio_channels = cfg.audio_channels
        self.nfft, self.hop = cfg.nfft, cfg.nfft // 4
        self.depth = cfg.depth
        self.segment_samples = cfg.segment_samples
        self.bottom_channels = cfg.bottom_channels
        self.encoder, self.decoder = nn.ModuleList(), nn.ModuleList()
        self.tencoder, self.tdecoder = nn.ModuleList(), nn.ModuleList()
        self.freq_emb: ScaledEmbedding | None = None
        self.freq_emb_scale = cfg.freq_emb
        chin, chin_z = cfg.audio_channels, 2 * cfg.audio_channels
        chout, chout_z = cfg.channels_time or cfg.channels, cfg.channels
        freqs = cfg.nfft // 2
        common = dict(
            norm_groups=cfg.norm_groups,
            rewrite=cfg.rewrite,
            dconv_comp=cfg.dconv_comp,
            dconv_depth=cfg.dconv_depth,
        )
        for index in range(cfg.depth):
            norm = index >= cfg.norm_starts
            freq = freqs > 1
            ker, stri, pad, last_freq = cfg.kernel_size, cfg.stride, True, False
            if not freq:
                ker, stri = cfg.time_stride * 2, cfg.time_stride
            if freq and freqs <= cfg.kernel_size:
                ker, pad, last_freq = freqs, False, True
            if last_freq:
                chout_z = max(chout, chout_z)
                chout = chout_z
            kw = dict(kernel_size=ker, stride=stri, freq=freq, pad=pad, norm=norm, **common)
            kwt = dict(kw, freq=False, kernel_size=cfg.kernel_size, stride=cfg.stride, pad=True)
            enc_dconv, dec_dconv = bool(cfg.dconv_mode & 1), bool(cfg.dconv_mode & 2)
            self.encoder.append(
                EncLayer(chin_z, chout_z, dconv=enc_dconv, context=cfg.context_enc, **kw)  # type: ignore[arg-type]
            )
            if freq:
                self.tencoder.append(
                    EncLayer(
                        chin,
                        chout,
                        dconv=enc_dconv,
                        context=cfg.context_enc,
                        empty=last_freq,
                        **kwt,  # type: ignore[arg-type]
                    )
                )
            if index == 0:
                chin = cfg.audio_channels * len(cfg.stems)
                chin_z = 2 * chin
            self.decoder.insert(
                0,
                DecLayer(
                    chout_z,
                    chin_z,
                    dconv=dec_dconv,
                    last=index == 0,
                    context=cfg.context,
                    **kw,  # type: ignore[arg-type]
                ),
            )
            if freq:
                self.tdecoder.insert(
                    0,
                    DecLayer(
                        chout,
                        chin,
                        dconv=dec_dconv,
                        empty=last_freq,
                        last=index == 0,
                        context=cfg.context,
                        **kwt,  # type: ignore[arg-type]
                    ),
                )
            chin, chin_z = chout, chout_z
            chout, chout_z = int(cfg.growth * chout), int(cfg.growth * chout_z)
            if freq:
                freqs = 1 if freqs <= cfg.kernel_size else freqs // cfg.stride
            if index == 0 and cfg.freq_emb:
                self.freq_emb = ScaledEmbedding(freqs, chin_z, scale=cfg.emb_scale)
        dim = int(cfg.channels * cfg.growth ** (cfg.depth - 1))
        if cfg.bottom_channels:
            b = cfg.bottom_channels
            self.channel_upsampler = nn.Conv1d(dim, b, 1)
            self.channel_downsampler = nn.Conv1d(b, dim, 1)
            self.channel_upsampler_t = nn.Conv1d(dim, b, 1)
            self.channel_downsampler_t = nn.Conv1d(b, dim, 1)
            dim = b
        self.crosstransformer = CrossTransformer(cfg, dim) if cfg.t_layers > 0 else None

    # spectrogram helpers: frames aligned so that N = ceil(L / hop) exactly
    def _spec(self, x: Tensor) -> Tensor:
        """``(B, C, L)`` -> complex ``(B, C, nfft/2, ceil(L/hop))``."""
        hl, length = self.hop, x.shape[-1]
        le = int(math.ceil(length / hl))
        pad = hl // 2 * 3
        x = _reflect_pad(x, pad, pad + le * hl - length)
        *other, t = x.shape
        z = torch.stft(
            x.reshape(-1, t),
            self.nfft,
            hl,
            window=torch.hann_window(self.nfft, device=x.device, dtype=x.dtype),
            win_length=self.nfft,
            normalized=True,
            center=True,
            return_complex=True,
            pad_mode="reflect",
        )
        z = z.view(*other, *z.shape[-2:])[..., :-1, :]
        return z[..., 2 : 2 + le]

    def _ispec(self, z: Tensor, length: int) -> Tensor:
        hl = self.hop
        z = F.pad(z, (0, 0, 0, 1))
        z = F.pad(z, (2, 2))
        pad = hl // 2 * 3
        le = hl * int(math.ceil(length / hl)) + 2 * pad
        *other, fr, n = z.shape
        n_fft = 2 * fr - 2
        x = torch.istft(
            z.reshape(-1, fr, n),
            n_fft,
            hl,
            window=torch.hann_window(n_fft, device=z.device, dtype=z.real.dtype),
            win_length=n_fft,
            normalized=True,
            length=le,
            center=True,
        )
        return x.view(*other, le)[..., pad : pad + length]

    def separate(self, mix: Tensor) -> Tensor:
        """``(B, C, L)`` -> ``(B, S, C, L)``."""
        length = int(mix.shape[-1])
        seg = self.segment_samples
        if length > seg:
            raise EngineError(f"htdemucs takes segments of at most {seg} samples, got {length}")
        if length < seg:
            mix = F.pad(mix, (0, seg - length))
        z = self._spec(mix)
        b, c, fq, n = z.shape
        x = torch.view_as_real(z).permute(0, 1, 4, 2, 3).reshape(b, 2 * c, fq, n)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) / (1e-5 + std)
        meant = mix.mean(dim=(1, 2), keepdim=True)
        stdt = mix.std(dim=(1, 2), keepdim=True)
        xt = (mix - meant) / (1e-5 + stdt)

        saved: list[Tensor] = []
        saved_t: list[Tensor] = []
        lengths: list[int] = []
        lengths_t: list[int] = []
        for idx, encode in enumerate(self.encoder):
            lengths.append(int(x.shape[-1]))
            inject = None
            if idx < len(self.tencoder):
                lengths_t.append(int(xt.shape[-1]))
                tenc = self.tencoder[idx]
                xt = tenc(xt)
                if tenc.empty:
                    inject = xt
                else:
                    saved_t.append(xt)
            x = encode(x, inject)
            if idx == 0 and self.freq_emb is not None:
                frs = torch.arange(x.shape[-2], device=x.device)
                emb = self.freq_emb(frs).t()[None, :, :, None].expand_as(x)
                x = x + self.freq_emb_scale * emb
            saved.append(x)
        if self.crosstransformer is not None:
            if self.bottom_channels:
                bb, cc, f, t = x.shape
                x = self.channel_upsampler(x.reshape(bb, cc, f * t)).view(bb, -1, f, t)
                xt = self.channel_upsampler_t(xt)
            x, xt = self.crosstransformer(x, xt)
            if self.bottom_channels:
                bb, cc, f, t = x.shape
                x = self.channel_downsampler(x.reshape(bb, cc, f * t)).view(bb, -1, f, t)
                xt = self.channel_downsampler_t(xt)
        offset = self.depth - len(self.tdecoder)
        for idx, decode in enumerate(self.decoder):
            x, pre = decode(x, saved.pop(-1), lengths.pop(-1))
            if idx >= offset:
                tdec = self.tdecoder[idx - offset]
                length_t = lengths_t.pop(-1)
                if tdec.empty:
                    xt, _ = tdec(pre[:, :, 0], None, length_t)
                else:
                    xt, _ = tdec(xt, saved_t.pop(-1), length_t)
        s = len(self.sources)
        x = x.view(b, s, -1, fq, n) * std[:, None] + mean[:, None]
        zout = torch.view_as_complex(
            x.view(b, s, -1, 2, fq, n).permute(0, 1, 2, 4, 5, 3).contiguous()
        )
        wave = self._ispec(zout, seg)
        out = xt.view(b, s, -1, seg) * stdt[:, None] + meant[:, None] + wave
        return out[..., :length]

    def forward(self, mix: Tensor) -> dict[str, Tensor]:
        y = self.separate(mix)
        return {name: y[:, i] for i, name in enumerate(self.sources)}


def _reflect_pad(x: Tensor, left: int, right: int) -> Tensor:
    """Reflect padding that also works when the input is shorter than the padding (zeros are
    added on the right first, as demucs' ``pad1d`` does)."""
    length = x.shape[-1]
    most = max(left, right)
    if length <= most:
        extra = most - length + 1
        extra_right = min(right, extra)
        extra_left = extra - extra_right
        left, right = left - extra_left, right - extra_right
        x = F.pad(x, (extra_left, extra_right))
    return F.pad(x, (left, right), mode="reflect")


class HTDemucsBag(nn.Module):
    """Bag of :class:`HTDemucs` of one architecture: ``(B, C, L)`` -> ``{stem: (B, C, L)}``,
    stem ``s`` = ``sum_k w[k][s] y_k[s] / sum_k w[k][s]`` (demucs' ``BagOfModels``). Its
    state-dict keys are ``models.<k>.<demucs key>``."""

    weights: Tensor

    def __init__(self, cfg: HTDemucsConfig) -> None:
        super().__init__()
        self.sources = tuple(cfg.stems)
        single = dataclasses.replace(cfg, bag_weights=())
        self.models = nn.ModuleList(HTDemucs(single) for _ in cfg.bag_weights)
        weights = torch.tensor(cfg.bag_weights, dtype=torch.float32)  # (K, S)
        self.register_buffer("weights", weights / weights.sum(0), persistent=False)

    def forward(self, mix: Tensor) -> dict[str, Tensor]:
        total: Tensor | None = None
        for k, model in enumerate(self.models):
            assert isinstance(model, HTDemucs)
            w = self.weights[k].to(mix.dtype)[None, :, None, None]
            y = model.separate(mix) * w
            total = y if total is None else total + y
        assert total is not None
        return {name: total[:, i] for i, name in enumerate(self.sources)}


def build_model(cfg: HTDemucsConfig) -> nn.Module:
    return HTDemucsBag(cfg) if cfg.bag_weights else HTDemucs(cfg)


#: ``tiny`` is for tests; ``htdemucs`` is the published v4 architecture (demucs' config)
PRESETS = {
    "tiny": lambda: HTDemucsConfig(
        channels=8,
        depth=2,
        nfft=512,
        t_layers=2,
        t_heads=2,
        dconv_mode=3,
        segment_samples=44100,
    ),
    "htdemucs": lambda: HTDemucsConfig(dconv_mode=3, bottom_channels=512),
}

FAMILY: ModelFamily[HTDemucsConfig] = ModelFamily(
    config_cls=HTDemucsConfig,
    build=build_model,
    presets=PRESETS,
)

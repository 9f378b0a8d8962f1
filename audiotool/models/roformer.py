"""BS-RoFormer and Mel-Band-RoFormer separators (Lu et al. 2023, "Music Source Separation with
Band-Split RoPE Transformer"; Wang et al. 2023, "Mel-Band RoFormer for Music Source Separation").

Legend: ``B`` batch, ``C`` audio channels (1 or 2), ``T`` samples, ``F`` STFT bins, ``N`` frames,
``K`` bands, ``D`` feature dim, ``S`` stems.

Written for the checkpoints users share for python-audio-separator / MSST: the module tree and
parameter names reproduce that layout exactly (``layers.{i}.{0|1}.layers.{j}.{0|1}...``,
``band_split.to_features.{k}``, ``mask_estimators.{s}.to_freqs.{k}``, ``final_norm`` for BS,
per-transformer ``norm`` for Mel, and the rotary ``freqs`` stored under every attention layer),
so a published state dict loads strictly. The computation is ours:

1. STFT of every channel (Hann window, centred); channels interleaved into the bin axis
   (bin-major: index ``f * C + c``), real and imaginary parts as features.
2. Band split: BS cuts the bins into consecutive groups (``freqs_per_bands``); Mel gathers the
   bins under each triangle of a Slaney mel filter bank (overlapping groups). Each band goes
   through RMSNorm + Linear to ``D``: ``(B, N, K, D)``.
3. ``depth`` blocks of a time transformer (over ``N`` per band) then a frequency transformer
   (over ``K`` per frame), pre-norm attention with rotary positions and per-head sigmoid gates,
   plus GELU feed-forward.
4. One mask estimator per stem: an MLP (tanh) + GLU per band gives complex masks; Mel averages
   the masks of bins shared by several bands. Masked STFT -> iSTFT.

As in the reference, the iSTFT is taken without a target length (``hop * (T // hop)`` samples;
Mel has ``match_input_audio_length``); the samples it does not cover come out as zeros so that
every output has ``T`` samples.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiotool.errors import ConfigError, InputError
from audiotool.models._config import ModelConfig, ModelFamily

#: the reference's default BS band layout: 62 bands over the 1025 bins of a 2048-point STFT
DEFAULT_FREQS_PER_BANDS: tuple[int, ...] = (
    (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)
)


# --------------------------------------------------------------------------- building blocks


class RMSNorm(nn.Module):
    """``x / ||x|| * sqrt(D) * gamma`` over the last dim (``F.normalize``'s epsilon)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class Rotary(nn.Module):
    """Rotary position embedding over the whole head dim (Su et al. 2021), adjacent pairs
    rotated together. ``freqs`` ``(dim_head / 2,)`` is part of the published state dicts."""

    def __init__(self, dim_head: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv = 1.0 / theta ** (torch.arange(0, dim_head, 2)[: dim_head // 2].float() / dim_head)
        self.freqs = nn.Parameter(inv, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., L, dim_head)`` -> same shape, position ``l`` rotated by ``l * freqs``."""
        pos = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32)
        angles = (pos[:, None] * self.freqs.float()[None]).repeat_interleave(2, dim=-1)
        pairs = x.float().unflatten(-1, (-1, 2))
        rotated_half = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        out = x.float() * angles.cos() + rotated_half * angles.sin()
        return out.to(x.dtype)


class Attention(nn.Module):
    """Pre-norm multi-head self-attention with rotary positions and per-head sigmoid gates:
    ``(R, L, D) -> (R, L, D)``."""

    def __init__(self, *, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.rotary_embed = Rotary(dim_head)
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(nn.Linear(inner, dim, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        r, n, _ = x.shape
        qkv = self.to_qkv(x).reshape(r, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = self.rotary_embed(qkv[0]), self.rotary_embed(qkv[1]), qkv[2]  # (R, H, L, d)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out * self.to_gates(x).transpose(1, 2).sigmoid()[..., None]
        return self.to_out(out.transpose(1, 2).reshape(r, n, -1))


class FeedForward(nn.Module):
    """RMSNorm -> Linear(D, 4D) -> GELU -> Linear(4D, D)."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        # index 3 (and 5) are the reference's dropouts: kept so the keys are net.0/1/4
        self.net = nn.Sequential(
            RMSNorm(dim),
            nn.Linear(dim, dim * mult),
            nn.GELU(),
            nn.Identity(),
            nn.Linear(dim * mult, dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Transformer(nn.Module):
    """``depth`` residual (attention, feed-forward) pairs, optional output RMSNorm."""

    def __init__(
        self, *, dim: int, depth: int, heads: int, dim_head: int, norm_output: bool
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim=dim, heads=heads, dim_head=dim_head), FeedForward(dim)])
            for _ in range(depth)
        )
        self.norm: nn.Module = RMSNorm(dim) if norm_output else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        for pair in self.layers:
            attn, ff = pair.children()
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)


class BandSplit(nn.Module):
    """``(B, N, sum(widths))`` -> ``(B, N, K, D)``: RMSNorm + Linear per band."""

    def __init__(self, *, dim: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.widths = widths
        self.to_features = nn.ModuleList(
            nn.Sequential(RMSNorm(w), nn.Linear(w, dim)) for w in widths
        )

    def forward(self, x: Tensor) -> Tensor:
        parts = x.split(self.widths, dim=-1)
        return torch.stack([f(p) for p, f in zip(parts, self.to_features, strict=True)], dim=-2)


class MaskEstimator(nn.Module):
    """``(B, N, K, D)`` -> ``(B, N, sum(widths))``: per band an MLP with ``hidden_layers``
    hidden layers (tanh) to ``2 * width`` then a GLU."""

    def __init__(
        self, *, dim: int, widths: tuple[int, ...], hidden_layers: int, mlp_expansion_factor: int
    ) -> None:
        super().__init__()
        hidden = dim * mlp_expansion_factor
        self.to_freqs = nn.ModuleList()
        for w in widths:
            dims = (dim, *((hidden,) * hidden_layers), 2 * w)
            mlp: list[nn.Module] = []
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
                mlp.append(nn.Linear(a, b))
                if i < len(dims) - 2:
                    mlp.append(nn.Tanh())
            self.to_freqs.append(nn.Sequential(nn.Sequential(*mlp), nn.GLU(dim=-1)))

    def forward(self, x: Tensor) -> Tensor:
        bands = x.unbind(dim=-2)
        return torch.cat([f(b) for b, f in zip(bands, self.to_freqs, strict=True)], dim=-1)


def mel_band_bins(sample_rate: int, n_fft: int, num_bands: int) -> list[list[int]]:
    """The STFT bins of each Mel band: the non-zero support of each triangle of a Slaney mel
    filter bank (librosa's ``filters.mel``), with bin 0 added to the first band and the last
    bin to the last, so that every bin belongs to at least one band."""
    from librosa import filters

    bank = filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=num_bands)
    bank[0, 0] = 1.0
    bank[-1, -1] = 1.0
    support = bank > 0
    uncovered = (~support.any(axis=0)).nonzero()[0]
    if len(uncovered):
        raise ConfigError(
            f"{num_bands} mel bands leave {len(uncovered)} of the {support.shape[1]} STFT bins "
            f"uncovered (n_fft {n_fft}, sample rate {sample_rate})",
            hint="use fewer bands or a larger n_fft",
        )
    return [row.nonzero()[0].tolist() for row in support]


# --------------------------------------------------------------------------- the separator


class RoformerSeparator(nn.Module):
    """RoFormer separator: mixture ``(B, C, T)`` -> ``{stem: (B, C, T)}``.

    Args:
        variant: ``"bs"`` (consecutive bands, ``freqs_per_bands``) or ``"mel"`` (``num_bands``
            overlapping mel bands at ``sample_rate``).
        stems: output stem names (one mask estimator each).
        audio_channels: C, 1 or 2 (the reference's ``stereo``).
        dim, depth, time_transformer_depth, freq_transformer_depth, heads, dim_head: the
            transformer sizes.
        freqs_per_bands: BS band widths in bins, summing to ``stft_n_fft // 2 + 1``.
        num_bands, sample_rate: Mel bands.
        stft_n_fft, stft_hop_length, stft_win_length, stft_normalized: the STFT.
        mask_estimator_depth, mlp_expansion_factor: mask MLP depth (BS: linear layers, Mel:
            hidden layers, as in the reference) and hidden width factor.
        match_input_audio_length: iSTFT to the input length (Mel option of the reference).
    """

    window: Tensor
    freq_index: Tensor
    bands_per_bin: Tensor

    def __init__(
        self,
        *,
        variant: Literal["bs", "mel"],
        stems: tuple[str, ...],
        audio_channels: int = 2,
        dim: int = 512,
        depth: int = 12,
        time_transformer_depth: int = 1,
        freq_transformer_depth: int = 1,
        heads: int = 8,
        dim_head: int = 64,
        freqs_per_bands: tuple[int, ...] = DEFAULT_FREQS_PER_BANDS,
        num_bands: int = 60,
        sample_rate: int = 44100,
        stft_n_fft: int = 2048,
        stft_hop_length: int = 512,
        stft_win_length: int = 2048,
        stft_normalized: bool = False,
        mask_estimator_depth: int = 2,
        mlp_expansion_factor: int = 4,
        match_input_audio_length: bool = False,
    ) -> None:
        super().__init__()
        if audio_channels not in (1, 2):
            raise ConfigError(f"audio_channels must be 1 or 2, got {audio_channels}")
        self.variant, self.stems, self.channels = variant, tuple(stems), audio_channels
        self.n_fft, self.hop, self.win = stft_n_fft, stft_hop_length, stft_win_length
        self.normalized = stft_normalized
        self.match_length = match_input_audio_length
        n_bins = stft_n_fft // 2 + 1
        self.register_buffer("window", torch.hann_window(stft_win_length), persistent=False)
        if variant == "bs":
            if sum(freqs_per_bands) != n_bins or len(freqs_per_bands) < 2:
                raise ConfigError(
                    f"freqs_per_bands must be at least 2 bands summing to {n_bins} "
                    f"(n_fft {stft_n_fft}), got {len(freqs_per_bands)} summing to "
                    f"{sum(freqs_per_bands)}"
                )
            bins = [list(range(a, a + w)) for a, w in _starts(freqs_per_bands)]
        elif variant == "mel":
            bins = mel_band_bins(sample_rate, stft_n_fft, num_bands)
        else:
            raise ConfigError(f"variant must be one of ['bs', 'mel'], got {variant!r}")
        c = audio_channels
        # gather index into the (bin-major, channel-minor) axis of size n_bins * C
        index = torch.tensor([f * c + ch for band in bins for f in band for ch in range(c)])
        counts = torch.zeros(n_bins, dtype=torch.float32)
        for band in bins:
            counts[band] += 1
        self.register_buffer("freq_index", index, persistent=False)
        self.register_buffer("bands_per_bin", counts.repeat_interleave(c), persistent=False)
        widths = tuple(2 * c * len(band) for band in bins)

        mel = variant == "mel"
        self.layers = nn.ModuleList(
            nn.ModuleList(
                Transformer(dim=dim, depth=d, heads=heads, dim_head=dim_head, norm_output=mel)
                for d in (time_transformer_depth, freq_transformer_depth)
            )
            for _ in range(depth)
        )
        self.final_norm: nn.Module | None = None if mel else RMSNorm(dim)
        self.band_split = BandSplit(dim=dim, widths=widths)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(
                dim=dim,
                widths=widths,
                # the reference's BS MLP has `depth` linear layers, its Mel MLP `depth` hidden
                # layers (depth + 1 linear layers)
                hidden_layers=mask_estimator_depth if mel else mask_estimator_depth - 1,
                mlp_expansion_factor=mlp_expansion_factor,
            )
            for _ in self.stems
        )

    def _stft(self, x: Tensor) -> Tensor:
        """``(B, C, T)`` -> complex ``(B, F * C, N)``, bins interleaved with channels."""
        b, c, t = x.shape
        spec = torch.stft(
            x.reshape(b * c, t),
            self.n_fft,
            self.hop,
            self.win,
            window=self.window,
            normalized=self.normalized,
            return_complex=True,
        )
        return spec.reshape(b, c, *spec.shape[-2:]).transpose(1, 2).reshape(b, -1, spec.shape[-1])

    def forward(self, mixture: Tensor) -> dict[str, Tensor]:
        """``(B, C, T)`` mixture -> ``{stem: (B, C, T)}``."""
        b, c, t = mixture.shape
        if c != self.channels:
            raise InputError(f"model expects {self.channels} channels, got {c}")
        spec = self._stft(mixture.float())  # (B, F*C, N)
        n = spec.shape[-1]
        picked = torch.view_as_real(spec[:, self.freq_index])  # (B, sum bins, N, 2)
        x = self.band_split(picked.transpose(1, 2).reshape(b, n, -1))  # (B, N, K, D)
        k, d = x.shape[2], x.shape[3]
        for block in self.layers:
            time_tf, freq_tf = block.children()
            x = time_tf(x.transpose(1, 2).reshape(b * k, n, d)).reshape(b, k, n, d)
            x = freq_tf(x.transpose(1, 2).reshape(b * n, k, d)).reshape(b, n, k, d)
        if self.final_norm is not None:
            x = self.final_norm(x)
        out: dict[str, Tensor] = {}
        for stem, estimator in zip(self.stems, self.mask_estimators, strict=True):
            m = estimator(x).reshape(b, n, -1, 2).transpose(1, 2)  # (B, sum bins, N, 2)
            mask = torch.view_as_complex(m.float().contiguous())  # fp32 under autocast
            if self.variant == "mel":  # average the masks of bins in several bands
                full = torch.zeros_like(spec).index_add_(1, self.freq_index, mask)
                mask = full / self.bands_per_bin.clamp(min=1e-8)[:, None]
            est = spec * mask  # (B, F*C, N)
            est = est.reshape(b, -1, c, n).transpose(1, 2).reshape(b * c, -1, n)
            wave = torch.istft(
                est,
                self.n_fft,
                self.hop,
                self.win,
                window=self.window,
                normalized=self.normalized,
                length=t if self.match_length else None,
            ).reshape(b, c, -1)
            if wave.shape[-1] < t:  # the reference's iSTFT stops at the last whole hop
                wave = F.pad(wave, (0, t - wave.shape[-1]))
            out[stem] = wave[..., :t]
        return out


def _starts(widths: tuple[int, ...]) -> list[tuple[int, int]]:
    out, start = [], 0
    for w in widths:
        out.append((start, w))
        start += w
    return out


# --------------------------------------------------------------------------- config + family


@dataclasses.dataclass(frozen=True)
class RoformerConfig(ModelConfig):
    """Config of the ``roformer`` family (BS- and Mel-Band-RoFormer).

    ``chunk_size`` (samples) and ``num_overlap`` are the reference's inference settings: chunks
    start every ``chunk_size // num_overlap`` samples (see
    :class:`audiotool.engine.segments.RoformerPlan`).
    """

    family: ClassVar[str] = "roformer"
    task: ClassVar[str] = "separate"

    variant: Literal["bs", "mel"] = "bs"
    sample_rate: int = 44100
    stems: tuple[str, ...] = ("vocals",)
    audio_channels: int = 2
    dim: int = 512
    depth: int = 12
    time_transformer_depth: int = 1
    freq_transformer_depth: int = 1
    heads: int = 8
    dim_head: int = 64
    freqs_per_bands: tuple[int, ...] = DEFAULT_FREQS_PER_BANDS
    num_bands: int = 60
    stft_n_fft: int = 2048
    stft_hop_length: int = 512
    stft_win_length: int = 2048
    stft_normalized: bool = False
    mask_estimator_depth: int = 2
    mlp_expansion_factor: int = 4
    match_input_audio_length: bool = False
    chunk_size: int = 352800
    num_overlap: int = 2

    def __post_init__(self) -> None:
        if self.chunk_size <= 0 or self.num_overlap <= 0 or self.chunk_size < self.num_overlap:
            raise ValueError(
                f"chunk_size ({self.chunk_size}) and num_overlap ({self.num_overlap}) must be "
                "positive, num_overlap <= chunk_size"
            )
        if not self.stems:
            raise ValueError("stems must name at least one stem")

    @property
    def default_chunk_seconds(self) -> float:
        return self.chunk_size / self.sample_rate

    @property
    def default_hop_seconds(self) -> float:
        return (self.chunk_size // self.num_overlap) / self.sample_rate


def build_model(cfg: RoformerConfig) -> RoformerSeparator:
    return RoformerSeparator(
        variant=cfg.variant,
        stems=cfg.stems,
        audio_channels=cfg.audio_channels,
        dim=cfg.dim,
        depth=cfg.depth,
        time_transformer_depth=cfg.time_transformer_depth,
        freq_transformer_depth=cfg.freq_transformer_depth,
        heads=cfg.heads,
        dim_head=cfg.dim_head,
        freqs_per_bands=cfg.freqs_per_bands,
        num_bands=cfg.num_bands,
        sample_rate=cfg.sample_rate,
        stft_n_fft=cfg.stft_n_fft,
        stft_hop_length=cfg.stft_hop_length,
        stft_win_length=cfg.stft_win_length,
        stft_normalized=cfg.stft_normalized,
        mask_estimator_depth=cfg.mask_estimator_depth,
        mlp_expansion_factor=cfg.mlp_expansion_factor,
        match_input_audio_length=cfg.match_input_audio_length,
    )


def tiny_config(variant: Literal["bs", "mel"] = "bs") -> RoformerConfig:
    """For tests: 16-dim, one block, a 64-point STFT at 8 kHz."""
    return RoformerConfig(
        variant=variant,
        sample_rate=8000,
        dim=16,
        depth=1,
        heads=2,
        dim_head=8,
        freqs_per_bands=(4, 4, 8, 17),
        num_bands=4,
        stft_n_fft=64,
        stft_hop_length=16,
        stft_win_length=64,
        chunk_size=16 * 63,
        num_overlap=2,
    )


FAMILY: ModelFamily[RoformerConfig] = ModelFamily(
    config_cls=RoformerConfig,
    build=build_model,
    presets={"tiny": tiny_config, "tiny-mel": lambda: tiny_config("mel")},
)

"""Band-split source separation (the BSRNN / BandIt / banda line that seed 004 comes from).

Legend: ``B`` batch, ``C`` audio channels, ``T`` samples, ``F`` STFT bins, ``N`` frames,
``K`` sub-bands, ``D`` feature dim, ``S`` stems, ``Q`` query dim.

Luo & Yu 2023, "Music Source Separation with Band-Split RNN": the complex spectrum is split into
``K`` sub-bands of musically motivated widths; each band (all channels' real and imaginary
parts) is normalised and projected to ``D``; layers alternate sequence modelling across time
within each band and across bands within each frame (residual); per stem, per band an MLP
estimates a complex mask; masked mixture spectra are inverted with the iSTFT.

Options beyond the paper: ``time_model="conv"`` replaces the time BLSTM with a dilated
convolution stack of known receptive field (``receptive_field_samples``), which makes chunked
inference exactly equal to whole-file inference away from the chunk edges; ``query_dim > 0``
adds FiLM conditioning of the band features on a reference-clip embedding (BandIt / Banquet's
query-based extraction; seed 004's multi-query case).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiotool.engine.batching import per_row
from audiotool.errors import ConfigError, InputError
from audiotool.models._config import ModelFamily
from audiotool.models.configs import STEMS4, BandSplitConfig


def band_edges(
    n_fft: int, sample_rate: int, layout: str = "musical", num_bands: int = 16
) -> list[tuple[int, int]]:
    """Sub-band ``[start, end)`` bin ranges covering all ``n_fft // 2 + 1`` bins.

    ``musical``: BSRNN-style widths — 100 Hz bands to 1 kHz, 250 Hz to 4 kHz, 500 Hz to 8 kHz,
    1 kHz to 16 kHz, 2 kHz to 20 kHz, then the rest — each at least one bin wide.
    ``uniform``: ``num_bands`` equal bands.
    """
    n_bins = n_fft // 2 + 1
    hz_per_bin = sample_rate / n_fft
    if layout == "uniform":
        cuts = [round(i * n_bins / num_bands) for i in range(num_bands + 1)]
    elif layout == "musical":
        cuts_hz: list[float] = []
        f = 0.0
        for limit, width in ((1000, 100), (4000, 250), (8000, 500), (16000, 1000), (20000, 2000)):
            while f < limit:
                cuts_hz.append(f)
                f += width
        cuts = sorted({min(n_bins, round(c / hz_per_bin)) for c in cuts_hz} | {n_bins})
    else:
        raise ConfigError(f"band layout must be 'musical' or 'uniform', got {layout!r}")
    edges = [(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]
    return edges


class _TimeConv(nn.Module):
    """Residual dilated depthwise-separable conv stack over frames: bounded receptive field."""

    def __init__(self, dim: int, dilations: tuple[int, ...], kernel: int = 3) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in dilations)
        self.dw = nn.ModuleList(
            nn.Conv1d(dim, dim, kernel, dilation=d, padding=d * (kernel - 1) // 2, groups=dim)
            for d in dilations
        )
        self.pw = nn.ModuleList(nn.Conv1d(dim, dim, 1) for _ in dilations)
        self.radius = sum(d * (kernel - 1) // 2 for d in dilations)

    def forward(self, x: Tensor) -> Tensor:  # (R, N, D)
        for norm, dw, pw in zip(self.norms, self.dw, self.pw, strict=True):
            h = norm(x).transpose(1, 2)
            x = x + pw(F.gelu(dw(h))).transpose(1, 2)
        return x


class _BiLSTM(nn.Module):
    """LayerNorm -> BLSTM -> linear, residual, over dim 1 of ``(R, L, D)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.rnn = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.rnn(self.norm(x))
        return x + self.proj(h)


class BandSplitSeparator(nn.Module):
    """Band-split separator: mixture ``(B, C, T)`` -> ``{stem: (B, C, T)}``.

    Args:
        stems: output stem names.
        audio_channels: C (channels are features of each band; mono input to a stereo model
            is handled by the task layer).
        n_fft / hop: STFT size and hop (Hann window).
        sample_rate: used for the musical band layout.
        band_layout / num_bands: see :func:`band_edges`.
        feature_dim: D.
        num_layers: time + band modelling layers.
        time_model: ``"lstm"`` (BLSTM, unbounded context) or ``"conv"`` (bounded).
        conv_dilations: dilations of each conv layer's stack.
        mask_hidden: hidden width of the mask MLPs.
        query_dim: Q > 0 enables FiLM conditioning on ``query``.
    """

    def __init__(
        self,
        *,
        stems: tuple[str, ...] = STEMS4,
        audio_channels: int = 2,
        n_fft: int = 2048,
        hop: int = 512,
        sample_rate: int = 44100,
        band_layout: str = "musical",
        num_bands: int = 16,
        feature_dim: int = 64,
        num_layers: int = 4,
        time_model: Literal["lstm", "conv"] = "lstm",
        conv_dilations: tuple[int, ...] = (1, 2, 4),
        mask_hidden: int = 128,
        query_dim: int = 0,
    ) -> None:
        super().__init__()
        self.stems, self.channels = tuple(stems), audio_channels
        self.n_fft, self.hop = n_fft, hop
        self.edges = band_edges(n_fft, sample_rate, band_layout, num_bands)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        dim = feature_dim
        widths = [b - a for a, b in self.edges]
        self.band_norms = nn.ModuleList(nn.LayerNorm(2 * audio_channels * w) for w in widths)
        self.band_proj = nn.ModuleList(nn.Linear(2 * audio_channels * w, dim) for w in widths)
        self.time_layers = nn.ModuleList()
        for _ in range(num_layers):
            if time_model == "lstm":
                self.time_layers.append(_BiLSTM(dim, dim))
            else:
                self.time_layers.append(_TimeConv(dim, conv_dilations))
        self.band_layers = nn.ModuleList(_BiLSTM(dim, dim) for _ in range(num_layers))
        self.query_film = nn.Linear(query_dim, 2 * dim) if query_dim > 0 else None
        self.heads = nn.ModuleDict()
        for stem in self.stems:
            self.heads[stem] = nn.ModuleList(
                nn.Sequential(
                    nn.LayerNorm(dim),
                    nn.Linear(dim, mask_hidden),
                    nn.Tanh(),
                    nn.Linear(mask_hidden, 2 * 2 * audio_channels * w),
                    nn.GLU(-1),
                )
                for w in widths
            )
        self.time_model = time_model
        radius_frames = (
            sum(layer.radius for layer in self.time_layers if isinstance(layer, _TimeConv))
            if time_model == "conv"
            else None
        )
        self.receptive_field_samples: int | None = (
            None if radius_frames is None else (radius_frames + 1) * hop + n_fft
        )

    window: Tensor

    def _stft(self, x: Tensor) -> Tensor:
        b, c, t = x.shape
        spec = torch.stft(
            x.reshape(b * c, t), self.n_fft, self.hop, window=self.window, return_complex=True
        )
        return spec.reshape(b, c, spec.shape[-2], spec.shape[-1])  # (B, C, F, N)

    def forward(self, mixture: Tensor, *, query: Tensor | None = None) -> dict[str, Tensor]:
        """``(B, C, T)`` mixture (optional ``query`` ``(B|1, Q)``) -> ``{stem: (B, C, T)}``."""
        b, c, t = mixture.shape
        if c != self.channels:
            raise InputError(f"model expects {self.channels} channels, got {c}")
        pad = max((-t) % self.hop, self.n_fft - t)  # whole hops, and at least one window
        x = F.pad(mixture, (0, pad)) if pad > 0 else mixture
        spec = self._stft(x.float())  # (B, C, F, N)
        n = spec.shape[-1]
        ri = torch.view_as_real(spec)  # (B, C, F, N, 2)
        feats = []
        for (lo, hi), norm, proj in zip(self.edges, self.band_norms, self.band_proj, strict=True):
            band = ri[:, :, lo:hi].permute(0, 3, 1, 2, 4).reshape(b, n, -1)  # (B, N, C*w*2)
            feats.append(proj(norm(band)))
        h = torch.stack(feats, dim=1)  # (B, K, N, D)
        k, d = h.shape[1], h.shape[-1]
        if self.query_film is not None:
            if query is None:
                raise InputError("this model needs a query embedding (query=...)")
            # row by row: a file's FiLM does not depend on the queries batched beside it
            gamma, beta = per_row(self.query_film, query.float()).chunk(2, dim=-1)
            h = h * (1 + gamma[:, None, None, :]) + beta[:, None, None, :]
        for time_layer, band_layer in zip(self.time_layers, self.band_layers, strict=True):
            h = time_layer(h.reshape(b * k, n, d)).reshape(b, k, n, d)
            h = band_layer(h.transpose(1, 2).reshape(b * n, k, d)).reshape(b, n, k, d)
            h = h.transpose(1, 2)
        out: dict[str, Tensor] = {}
        for stem in self.stems:
            masks = []
            heads: nn.ModuleList = self.heads[stem]  # type: ignore[assignment]
            for i, ((lo, hi), head) in enumerate(zip(self.edges, heads, strict=True)):
                m = head(h[:, i])  # (B, N, C*w*2)
                masks.append(m.reshape(b, n, c, hi - lo, 2).permute(0, 2, 3, 1, 4))
            mask = torch.view_as_complex(torch.cat(masks, dim=2).contiguous())  # (B, C, F, N)
            est = mask * spec
            wave = torch.istft(
                est.reshape(b * c, *est.shape[2:]),
                self.n_fft,
                self.hop,
                window=self.window,
                length=x.shape[-1],
            )
            out[stem] = wave.reshape(b, c, -1)[..., :t]
        return out


# --------------------------------------------------------------------------- config + family


def build_model(cfg: BandSplitConfig) -> BandSplitSeparator:
    return BandSplitSeparator(
        stems=cfg.stems,
        audio_channels=cfg.audio_channels,
        n_fft=cfg.n_fft,
        hop=cfg.hop,
        sample_rate=cfg.sample_rate,
        band_layout=cfg.band_layout,
        num_bands=cfg.num_bands,
        feature_dim=cfg.feature_dim,
        num_layers=cfg.num_layers,
        time_model=cfg.time_model,
        conv_dilations=cfg.conv_dilations,
        mask_hidden=cfg.mask_hidden,
        query_dim=cfg.query_dim,
    )


def tiny_config() -> BandSplitConfig:
    """For tests: uniform bands, 16-dim features, 1 layer."""
    return BandSplitConfig(
        n_fft=256,
        hop=64,
        band_layout="uniform",
        num_bands=8,
        feature_dim=16,
        num_layers=1,
        mask_hidden=16,
        default_chunk_seconds=1.0,
        default_hop_seconds=0.5,
    )


def small_config() -> BandSplitConfig:
    """The bundled CPU default: musical bands at n_fft 2048, 48-dim features, 3 layers."""
    return BandSplitConfig(feature_dim=48, num_layers=3, mask_hidden=96)


def base_config() -> BandSplitConfig:
    return BandSplitConfig(feature_dim=128, num_layers=8, mask_hidden=512)


def separation_loss(est: Mapping[str, Tensor], ref: Mapping[str, Tensor]) -> Tensor:
    """L1 on waveforms + multi-resolution STFT magnitude L1 (512/1024/2048, hop 1/4), averaged
    over stems; both dicts map stem -> ``(B, C, T)``."""
    total = torch.zeros((), device=next(iter(est.values())).device)
    for stem, e in est.items():
        r = ref[stem]
        loss = (e - r).abs().mean()
        flat_e, flat_r = e.reshape(-1, e.shape[-1]), r.reshape(-1, r.shape[-1])
        for n_fft in (512, 1024, 2048):
            win = torch.hann_window(n_fft, device=e.device)
            se = torch.stft(flat_e, n_fft, n_fft // 4, window=win, return_complex=True).abs()
            sr = torch.stft(flat_r, n_fft, n_fft // 4, window=win, return_complex=True).abs()
            loss = loss + (se - sr).abs().mean() / 3
        total = total + loss
    return total / len(est)


FAMILY: ModelFamily[BandSplitConfig] = ModelFamily(
    config_cls=BandSplitConfig,
    build=build_model,
    presets={"tiny": tiny_config, "small": small_config, "base": base_config},
)

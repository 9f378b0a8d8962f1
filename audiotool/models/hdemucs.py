"""Hybrid Demucs through torchaudio's implementation (Défossez 2021, "Hybrid Spectrogram and
Waveform Source Separation").

Legend: ``B`` batch, ``C`` audio channels, ``S`` sources, ``T`` samples.

:class:`torchaudio.models.HDemucs` is used as is (not re-implemented); the wrapper returns a
``{stem: (B, C, T)}`` dict as every audiotool separator does and accepts mono input for a stereo
model (the mono channel is duplicated, and the stems averaged back to mono). Its state-dict keys
are torchaudio's under the prefix ``model.``, so torchaudio checkpoints import by adding it.

demucs' own v3 ``HDemucs`` computes the same function as torchaudio's port for the published
configuration family (CaC, hybrid, DConv in the encoder only; see
:mod:`audiotool.importers.demucs` for the argument and key mapping), so demucs' checkpoints run
through it too. :class:`HDemucsBag` is a bag of them (demucs' ``BagOfModels``): every member
separates and each stem is the weighted mean of the members' estimates.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from audiotool.errors import InputError
from audiotool.models._config import ModelFamily
from audiotool.models.configs import HDemucsConfig

PREFIX = "model."


class HDemucsSeparator(nn.Module):
    """``(B, C, T)`` -> ``{stem: (B, C, T)}`` around ``torchaudio.models.HDemucs`` (any ``T``)."""

    def __init__(self, cfg: HDemucsConfig) -> None:
        super().__init__()
        from torchaudio.models import HDemucs

        self.sources = tuple(cfg.stems)
        self.audio_channels = cfg.audio_channels
        self.model = HDemucs(
            sources=list(cfg.stems),
            audio_channels=cfg.audio_channels,
            channels=cfg.channels,
            growth=cfg.growth,
            nfft=cfg.nfft,
            depth=cfg.depth,
            freq_emb=cfg.freq_emb,
            emb_scale=cfg.emb_scale,  # torchaudio annotates int, uses it as a float
            kernel_size=cfg.kernel_size,
            time_stride=cfg.time_stride,
            stride=cfg.stride,
            context=cfg.context,
            context_enc=cfg.context_enc,
            norm_starts=cfg.norm_starts,
            norm_groups=cfg.norm_groups,
            dconv_depth=cfg.dconv_depth,
            dconv_comp=cfg.dconv_comp,
            dconv_attn=cfg.dconv_attn,
            dconv_lstm=cfg.dconv_lstm,
        )

    def separate(self, mixture: Tensor) -> Tensor:
        """``(B, C, T)`` -> ``(B, S, C, T)`` (a mono input is duplicated, its stems averaged)."""
        c = mixture.shape[1]
        x = mixture
        if c != self.audio_channels:
            if c == 1:
                x = mixture.expand(-1, self.audio_channels, -1)
            else:
                raise InputError(f"model expects {self.audio_channels} channels, got {c}")
        y = self.model(x.contiguous())  # (B, S, C, T)
        return y.mean(dim=2, keepdim=True) if c == 1 else y

    def forward(self, mixture: Tensor) -> dict[str, Tensor]:
        y = self.separate(mixture)
        return {s: y[:, i] for i, s in enumerate(self.sources)}


class HDemucsBag(nn.Module):
    """Bag of :class:`HDemucsSeparator` of one architecture: ``(B, C, T)`` -> ``{stem: (B, C,
    T)}``, stem ``s`` = ``sum_k w[k][s] y_k[s] / sum_k w[k][s]`` (demucs' ``BagOfModels``).
    Its state-dict keys are ``models.<k>.model.<torchaudio key>``."""

    weights: Tensor

    def __init__(self, cfg: HDemucsConfig) -> None:
        super().__init__()
        self.sources = tuple(cfg.stems)
        single = dataclasses.replace(cfg, bag_weights=())
        self.models = nn.ModuleList(HDemucsSeparator(single) for _ in cfg.bag_weights)
        weights = torch.tensor(cfg.bag_weights, dtype=torch.float32)  # (K, S)
        self.register_buffer("weights", weights / weights.sum(0), persistent=False)

    def forward(self, mixture: Tensor) -> dict[str, Tensor]:
        total: Tensor | None = None
        for k, model in enumerate(self.models):
            assert isinstance(model, HDemucsSeparator)
            y = model.separate(mixture) * self.weights[k].to(mixture.dtype)[None, :, None, None]
            total = y if total is None else total + y
        assert total is not None
        return {s: total[:, i] for i, s in enumerate(self.sources)}


def build_model(cfg: HDemucsConfig) -> nn.Module:
    """:class:`HDemucsBag` for a bag config, else :class:`HDemucsSeparator`."""
    return HDemucsBag(cfg) if cfg.bag_weights else HDemucsSeparator(cfg)


#: torchaudio's factories: hdemucs_low / medium / high
PRESETS = {
    "low": lambda: HDemucsConfig(nfft=1024, depth=5),
    "medium": lambda: HDemucsConfig(nfft=2048, depth=6),
    "high": lambda: HDemucsConfig(nfft=4096, depth=6),
}

FAMILY: ModelFamily[HDemucsConfig] = ModelFamily(
    config_cls=HDemucsConfig,
    build=build_model,
    presets=PRESETS,
)

"""Hybrid Demucs through torchaudio's implementation (Défossez 2021, "Hybrid Spectrogram and
Waveform Source Separation").

Legend: ``B`` batch, ``C`` audio channels, ``S`` sources, ``T`` samples.

:class:`torchaudio.models.HDemucs` is used as is (not re-implemented); the wrapper returns a
``{stem: (B, C, T)}`` dict as every audiotool separator does and accepts mono input for a stereo
model (the mono channel is duplicated, and the stems averaged back to mono). Its state-dict keys
are torchaudio's under the prefix ``model.``, so torchaudio checkpoints import by adding it.
"""

from __future__ import annotations

from torch import Tensor, nn

from audiotool.errors import InputError
from audiotool.models._config import ModelFamily
from audiotool.models.configs import HDemucsConfig

PREFIX = "model."


class HDemucsSeparator(nn.Module):
    """``(B, C, T)`` -> ``{stem: (B, C, T)}`` around ``torchaudio.models.HDemucs``."""

    def __init__(
        self,
        *,
        sources: tuple[str, ...],
        audio_channels: int = 2,
        channels: int = 48,
        growth: int = 2,
        nfft: int = 4096,
        depth: int = 6,
    ) -> None:
        super().__init__()
        from torchaudio.models import HDemucs

        self.sources = tuple(sources)
        self.audio_channels = audio_channels
        self.model = HDemucs(
            sources=list(sources),
            audio_channels=audio_channels,
            channels=channels,
            growth=growth,
            nfft=nfft,
            depth=depth,
        )

    def forward(self, mixture: Tensor) -> dict[str, Tensor]:
        c = mixture.shape[1]
        x = mixture
        if c != self.audio_channels:
            if c == 1:
                x = mixture.expand(-1, self.audio_channels, -1)
            else:
                raise InputError(f"model expects {self.audio_channels} channels, got {c}")
        y = self.model(x.contiguous())  # (B, S, C, T)
        if c == 1:
            y = y.mean(dim=2, keepdim=True)
        return {s: y[:, i] for i, s in enumerate(self.sources)}


def build_model(cfg: HDemucsConfig) -> HDemucsSeparator:
    return HDemucsSeparator(
        sources=cfg.stems,
        audio_channels=cfg.audio_channels,
        channels=cfg.channels,
        growth=cfg.growth,
        nfft=cfg.nfft,
        depth=cfg.depth,
    )


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

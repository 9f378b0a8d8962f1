from __future__ import annotations

import math

import pytest
import torch

from audiotool.baselines import (
    griffin_lim_from_mel,
    hpss_separation,
    spectral_band_replication,
)
from audiotool.dsp import degrade
from audiotool.errors import UsageError
from audiotool.metrics import lsd


def _harmonic(rate: int, seconds: float, noise: float = 0.0) -> torch.Tensor:
    t = torch.arange(int(rate * seconds), dtype=torch.float64) / rate
    env = 0.6 + 0.4 * torch.sin(2 * math.pi * 2 * t)
    x = sum(torch.sin(2 * math.pi * 180 * k * t + k) / k**0.7 for k in range(1, 130)) * env
    x = 0.05 * x + noise * torch.randn(len(t), generator=torch.Generator().manual_seed(0))
    return x.float()[None]  # type: ignore[union-attr]


@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_sbr_lowers_lsd_hf_against_the_degraded_input(noise: float) -> None:
    ref = _harmonic(48000, 2.0, noise)
    low = degrade(ref, 48000, 16000)
    sbr = spectral_band_replication(low, 48000, 7600)
    before = lsd(ref, low, input_rate=16000, band="hf")
    after = lsd(ref, sbr, input_rate=16000, band="hf")
    assert after < 0.6 * before


def test_sbr_keeps_the_low_band() -> None:
    ref = _harmonic(48000, 1.0)
    low = degrade(ref, 48000, 16000)
    out = spectral_band_replication(low, 48000, 7600)
    from audiotool.dsp import lowpass

    # the added band reaches below the cutoff only through STFT leakage: > 50 dB down
    diff = lowpass(out - low, 48000, 7000)[:, 4096:-4096]
    assert 10 * math.log10(float(diff.pow(2).mean() / low.pow(2).mean())) < -50
    assert out.shape == low.shape
    assert torch.equal(spectral_band_replication(low[:, :100], 48000, 7600), low[:, :100])


def test_hpss_stems_sum_to_mixture_and_find_drums() -> None:
    rate = 22050
    t = torch.arange(rate * 2) / rate
    tone = 0.3 * torch.sin(2 * math.pi * 440 * t)
    clicks = torch.zeros_like(t)
    clicks[:: rate // 4] = 1.0
    clicks = torch.nn.functional.conv1d(clicks[None, None], torch.ones(1, 1, 30) / 30, padding=15)[
        0, 0, : len(t)
    ]
    mix = torch.stack([tone + clicks, tone + clicks])
    stems = hpss_separation(mix, rate)
    assert torch.allclose(sum(stems.values()), mix, atol=1e-5)  # type: ignore[arg-type]
    drum_energy = float(stems["drums"].pow(2).sum())
    assert drum_energy > 0.5 * float(clicks.pow(2).sum() * 2)
    with pytest.raises(UsageError, match="supported"):
        hpss_separation(mix, rate, ("guitar",))


def test_griffin_lim_from_mel_is_the_rae_mel_round_trip() -> None:
    """The standalone baseline is exactly what an RAE with the default mel settings renders from
    the true mel (so its scores compare with every reconstruct model), and it keeps the mel."""
    from audiotool.metrics import log_mel_distance
    from audiotool.models.rae import RAEConfig, build_model

    x = _harmonic(16000, 1.0, 0.01)
    y = griffin_lim_from_mel(x, 16000)
    assert y.shape == x.shape
    rae = build_model(RAEConfig(encoder="spectrogram_vit", vit_dim=16, vit_depth=1))
    with torch.no_grad():
        ref = rae.vocode(rae.mel(x))
    n = min(ref.shape[-1], y.shape[-1])
    assert torch.allclose(y[..., :n], ref[..., :n], atol=1e-5)
    assert log_mel_distance(x, y) < 0.5 * log_mel_distance(x, 0.1 * torch.randn_like(x))

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audiotool.errors import UsageError
from audiotool.metrics import (
    csdr,
    log_mel_distance,
    lsd,
    multi_resolution_stft_distance,
    si_sdr,
    usdr,
)

G = torch.Generator().manual_seed(0)


def test_si_sdr_known_values() -> None:
    s = torch.randn(1, 48000, generator=G)
    assert si_sdr(s, s) > 150  # identity: only the eps guard limits it
    assert si_sdr(s, 3.7 * s) > 100  # scale-invariant (float round-off only)
    for snr in (0.0, 10.0, 20.0):
        n = torch.randn(1, 48000, generator=G)
        n = n - n.mean()
        s0 = s - s.mean()
        # make the noise orthogonal to s so the expected value is exact
        n = n - (n * s0).sum() / (s0 * s0).sum() * s0
        n = n * (s0.norm() / n.norm()) * 10 ** (-snr / 20)
        assert si_sdr(s0, s0 + n) == pytest.approx(snr, abs=0.1)


def test_si_sdr_hand_computed() -> None:
    ref = torch.tensor([1.0, -1.0, 1.0, -1.0])
    est = torch.tensor([1.0, -1.0, 1.0, 0.0])
    # zero-mean est = [0.75,-1.25,0.75,-0.25]; alpha = (e.r)/(r.r) = 3/4
    e = np.array([0.75, -1.25, 0.75, -0.25])
    t = 0.75 * np.array([1, -1, 1, -1])
    expected = 10 * math.log10((t**2).sum() / ((e - t) ** 2).sum())
    assert si_sdr(ref, est) == pytest.approx(expected, abs=1e-9)


def test_usdr_hand_computed() -> None:
    ref = torch.tensor([[1.0, 2.0, 3.0]])
    est = torch.tensor([[1.0, 2.0, 2.0]])
    assert usdr(ref, est) == pytest.approx(10 * math.log10((14 + 1e-7) / (1 + 1e-7)))


def test_lsd_identity_symmetry_and_scale() -> None:
    x = torch.randn(2, 48000, generator=G)
    y = torch.randn(2, 48000, generator=G)
    assert lsd(x, x) == 0.0
    assert lsd(x, y) == pytest.approx(lsd(y, x))
    # a 10x amplitude change is exactly 2 in log10 power at every bin
    assert lsd(x, 10 * x) == pytest.approx(2.0, abs=1e-6)
    low = x.clone()
    assert lsd(x, 10 * low, band="hf", input_rate=16000) == pytest.approx(2.0, abs=1e-6)
    with pytest.raises(UsageError):
        lsd(x, y, band="hf")


def test_lsd_bands_split_at_input_nyquist() -> None:
    from audiotool.dsp import degrade, lowpass

    x = torch.randn(1, 48000, generator=G)
    d = degrade(x, 48000, 16000)
    assert lsd(x, d, band="hf", input_rate=16000) > 5  # everything above 8 kHz is gone
    y = lowpass(x, 48000, 7000)  # content that a 16 kHz recording keeps exactly
    # below 6 kHz (split of a 12 kHz "input rate") the degraded copy is the same signal
    assert lsd(y, degrade(y, 48000, 16000), band="lf", input_rate=12000) < 0.05


def test_mel_and_mrstft_distances() -> None:
    x = torch.randn(1, 16000, generator=G)
    assert log_mel_distance(x, x) == 0.0 and multi_resolution_stft_distance(x, x) == 0.0
    noisy = x + 0.5 * torch.randn(1, 16000, generator=G)
    assert log_mel_distance(x, noisy) > 0.05
    assert multi_resolution_stft_distance(x, noisy) > multi_resolution_stft_distance(
        x, x + 0.05 * torch.randn(1, 16000, generator=G)
    )


def test_csdr_needs_museval() -> None:
    try:
        import museval  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="audiotool\\[eval\\]"):
            csdr(torch.zeros(1, 10), torch.zeros(1, 10), 44100)
    else:
        x = torch.randn(2, 44100 * 2, generator=G)
        assert csdr(x, x + 0.01 * torch.randn(2, 88200, generator=G), 44100) > 20

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audiotool.dsp import (
    degrade,
    estimate_cutoff,
    limit_generated,
    long_term_spectrum,
    lowpass,
    match_level,
    mel_bin_for_frequency,
    replace_low_band,
    replace_low_mel_bins,
    split_bands,
)


def _noise(kind: str, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g).double().numpy()
    if kind == "white":
        return torch.from_numpy(w).float()[None]
    spec = np.fft.rfft(w)
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    return torch.from_numpy(np.fft.irfft(spec / np.sqrt(f), n)).float()[None]


def _harmonic(rate: int, seconds: float, f0: float = 110.0) -> torch.Tensor:
    t = torch.arange(int(rate * seconds), dtype=torch.float64) / rate
    x = sum((1 / k) * torch.sin(2 * math.pi * f0 * k * t + k) for k in range(1, int(rate / 2 / f0)))
    return (0.1 * x).float()[None]  # type: ignore[union-attr]


@pytest.mark.parametrize("rate", [48000, 44100])
@pytest.mark.parametrize("cutoff", [4000.0, 8000.0, 11025.0])
@pytest.mark.parametrize("kind", ["white", "pink"])
def test_cutoff_within_5_percent(rate: int, cutoff: float, kind: str) -> None:
    x = lowpass(_noise(kind, rate * 2, seed=int(cutoff)), rate, cutoff)
    est = estimate_cutoff(x, rate)
    assert abs(est - cutoff) / cutoff < 0.05, est


def test_cutoff_harmonic_and_full_band() -> None:
    rate = 48000
    x = _harmonic(rate, 2.0)
    assert estimate_cutoff(x, rate) > 0.93 * 24000  # harmonics reach 23.9 kHz
    y = lowpass(x, rate, 6000)
    assert abs(estimate_cutoff(y, rate) - 6000) / 6000 < 0.05
    assert estimate_cutoff(torch.zeros(1, 1000), rate) == 0.0


def test_cutoff_of_degraded_input_near_its_nyquist() -> None:
    x = _noise("white", 48000 * 2, 1)
    for target in (8000, 16000, 24000):
        est = estimate_cutoff(degrade(x, 48000, target), 48000)
        assert 0.9 * target / 2 < est <= target / 2 * 1.02


def test_degrade_removes_the_high_band() -> None:
    x = _noise("white", 48000, 2)
    y = degrade(x, 48000, 16000)
    assert y.shape == x.shape
    f, p_in = long_term_spectrum(x, 48000)
    _, p_out = long_term_spectrum(y, 48000)
    high = f > 8500
    assert 10 * np.log10(p_out[high].mean() / p_in[high].mean()) < -60
    low = f < 6000
    assert abs(10 * np.log10(p_out[low].mean() / p_in[low].mean())) < 0.1


def test_lowpass_is_deterministic_and_stereo() -> None:
    x = torch.randn(2, 9000)
    a, b = lowpass(x, 48000, 5000), lowpass(x, 48000, 5000)
    assert torch.equal(a, b) and a.shape == x.shape
    assert torch.allclose(lowpass(x[1:], 48000, 5000), a[1:], atol=1e-6)
    assert torch.equal(lowpass(x, 48000, 30000), x)  # above Nyquist: unchanged


@pytest.mark.parametrize("kind", ["cheby1", "butter"])
def test_lowpass_response_passband_ripple_and_stopband(kind: str) -> None:
    # the zero-phase response measured from an impulse in the middle of a long silence
    rate, cutoff, n = 48000, 8000.0, 1 << 16
    x = torch.zeros(1, n)
    x[0, n // 2] = 1.0
    y = lowpass(x, rate, cutoff, kind=kind)  # type: ignore[arg-type]
    gain = np.abs(np.fft.rfft(y[0].double().numpy()))
    freqs = np.fft.rfftfreq(n, 1 / rate)
    db = 20 * np.log10(gain + 1e-300)
    passband = freqs <= 0.9 * cutoff
    if kind == "cheby1":  # 0.1 dB ripple per pass, two passes: within [-0.2, 0] dB
        assert db[passband].max() < 0.005 and db[passband].min() > -0.205
        assert db[passband].max() - db[passband].min() > 0.15  # it does ripple
        edge = np.interp(cutoff, freqs, db)
        assert -0.205 < edge < -0.19  # the ripple band ends at the cutoff
        # an order-8 Chebyshev-I: ~44 dB per pass at 1.5x the (prewarped) cutoff
        assert np.interp(1.5 * cutoff, freqs, db) < -85
    else:  # maximally flat; -3 dB per pass at the cutoff
        assert db[freqs <= 0.5 * cutoff].min() > -0.01
        assert abs(np.interp(cutoff, freqs, db) + 6.02) < 0.05
        assert np.interp(1.5 * cutoff, freqs, db) < -55
    assert db[freqs >= 2 * cutoff].max() < -95  # stop band (float32 output: ~-140 dB floor)


@pytest.mark.parametrize(("kind", "order"), [("cheby1", 8), ("butter", 4)])
def test_lowpass_matches_scipy_sosfiltfilt_away_from_the_edges(kind: str, order: int) -> None:
    signal = pytest.importorskip("scipy.signal")
    rate, cutoff = 44100, 6000.0
    x = _noise("pink", rate, seed=7).repeat(2, 1)
    wn = cutoff / (rate / 2)
    sos = signal.cheby1(order, 0.1, wn, output="sos") if kind == "cheby1" else None
    sos = signal.butter(order, wn, output="sos") if sos is None else sos
    ref = signal.sosfiltfilt(sos, x.double().numpy(), axis=-1)
    y = lowpass(x, rate, cutoff, order=order, kind=kind)  # type: ignore[arg-type]
    interior = slice(4000, -4000)
    assert np.abs(y.double().numpy()[:, interior] - ref[:, interior]).max() < 1e-6
    assert np.abs(y.double().numpy() - ref).max() < 0.1 * ref.std()  # edges: close too


def test_lowpass_short_and_constant_signals() -> None:
    assert lowpass(torch.ones(1, 1), 48000, 4000).shape == (1, 1)
    y = lowpass(torch.full((1, 500), 0.25), 48000, 4000, kind="butter")
    assert torch.allclose(y, torch.full_like(y, 0.25), atol=1e-5)  # DC passes, edges included


def test_replace_low_band_keeps_input_below_cutoff() -> None:
    rate, cutoff = 48000, 8000.0
    ref = lowpass(_noise("pink", rate, 3), rate, cutoff) + 0.0
    gen = _noise("white", rate, 4) * 0.05
    out = replace_low_band(gen, ref, rate, cutoff, transition_hz=800)
    f, p_out = long_term_spectrum(out, rate)
    _, p_ref = long_term_spectrum(ref, rate)
    _, p_gen = long_term_spectrum(gen, rate)
    low = (f > 50) & (f < cutoff - 800)
    # < 0.1 dB: the STFT mask is exactly 1 there, only round-off and window leakage remain
    assert np.abs(10 * np.log10(p_out[low] / p_ref[low])).max() < 0.1
    high = f > cutoff + 1000
    assert np.abs(10 * np.log10(p_out[high] / p_gen[high])).mean() < 13  # generated band kept
    assert p_out[high].mean() > 100 * p_ref[high].mean()


def test_transition_band_is_smooth_compared_with_a_hard_cut() -> None:
    rate, cutoff = 48000, 8000.0
    ref = _noise("white", rate, 5)
    gen = 0.1 * _noise("white", rate, 6)
    soft = replace_low_band(gen, ref, rate, cutoff, transition_hz=1000, match_energy=False)
    hard = replace_low_band(gen, ref, rate, cutoff, transition_hz=0, match_energy=False)
    f, ps = long_term_spectrum(soft, rate)
    _, ph = long_term_spectrum(hard, rate)
    band = (f > cutoff - 1500) & (f < cutoff + 500)
    steps_soft = np.abs(np.diff(10 * np.log10(ps[band]))).max()
    steps_hard = np.abs(np.diff(10 * np.log10(ph[band]))).max()
    assert steps_soft < steps_hard / 2


def test_replace_low_band_short_input() -> None:
    ref, gen = torch.randn(2, 500), torch.randn(2, 520)
    out = replace_low_band(gen, ref, 48000, 8000)
    assert out.shape == ref.shape and torch.isfinite(out).all()


def test_match_level() -> None:
    ref = torch.randn(2, 1000) * 0.3
    out = torch.randn(2, 1000) * 0.01
    for mode in ("rms", "peak"):
        y = match_level(out, ref, mode=mode)  # type: ignore[arg-type]
        if mode == "rms":
            ratio = float(y.pow(2).mean().sqrt() / ref.pow(2).mean().sqrt())
        else:
            ratio = float(y.abs().max() / ref.abs().max())
        assert abs(20 * math.log10(ratio)) < 0.1
    assert torch.equal(match_level(torch.zeros(1, 5), ref), torch.zeros(1, 5))


def test_mel_helpers() -> None:
    k = mel_bin_for_frequency(8000, n_mels=256, sample_rate=48000)
    assert 0 < k < 256
    assert mel_bin_for_frequency(24000, n_mels=256, sample_rate=48000) == 256
    gen, cond = torch.zeros(3, 10, 256), torch.ones(3, 10, 256)
    out = replace_low_mel_bins(gen, cond, k, transition_bins=4)
    assert torch.all(out[..., : k - 4] == 1) and torch.all(out[..., k:] == 0)
    assert bool((out[..., k - 4 : k].diff(dim=-1) <= 0).all())


def test_split_bands_sums_to_replace_low_band_and_caps_the_generated_band() -> None:
    rate, cutoff = 48000, 8000.0
    ref = lowpass(_noise("white", rate, 0) * 0.1, rate, cutoff)  # flat up to the cutoff
    gen = _noise("white", rate, 1) * 3.0  # a generated band 30x too loud
    kept, free = split_bands(gen, ref, rate, cutoff, bound_level=False)
    assert torch.allclose(
        kept + free, replace_low_band(gen, ref, rate, cutoff, match_energy=True), atol=1e-5
    )
    kept_b, capped = split_bands(gen, ref, rate, cutoff)
    assert torch.equal(kept, kept_b)  # the kept band does not depend on the cap
    f, p_ref = long_term_spectrum(ref, rate)
    _, p_cap = long_term_spectrum(capped, rate)
    top = (f > 5000) & (f < 6500)
    above = (f > 9000) & (f < 20000)
    # a flat top octave predicts a flat band above: the capped band is no louder than it
    assert 10 * np.log10(p_cap[above].mean() / p_ref[top].mean()) < 1.0
    _, p_free = long_term_spectrum(free, rate)
    assert 10 * np.log10(p_free[above].mean() / p_ref[top].mean()) > 5.0  # (it was louder)


def test_limit_generated_keeps_the_sum_within_full_scale_and_the_kept_band_intact() -> None:
    rate = 48000
    t = torch.arange(rate) / rate
    kept = 0.9 * torch.sin(2 * math.pi * 100 * t)[None].repeat(2, 1)
    kept[1, 1000:1100] = 1.2  # the kept band itself over full scale in one place
    gen = 0.5 * torch.sin(2 * math.pi * 9000 * t)[None].repeat(2, 1)
    out, gain = limit_generated(kept, gen, rate, ceiling=0.999)
    assert gain.shape == (rate,) and float(gain.min()) < 1.0
    assert torch.allclose(out, kept + gain * gen, atol=1e-6)  # only the generated band changes
    over = kept.abs() > 0.999
    assert float(out.abs()[~over].max()) <= 0.999 + 1e-6
    assert float(gain.diff().abs().max()) < 0.01  # smooth: no clicks
    quiet, g1 = limit_generated(kept * 0.1, gen * 0.1, rate)
    assert torch.equal(g1, torch.ones(rate)) and torch.allclose(quiet, (kept + gen) * 0.1)

"""Per-stem augmentations: each changes what it claims, shapes are kept, and a training batch's
mixture stays the exact sum of its (augmented) stems."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiotool.data.augment import (
    StemAugment,
    add_reverb,
    augment_stem,
    change_speed,
    stereo_width,
    synthetic_ir,
    tilt_eq,
)
from audiotool.errors import ConfigError

RATE = 16000


def _noise(seed: int = 0, n: int = RATE) -> torch.Tensor:
    return torch.randn(2, n, generator=torch.Generator().manual_seed(seed))


def _band_energy(x: torch.Tensor, lo: float, hi: float) -> float:
    spec = torch.fft.rfft(x, dim=-1).abs() ** 2
    f = torch.fft.rfftfreq(x.shape[-1], 1 / RATE)
    return float(spec[..., (f >= lo) & (f < hi)].sum())


def test_tilt_changes_the_spectral_slope() -> None:
    x = _noise()
    before = _band_energy(x, 4000, 8000) / _band_energy(x, 125, 250)
    up = tilt_eq(x, 3.0, pivot_hz=1000.0, sample_rate=RATE)
    down = tilt_eq(x, -3.0, pivot_hz=1000.0, sample_rate=RATE)
    # 5 octaves apart at 3 dB/octave: about +-15 dB of high/low ratio
    ratio_up = 10 * np.log10(_band_energy(up, 4000, 8000) / _band_energy(up, 125, 250) / before)
    ratio_down = 10 * np.log10(
        _band_energy(down, 4000, 8000) / _band_energy(down, 125, 250) / before
    )
    assert 12 < ratio_up < 18 and -18 < ratio_down < -12
    assert torch.allclose(tilt_eq(x, 0.0, pivot_hz=1000.0, sample_rate=RATE), x, atol=1e-5)


def test_width_changes_the_side_to_mid_ratio() -> None:
    x = _noise()
    x[1] = 0.5 * x[0] + 0.5 * x[1]  # partly correlated channels

    def side_mid(y: torch.Tensor) -> float:
        return float((y[0] - y[1]).norm() / (y[0] + y[1]).norm())

    assert side_mid(stereo_width(x, 0.0)) < 1e-6  # mono
    assert side_mid(stereo_width(x, 1.5)) == pytest.approx(1.5 * side_mid(x), rel=1e-4)
    assert torch.allclose(stereo_width(x, 1.0), x, atol=1e-6)
    assert torch.allclose(stereo_width(x, 0.5)[0] + stereo_width(x, 0.5)[1], x[0] + x[1], atol=1e-5)


def test_speed_moves_the_pitch_and_keeps_the_length() -> None:
    t = torch.arange(RATE) / RATE
    x = torch.sin(2 * np.pi * 440 * t).repeat(2, 1)
    for factor in (0.9, 1.1):
        y = change_speed(x, factor)
        assert y.shape == x.shape
        spec = torch.fft.rfft(y[0, : RATE // 2]).abs()
        peak = float(torch.fft.rfftfreq(RATE // 2, 1 / RATE)[spec.argmax()])
        assert peak == pytest.approx(440 * factor, abs=4)
    with pytest.raises(ConfigError):
        change_speed(x, 0.0)


def test_reverb_adds_a_decaying_tail() -> None:
    gen = torch.Generator().manual_seed(0)
    ir = synthetic_ir(gen, rt60=0.5, sample_rate=RATE)
    assert ir.shape == (2, RATE // 2) and float(ir[0, 0]) == 1.0
    assert float(ir[:, 1:800].abs().mean()) > float(ir[:, -800:].abs().mean()) * 10
    x = torch.zeros(2, RATE)
    x[:, 100] = 1.0  # a click
    y = add_reverb(x, ir, wet=0.5)
    assert y.shape == x.shape
    assert float(y[:, 2000:4000].abs().sum()) > 0  # energy long after the click
    assert float(x[:, 2000:4000].abs().sum()) == 0


def test_augment_stem_is_seeded_and_keeps_the_shape() -> None:
    x = _noise(1)
    cfg = StemAugment(p_tilt=1, p_speed=1, p_reverb=1, p_width=1, p_swap=1)
    a = augment_stem(x, torch.Generator().manual_seed(5), sample_rate=RATE, config=cfg)
    b = augment_stem(x, torch.Generator().manual_seed(5), sample_rate=RATE, config=cfg)
    c = augment_stem(x, torch.Generator().manual_seed(6), sample_rate=RATE, config=cfg)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, _noise(1))  # the input is not mutated


def test_config_from_recipe_mapping() -> None:
    cfg = StemAugment.from_dict({"p_tilt": 1, "speed": [0.95, 1.05]})
    assert cfg.p_tilt == 1.0 and cfg.speed == (0.95, 1.05)
    with pytest.raises(ConfigError, match="unknown augment keys"):
        StemAugment.from_dict({"p_tilde": 1})


def test_training_mixture_is_the_exact_sum_of_augmented_stems(tmp_path: Path) -> None:
    from audiotool.training.adapters import SeparateAdapter
    from audiotool.training.recipe import recipe_from_dict

    stems = ("vocals", "drums", "bass", "other")
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 1)):
        for i in range(n):
            song = tmp_path / split / f"song_{i}"
            song.mkdir(parents=True)
            parts = {s: 0.1 * rng.standard_normal((RATE * 2, 2)).astype(np.float32) for s in stems}
            for s, a in parts.items():
                sf.write(song / f"{s}.wav", a, RATE, subtype="FLOAT")
            sf.write(song / "mixture.wav", sum(parts.values()), RATE, subtype="FLOAT")

    def recipe(extra: dict[str, object]) -> object:
        return recipe_from_dict(
            {
                "task": "separate",
                "model": {
                    "family": "bandsplit",
                    "preset": "small",
                    "overrides": {"sample_rate": RATE},
                },
                "data": {"clip_seconds": 0.5, "extra": {"remix_prob": 0.5, **extra}},
                "train": {"steps": 1, "batch_size": 3},
            }
        )

    aug = {"augment": {"p_tilt": 1, "p_speed": 1, "p_reverb": 1, "p_width": 1}}
    adapter = SeparateAdapter(recipe(aug), tmp_path)  # type: ignore[arg-type]
    mix, refs = adapter.train_batch(0, 0, 3, torch.Generator().manual_seed(0))
    assert mix.shape == (3, 2, RATE // 2)
    total = torch.stack([refs[s] for s in stems]).sum(0)
    assert torch.allclose(mix, total, atol=1e-6)
    plain = SeparateAdapter(recipe({}), tmp_path)  # type: ignore[arg-type]
    mix2, _ = plain.train_batch(0, 0, 3, torch.Generator().manual_seed(0))
    assert not torch.allclose(mix, mix2)  # the augmentation did something

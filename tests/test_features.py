from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from audiotool.features import AudioSRMel
from audiotool.models.vocoder import GriffinLimVocoder, hifigan_tiny


def test_audiosr_mel_matches_independent_numpy() -> None:
    rng = np.random.default_rng(0)
    wave = rng.normal(0, 0.1, 48000 * 2).astype(np.float32)
    ours = AudioSRMel()(torch.from_numpy(wave)[None])[0].numpy()  # (N, 256)
    pad = (2048 - 480) // 2
    x = np.pad(wave.astype(np.float64), pad, mode="reflect")
    n = 1 + (len(x) - 2048) // 480
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(2048) / 2048)  # periodic Hann
    frames = np.stack([x[i * 480 : i * 480 + 2048] * win for i in range(n)])
    mag = np.abs(np.fft.rfft(frames, axis=1))
    basis = librosa.filters.mel(sr=48000, n_fft=2048, n_mels=256, fmin=20, fmax=24000)
    ref = np.log(np.maximum(mag @ basis.T, 1e-5))
    assert ours.shape == ref.shape == (200, 256)
    # float32 STFT vs float64 FFT: log differences stay below 1e-3 except near the clamp floor
    assert np.abs(ours - ref).max() < 1e-3


def test_hifigan_tiny_length_rule() -> None:
    voc = hifigan_tiny().eval()
    assert sum(p.numel() for p in voc.parameters()) < 1_000_000
    with torch.no_grad():
        for n in (1, 7, 100):
            assert voc(torch.randn(1, 256, n)).shape == (1, 1, 480 * n + 16)


def test_griffinlim_round_trip() -> None:
    t = torch.arange(48000) / 48000
    wave = sum(0.2 / k * torch.sin(2 * torch.pi * 220 * k * t) for k in range(1, 8))[None]
    mel_fn = AudioSRMel()
    mel = mel_fn(wave)
    voc = GriffinLimVocoder(n_iter=32)
    out = voc(mel.transpose(1, 2))[:, 0]
    assert out.shape == (1, mel.shape[1] * 480)
    again = mel_fn(out)
    # mean absolute log-mel error: harmonic content is recovered (a random signal scores > 2)
    err = (again - mel)[:, 5:-5].abs().mean()
    noise = (mel_fn(torch.randn_like(wave) * 0.1) - mel)[:, 5:-5].abs().mean()
    assert float(err) < 0.5 and float(err) < float(noise) / 4
    assert torch.equal(out, voc(mel.transpose(1, 2))[:, 0])  # deterministic


@pytest.mark.parametrize(
    ("rate", "n_fft", "n_mels", "f_min", "f_max"),
    [
        (48000, 2048, 256, 20.0, 24000.0),
        (16000, 1024, 80, 0.0, 8000.0),
        (44100, 2048, 64, 30.0, 16000.0),
    ],
)
def test_mel_filters_and_centres_equal_librosa(
    rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float
) -> None:
    """The filterbank (torchaudio's, fast to build) and the centre frequencies (ours) are
    librosa's Slaney filters (htk=False) to float32 rounding."""
    from audiotool.features import mel_basis, mel_frequencies

    want = librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max)
    got = mel_basis(rate, n_fft, n_mels, f_min, f_max).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    centres = librosa.mel_frequencies(n_mels=n_mels + 2, fmin=f_min, fmax=f_max)
    assert np.allclose(mel_frequencies(n_mels + 2, f_min, f_max), centres, rtol=1e-9)

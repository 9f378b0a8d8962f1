from __future__ import annotations

from pathlib import Path

import pytest
import torch

from audiotool.checkpoints import save_pretrained
from audiotool.errors import InputError
from audiotool.hub import load_model
from audiotool.metrics import si_sdr
from audiotool.models.codec import PRESETS, CodecConfig, build_model, codec_loss


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(PRESETS["tiny"]())


def test_shapes_for_any_length() -> None:
    m = _tiny().eval()
    fs = m.frame_samples
    assert fs == 128
    with torch.no_grad():
        for t in (m.min_samples, 1000, 4 * fs, 4 * fs + 1):
            x = torch.randn(3, t)
            assert m(x).shape == (3, t)
            assert m.encode(F_pad(x, fs)).shape == (3, max(t, m.min_samples) // fs, 8)
        assert m.decode(torch.randn(2, 5, 8)).shape == (2, 5 * fs)


def F_pad(x: torch.Tensor, fs: int) -> torch.Tensor:
    return x if x.shape[-1] >= fs else torch.nn.functional.pad(x, (0, fs - x.shape[-1]))


def test_encode_refuses_too_short_input() -> None:
    m = _tiny()
    with pytest.raises(InputError, match="at least"):
        m.encode(torch.randn(1, m.min_samples - 1))


def test_compressed_spectrum_keeps_the_phase() -> None:
    m = _tiny()
    x = torch.randn(2, 2048)
    spec = m.stft(x)
    c = m.compressed(spec)
    k = spec.shape[1]
    back = torch.complex(c[:, :k], c[:, k:])
    assert torch.allclose(torch.angle(back), torch.angle(spec), atol=1e-4)
    assert torch.allclose(back.abs(), spec.abs().pow(m.compress), rtol=1e-4, atol=1e-5)


def test_decoder_output_is_inverted_exactly() -> None:
    """A decoder that returns the compressed input spectrum reproduces the waveform: the
    decompression and iSTFT are the exact inverse of the encoder's front end."""
    m = _tiny()
    x = 0.3 * torch.randn(1, 40 * m.frame_samples)
    c = m.compressed(m.stft(x))
    k = c.shape[1] // 2
    m.decoder.forward = lambda z: (c[:, :k], c[:, k:])  # type: ignore[method-assign]
    y = m.decode(torch.zeros(1, 40, 8))
    assert si_sdr(x, y) > 60


def test_training_improves_the_round_trip() -> None:
    m = _tiny()
    t = torch.arange(4096) / 16000
    x = torch.stack([0.5 * torch.sin(2 * torch.pi * f * t) for f in (220.0, 440.0, 660.0)])
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = float(codec_loss(m, x).detach())
    for _ in range(40):
        loss = codec_loss(m, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(codec_loss(m, x).detach()) < 0.8 * first


def test_saves_and_loads_strictly(tmp_path: Path) -> None:
    cfg = PRESETS["tiny"]()
    folder = save_pretrained(_tiny(), cfg, tmp_path / "codec")
    loaded = load_model(str(folder))
    assert isinstance(loaded.config, CodecConfig) and loaded.config.family == "codec"
    x = torch.randn(1, 3000)
    ref = _tiny().eval()
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), ref(x), atol=1e-6)


def test_loss_reuses_the_reference_spectrum_and_equals_the_forward_round_trip() -> None:
    """codec_loss decodes from the spectrum it also scores against; that must be exactly
    the model's own forward (so training optimises what reconstruct runs)."""
    from audiotool.features import log_mel_power
    from audiotool.losses import multi_resolution_stft_loss

    m = _tiny().eval()
    x = 0.2 * torch.randn(2, 20 * m.frame_samples)
    with torch.no_grad():
        est = m(x)
        expected = multi_resolution_stft_loss(x, est)
        expected = expected + (log_mel_power(x) - log_mel_power(est)).abs().mean()
        diff = m.compressed(m.stft(x)) - m.compressed(m.stft(est))
        snr = 10 * torch.log10((x.pow(2).sum(-1) + 1e-8) / ((x - est).pow(2).sum(-1) + 1e-8))
        expected = expected + 10.0 * diff.abs().mean() - 0.1 * snr.mean()
        assert torch.allclose(codec_loss(m, x), expected, rtol=1e-5)
    with pytest.raises(InputError, match="whole latent frames"):
        codec_loss(m, torch.randn(1, 20 * m.frame_samples + 1))

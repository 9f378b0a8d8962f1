from __future__ import annotations

from pathlib import Path

import pytest
import torch

from audiotool.errors import ConfigError, InputError
from audiotool.losses import multi_resolution_stft_loss
from audiotool.models.rae import (
    PRESETS,
    build_model,
    compute_latent_stats,
    rae_loss,
)


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(PRESETS["tiny"]()).eval()


@pytest.mark.parametrize("samples", [100, 640, 5000, 16000])
def test_round_trip_length(tiny: torch.nn.Module, samples: int) -> None:
    with torch.no_grad():
        out = tiny(torch.randn(2, samples) * 0.1)
    assert out.shape == (2, samples) and torch.isfinite(out).all()


def test_latents_and_mel_shapes(tiny: torch.nn.Module) -> None:
    x = torch.randn(1, 6400)
    with torch.no_grad():
        z = tiny.encode(x)
        mel = tiny.decode_mel(z)
    assert z.shape == (1, 10, 16)  # 640 samples (4 mel frames) per latent frame
    assert mel.shape == (1, 40, 80)


def test_frozen_encoder_gets_no_gradient() -> None:
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"]()).train()
    assert not model.encoder.training  # train() keeps the representation in eval mode
    loss = rae_loss(model, torch.randn(2, 6400))
    loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert any(p.grad is not None for p in model.decoder.parameters())


def test_latent_stats_round_trip(tmp_path: Path) -> None:
    from audiotool.checkpoints import save_pretrained
    from audiotool.hub import load_model

    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"]()).eval()
    with torch.no_grad():
        mean, std = compute_latent_stats(model.encode_raw(torch.randn(4, 6400)))
    model.set_latent_stats(mean, std)
    with torch.no_grad():
        z = model.encode(torch.randn(4, 6400))
    assert abs(float(z.mean())) < 0.5
    save_pretrained(model, PRESETS["tiny"](), tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"), task="reconstruct").model
    assert torch.equal(loaded.latent_mean, mean) and torch.equal(loaded.latent_std, std)


def test_decoder_trains() -> None:
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"]()).train()
    x = torch.randn(2, 6400) * 0.1
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = rae_loss(model, x)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_audio_branch_encoder_variant() -> None:
    cfg = PRESETS["audio-branch"]().replace(
        branch_d_model=32,
        branch_num_layers=1,
        branch_num_heads=2,
        branch_ffn_dim=64,
        branch_subsampling_channels=8,
        decoder_dim=32,
        decoder_depth=1,
        griffinlim_iters=2,
    )
    model = build_model(cfg).eval()
    with torch.no_grad():
        z = model.encode(torch.randn(1, 12800))
        out = model(torch.randn(1, 12800))
    assert z.shape == (1, 10, 32) and out.shape == (1, 12800)


def test_short_input_to_encode_is_a_typed_error(tiny: torch.nn.Module) -> None:
    with pytest.raises(InputError):
        tiny.encode(torch.randn(1, tiny.min_samples - 1))
    assert tiny.encode(torch.randn(1, tiny.min_samples)).shape[1] >= 1


def test_hifigan_needs_its_hop() -> None:
    with pytest.raises(ConfigError):
        build_model(PRESETS["tiny"]().replace(vocoder="hifigan", hop=80))


def test_hifigan_loss_trains_the_vocoder() -> None:
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"]().replace(vocoder="hifigan")).train()
    x = torch.randn(1, 6400) * 0.1
    loss = rae_loss(model, x)
    loss.backward()
    assert any(
        p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.vocoder.parameters()
    )
    assert all(p.grad is None for p in model.encoder.parameters())
    mel_only = rae_loss(model, x, stft_weight=0.0)
    assert loss.item() > mel_only.item()


def test_mr_stft_loss() -> None:
    torch.manual_seed(0)
    a = torch.randn(2, 8000)
    assert float(multi_resolution_stft_loss(a, a)) < 1e-6
    assert float(multi_resolution_stft_loss(a, a + 0.1 * torch.randn(2, 8000))) < float(
        multi_resolution_stft_loss(a, torch.randn(2, 8000))
    )

"""Upsample model family: AudioSR layout, global encoder, presets, losses."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from audiotool.importers.audiosr import DROPPED_COND_PREFIXES
from audiotool.models.global_encoder import GlobalAudioEncoder
from audiotool.models.latent_diffusion import (
    LatentDiffusionConfig,
    build_audiosr,
    build_model,
    diffusion_loss,
    diffusion_loss_parts,
    level_bound_penalty,
    tiny_config,
)
from audiotool.models.unet import GlobalConditionedSpatialTransformer, SpatialTransformer

MANIFEST = Path(__file__).parent.parent / "importers" / "data" / "audiosr_manifest.json.gz"


def reduced_audiosr(global_encoder: bool = False) -> LatentDiffusionConfig:
    """AudioSR's layout (VAE + cond VAE + HiFi-GAN + 2 transformers per level), small widths."""
    return LatentDiffusionConfig(
        vae_ch=32,
        hifigan_channels=64,
        model_channels=32,
        use_global_encoder=global_encoder,
        global_hidden=32,
    )


def test_full_audiosr_names_and_shapes_match_the_reference() -> None:
    with gzip.open(MANIFEST, "rt") as fh:
        ref = {k: tuple(v) for k, v in json.load(fh).items()}
    with torch.device("meta"):
        model = build_audiosr()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = set(ref) - set(ours)
    assert set(ours) - set(ref) == set()
    assert all(k.startswith(DROPPED_COND_PREFIXES) for k in missing)  # only the unused parts
    assert len(missing) == 396
    assert {k: ours[k] for k in ours} == {k: ref[k] for k in ours}
    unet = sum(
        v.numel() for k, v in model.state_dict().items() if k.startswith("model.diffusion_model.")
    )
    assert unet == 258_195_088  # AudioSR's UNet, counted by the reference


def test_global_encoder_adds_only_encoder_and_cross_attention() -> None:
    with torch.device("meta"):
        plain = set(build_audiosr().state_dict())
        withg = set(build_audiosr(global_encoder=True).state_dict())
    assert plain < withg
    assert all(".global_attn." in k or ".global_encoder." in k for k in withg - plain)


def test_toggle_replaces_every_spatial_transformer() -> None:
    for flag in (False, True):
        model = build_model(reduced_audiosr(flag))
        sts = [m for m in model.modules() if isinstance(m, SpatialTransformer)]
        glob = [m for m in sts if isinstance(m, GlobalConditionedSpatialTransformer)]
        assert len(sts) == 32  # 12 input + 2 middle + 18 output, as AudioSR
        assert len(glob) == (32 if flag else 0)
        assert hasattr(model.unet, "global_encoder") is flag


def test_zero_init_gives_exactly_the_same_output() -> None:
    torch.manual_seed(0)
    plain = build_model(reduced_audiosr(False)).eval()
    torch.manual_seed(1)
    glob = build_model(reduced_audiosr(True)).eval()
    state = glob.state_dict()
    state.update(plain.state_dict())  # shared weights from the "imported" model
    glob.load_state_dict(state)
    x, cond = torch.randn(2, 16, 16, 8), torch.randn(2, 16, 16, 8)
    t = torch.tensor([3, 500])
    mel = torch.randn(1, 300, 256)
    with torch.no_grad():
        ctx = glob.encode_global(mel)
        a = plain(x, t, cond)
        b = glob(x, t, cond, ctx)
    assert ctx["global"].abs().sum() > 0  # the context is real ...
    assert torch.equal(a, b)  # ... but the zero-initialised projections ignore it


def test_context_changes_output_once_trained() -> None:
    torch.manual_seed(0)
    model = build_model(reduced_audiosr(True)).eval()
    for m in model.modules():
        if isinstance(m, GlobalConditionedSpatialTransformer):
            torch.nn.init.normal_(m.global_attn.to_out.weight, std=0.05)
    x, cond, t = torch.randn(1, 16, 16, 8), torch.randn(1, 16, 16, 8), torch.tensor([100])
    with torch.no_grad():
        a = model(x, t, cond, model.encode_global(torch.randn(1, 200, 256)))
        b = model(x, t, cond, model.encode_global(torch.randn(1, 200, 256)))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("frames", [1, 7, 100, 1000])
@pytest.mark.parametrize("batch", [1, 3])
def test_global_encoder_any_length(frames: int, batch: int) -> None:
    enc = GlobalAudioEncoder().eval()
    g, seq = enc(torch.randn(batch, 1, 64, frames))
    assert g.shape == (batch, 64)
    assert seq.shape == (batch, int(GlobalAudioEncoder.output_lengths(torch.tensor(frames))), 64)
    assert torch.isfinite(g).all() and torch.isfinite(seq).all()


def test_global_encoder_padding_mask_matches_single() -> None:
    torch.manual_seed(0)
    enc = GlobalAudioEncoder().eval()
    a, b = torch.randn(1, 1, 64, 80), torch.randn(1, 1, 64, 48)
    batch = torch.cat([a, torch.nn.functional.pad(b, (0, 32))])
    with torch.no_grad():
        g_batch, _ = enc(batch, lengths=torch.tensor([80, 48]))
        g_a, _ = enc(a)
        g_b, _ = enc(b)
    assert torch.allclose(g_batch[0], g_a[0], atol=1e-5)
    assert torch.allclose(g_batch[1], g_b[0], atol=1e-5)  # padding is masked out exactly


def test_context_batch_one_broadcasts() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    for m in model.modules():
        if isinstance(m, GlobalConditionedSpatialTransformer):
            torch.nn.init.normal_(m.global_attn.to_out.weight, std=0.05)
    ctx = model.encode_global(torch.randn(1, 120, 256))
    x, cond, t = torch.randn(3, 1, 64, 32), torch.randn(3, 1, 64, 32), torch.tensor([5, 50, 500])
    rep = {k: v.expand(3, *v.shape[1:]) for k, v in ctx.items()}
    with torch.no_grad():
        assert torch.allclose(model(x, t, cond, ctx), model(x, t, cond, rep), atol=1e-6)
        # denoise runs one item at a time on the CPU (batch-invariance): the same to round-off
        per_item = model.denoise(x, t, {"concat": cond, **ctx})
        assert torch.allclose(per_item, model(x, t, cond, ctx), atol=1e-5)
        for i in range(3):
            one = {"concat": cond[i : i + 1], **ctx}
            assert torch.equal(per_item[i : i + 1], model.denoise(x[i : i + 1], t[i : i + 1], one))


def test_tiny_preset_size_and_round_trip(tmp_path: Path) -> None:
    from audiotool.checkpoints import save_pretrained
    from audiotool.hub import load_model

    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_model(cfg).eval()
    n = sum(p.numel() for p in model.parameters())
    assert 1e6 < n < 5e6
    save_pretrained(model, cfg, tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"), task="upsample")
    x, cond, t = torch.randn(1, 1, 64, 32), torch.randn(1, 1, 64, 32), torch.tensor([10])
    ctx = model.encode_global(torch.randn(1, 100, 256))
    with torch.no_grad():
        assert torch.equal(model(x, t, cond, ctx), loaded.model(x, t, cond, ctx))
    assert loaded.config == cfg


def test_latent_shapes_and_vocoder_lengths() -> None:
    model = build_model(reduced_audiosr()).eval()
    mel = torch.randn(2, 128, 256)
    with torch.no_grad():
        z = model.encode_condition(mel)
        assert z.shape == (2, 16, 16, 32)  # 8x down in time and frequency
        assert model.decode(z).shape == (2, 128, 256)
        assert model.vocode(mel[:, :7]).shape == (2, 480 * 7 + 16)
    tiny = build_model(tiny_config()).eval()
    with torch.no_grad():
        zt = tiny.encode_condition(mel)
        assert zt.shape == (2, 1, 128, 32)
        assert tiny.vocode(mel[:, :7]).shape == (2, 480 * 7)


def test_diffusion_loss_trains() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config())
    batch = {
        "target_mel": torch.randn(2, 64, 256) - 5,
        "cond_mel": torch.randn(2, 64, 256) - 5,
        "context_mel": torch.randn(2, 200, 256) - 5,
    }
    gen = torch.Generator().manual_seed(0)
    loss = diffusion_loss(model, batch, generator=gen)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    enc_grads = [p.grad for p in model.unet.global_encoder.parameters() if p.grad is not None]
    assert enc_grads  # the context path is trained end to end
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = diffusion_loss(model, batch, generator=torch.Generator().manual_seed(0))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_schedule_buffers_match_reference_values() -> None:
    model = build_model(tiny_config())
    acp = model.alphas_cumprod
    assert float(acp[0]) == pytest.approx(0.9999587, abs=1e-7) and float(acp[999]) == 0.0
    assert float(model.betas[999]) == pytest.approx(1.0)
    assert torch.isfinite(model.sqrt_recip_alphas_cumprod).all()


def test_schedule_buffers_are_audiosr_exact() -> None:
    """All 12 buffers equal LDM/AudioSR ``register_schedule`` (numpy float64, float32 cast)."""
    import numpy as np

    n, s = 1000, 0.008
    f = np.cos((np.arange(n + 1) / n + s) / (1 + s) * np.pi / 2) ** 2
    f = f / f[0]
    betas = 1 - f[1:] / f[:-1]
    alphas = 1 - betas
    ac = np.cumprod(alphas)
    prev = np.append(1.0, ac[:-1])
    pv = betas * (1 - prev) / (1 - ac)
    ref = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - ac),
        "log_one_minus_alphas_cumprod": np.log(1 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1 / (ac + 1e-10)),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / (ac + 1e-10) - 1),
        "posterior_variance": pv,
        "posterior_log_variance_clipped": np.log(np.maximum(pv, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(prev) / (1 - ac),
        "posterior_mean_coef2": (1 - prev) * np.sqrt(alphas) / (1 - ac),
    }
    model = build_model(tiny_config())
    for name, value in ref.items():
        ours = getattr(model, name)
        theirs = torch.tensor(value, dtype=torch.float32)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0, msg=name)


def test_diffusion_loss_leaves_the_first_stage_frozen() -> None:
    model = build_model(reduced_audiosr(True))
    batch = {"target_mel": torch.randn(1, 64, 256) - 5, "cond_mel": torch.randn(1, 64, 256) - 5}
    diffusion_loss(model, batch, generator=torch.Generator().manual_seed(0)).backward()
    stages = [p for n, p in model.named_parameters() if not n.startswith("model.")]
    assert stages and all(p.grad is None for p in stages)  # VAE encoders are not fine-tuned
    assert model.unet.out[2].weight.grad is not None


def test_level_bound_penalty_only_above_the_ceiling() -> None:
    mask = torch.zeros(1, 8)
    mask[0, 4:] = 1.0
    mel = torch.full((1, 3, 8), -3.0)  # every bin: magnitude e^-3, energy 4 e^-6 above the cut
    energy = float(4 * torch.exp(torch.tensor(-6.0)))
    at = level_bound_penalty(mel, torch.full((1, 3), energy), mask)
    assert float(at) == pytest.approx(0.0, abs=1e-8)
    assert float(level_bound_penalty(mel, torch.full((1, 3), 10 * energy), mask)) == 0.0
    over = level_bound_penalty(mel, torch.full((1, 3), energy / 100), mask)  # 100x too loud
    assert float(over) == pytest.approx(float(torch.log(torch.tensor(100.0))) ** 2, rel=1e-3)
    louder_low_band = mel.clone()
    louder_low_band[..., :4] = 5.0  # bins below the cutoff are not bounded
    assert float(level_bound_penalty(louder_low_band, torch.full((1, 3), energy), mask)) < 1e-8


def test_level_bound_changes_the_training_loss_only_when_exceeded() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config())
    mask = (torch.arange(256) >= 160).float().expand(2, 256)
    batch = {
        "target_mel": torch.randn(2, 64, 256) - 5,
        "cond_mel": torch.randn(2, 64, 256) - 5,
        "context_mel": torch.randn(2, 200, 256) - 5,
        "bound_mask": mask,
    }

    def loss(bound: float, weight: float) -> dict[str, torch.Tensor]:
        data = {**batch, "bound_energy": torch.full((2, 64), bound)}
        gen = torch.Generator().manual_seed(0)
        return diffusion_loss_parts(
            model, data, cond_drop_prob=0.0, generator=gen, level_bound_weight=weight
        )

    plain = diffusion_loss(model, batch, generator=torch.Generator().manual_seed(0))
    off = loss(1e-12, 0.0)
    assert set(off) == {"mse"} and torch.equal(off["mse"], plain)  # weight 0: unchanged
    loose = loss(1e6, 1.0)  # a ceiling far above anything the model predicts: no cost
    assert float(loose["level_bound"].detach()) == 0.0 and torch.equal(loose["mse"], plain)
    tight = loss(1e-12, 1.0)  # a ceiling everything exceeds
    assert float(tight["level_bound"].detach()) > 1.0
    total = diffusion_loss(
        model,
        {**batch, "bound_energy": torch.full((2, 64), 1e-12)},
        cond_drop_prob=0.0,
        generator=torch.Generator().manual_seed(0),
        level_bound_weight=0.5,
    )
    expected = float((plain + 0.5 * tight["level_bound"]).detach())
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    total.backward()  # the penalty reaches the UNet through x̂₀
    assert model.unet.out[2].weight.grad is not None
    assert float(model.unet.out[2].weight.grad.abs().sum()) > 0

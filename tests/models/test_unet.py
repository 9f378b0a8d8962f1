"""UNet: numerical parity with AudioSR's ``openaimodel.UNetModel`` and the global toggle.

The parity fixture ``data/unet_parity.json`` holds the REFERENCE implementation's output for a
reduced config in AudioSR's layout (two SpatialTransformers per attention position, no
cross-attention context), with weights and inputs given by the closed-form
:func:`deterministic_weights` / :func:`deterministic_input` below, so no weights are stored.
Regenerate it with ``tests/models/data/make_unet_parity.py`` (needs an AudioSR checkout).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from audiotool.models.unet import (
    GlobalConditionedSpatialTransformer,
    SpatialTransformer,
    UNetModel,
    timestep_embedding,
)

PARITY = Path(__file__).parent / "data" / "unet_parity.json"

#: AudioSR's layout at a reduced size (the fixture was produced with these arguments)
PARITY_ARGS: dict[str, object] = dict(
    in_channels=4,
    out_channels=2,
    model_channels=32,
    channel_mult=(1, 2, 3),
    num_res_blocks=2,
    attention_resolutions=(4, 2),
    num_head_channels=16,
    transformer_depth=1,
    extra_sa_layer=True,
)


def deterministic_weights(model: nn.Module) -> None:
    """Overwrite every parameter with a closed-form, non-trivial value (no RNG involved).

    Norm scales become ``1 + 0.1 sin(.)``; other tensors ``sin(.) / sqrt(fan_in)`` so the
    activations stay O(1) through the network and every layer matters (query/key weights x3,
    so attention is far from uniform).
    """
    with torch.no_grad():
        for i, (name, p) in enumerate(sorted(model.named_parameters())):
            k = torch.arange(p.numel(), dtype=torch.float64)
            wave = torch.sin(k * 0.7071 + 0.37 * i + 0.1).view(p.shape)
            is_norm_scale = p.ndim == 1 and name.endswith("weight")
            if is_norm_scale:
                value = 1 + 0.1 * wave
            elif p.ndim == 1:
                value = 0.05 * wave
            else:
                value = wave * (1.5 / math.sqrt(p[0].numel()))
                if name.endswith(("to_q.weight", "to_k.weight")):
                    value = 3 * value  # sharper attention, so the maps matter
            p.copy_(value.to(p.dtype))


def deterministic_input(batch: int, channels: int, frames: int, bins: int) -> Tensor:
    """``(B, C, T, F)`` closed-form test input."""
    k = torch.arange(batch * channels * frames * bins, dtype=torch.float64)
    return torch.sin(k * 0.113 + 0.5).view(batch, channels, frames, bins).float()


def test_matches_audiosr_reference_implementation() -> None:
    ref = json.loads(PARITY.read_text())
    model = UNetModel(**PARITY_ARGS).eval()  # type: ignore[arg-type]
    deterministic_weights(model)
    x = deterministic_input(*ref["input_shape"])
    t = torch.tensor(ref["timesteps"])
    with torch.no_grad():
        out = model(x, t)
    expected = torch.tensor(ref["output"]).view(out.shape)
    assert expected.abs().max() > 0.1  # the fixture is not degenerate
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=5e-4)  # float32, |out| ~ 7


def test_timestep_embedding_is_cos_then_sin() -> None:
    emb = timestep_embedding(torch.tensor([0, 7]), 8)
    assert emb.shape == (2, 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1, :4], torch.cos(7 * freqs))
    torch.testing.assert_close(emb[1, 4:], torch.sin(7 * freqs))


def test_global_toggle_keeps_every_shared_name_and_shape() -> None:
    plain = UNetModel(**PARITY_ARGS)  # type: ignore[arg-type]
    glob = UNetModel(**PARITY_ARGS, use_global_encoder=True, global_hidden=32)  # type: ignore[arg-type]
    ps, gs = plain.state_dict(), glob.state_dict()
    assert set(ps) < set(gs)
    assert all(ps[k].shape == gs[k].shape for k in ps)
    assert all(".global_attn." in k or k.startswith("global_encoder.") for k in set(gs) - set(ps))
    n_plain = sum(isinstance(m, SpatialTransformer) for m in plain.modules())
    n_glob = sum(isinstance(m, GlobalConditionedSpatialTransformer) for m in glob.modules())
    assert n_plain == n_glob == 22  # 2 per position: 2 levels x (2 in + 3 out) + 1 middle


def test_precomputed_context_broadcasts_and_is_reused() -> None:
    torch.manual_seed(0)
    model = UNetModel(**PARITY_ARGS, use_global_encoder=True, global_hidden=32).eval()  # type: ignore[arg-type]
    for m in model.modules():  # "trained": the global path now changes the output
        if isinstance(m, GlobalConditionedSpatialTransformer):
            nn.init.normal_(m.global_attn.to_out.weight, std=0.05)
    mel = torch.randn(1, 90, 256)
    x, t = deterministic_input(3, 4, 16, 8), torch.tensor([1, 400, 981])
    with torch.no_grad():
        ctx = model.encode_global(mel)
        once = model(x, t, context=ctx)
        per_item = model(x, t, context={k: v.expand(3, *v.shape[1:]) for k, v in ctx.items()})
        again = model(x, t, context=model.encode_global(mel))
        other = model(x, t, context=model.encode_global(torch.randn(1, 90, 256)))
    torch.testing.assert_close(once, per_item, rtol=0, atol=1e-6)
    assert torch.equal(once, again)  # the context is a pure function of the mel
    assert not torch.allclose(once, other, atol=1e-4)

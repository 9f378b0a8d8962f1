"""GlobalAudioEncoder and GlobalCrossAttention (seeds 000/001) in isolation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from audiotool.features import sinusoidal_positions
from audiotool.models.global_encoder import (
    GlobalAudioEncoder,
    GlobalCrossAttention,
)


def test_positions_are_computed_for_any_length() -> None:
    long = sinusoidal_positions(1000, 16, device=torch.device("cpu"))
    short = sinusoidal_positions(5, 16, device=torch.device("cpu"))
    assert long.shape == (1000, 16) and short.shape == (5, 16)
    assert torch.equal(short, long[:5])  # no fixed table: a prefix is the same at any length
    assert torch.equal(long[0], torch.tensor([0.0, 1.0] * 8))  # sin(0), cos(0)
    assert not torch.allclose(long[1], long[2])


@pytest.mark.parametrize("frames", [1, 2, 7, 8, 9, 31, 100])
def test_output_lengths_equal_the_cnn_output(frames: int) -> None:
    enc = GlobalAudioEncoder(hidden=32, context_dim=8).eval()
    _, seq = enc(torch.randn(1, 1, 16, frames))
    assert seq.shape[1] == int(enc.output_lengths(torch.tensor(frames)))


def _batch_vs_single(lengths: list[int]) -> float:
    torch.manual_seed(0)
    enc = GlobalAudioEncoder(hidden=32, context_dim=8).eval()
    n = max(lengths)
    items = [torch.randn(1, 1, 16, m) for m in lengths]
    batch = torch.cat([F.pad(x, (0, n - x.shape[-1])) for x in items])
    with torch.no_grad():
        g_batch, s_batch = enc(batch, lengths=torch.tensor(lengths))
        worst = 0.0
        for i, x in enumerate(items):
            g, s = enc(x)
            worst = max(worst, float((g_batch[i] - g[0]).abs().max()))
            worst = max(worst, float((s_batch[i, : s.shape[1]] - s[0]).abs().max()))
    return worst


def test_padded_batch_equals_one_by_one_for_multiples_of_8() -> None:
    assert _batch_vs_single([80, 48, 8]) < 1e-5


def test_padded_batch_equals_one_by_one_for_any_length() -> None:
    assert _batch_vs_single([80, 45, 1]) < 1e-5


def test_cross_attention_starts_as_identity_and_broadcasts_context() -> None:
    torch.manual_seed(0)
    attn = GlobalCrossAttention(dim=32, context_dim=8, num_heads=4).eval()
    x = torch.randn(3, 50, 32)
    g, seq = torch.randn(1, 8), torch.randn(1, 6, 8)
    with torch.no_grad():
        assert torch.equal(attn(x, g, seq), x)  # zero-initialised output projection
        torch.nn.init.normal_(attn.to_out.weight, std=0.1)
        shared = attn(x, g, seq)
        per_item = attn(x, g.expand(3, -1), seq.expand(3, -1, -1))
        vector_only = attn(x, g, None)
    assert not torch.allclose(shared, x)
    torch.testing.assert_close(shared, per_item, rtol=0, atol=1e-6)
    assert vector_only.shape == x.shape and not torch.allclose(vector_only, shared)

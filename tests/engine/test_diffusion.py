from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import Tensor

from audiotool.engine.diffusion import SamplingSettings, sample_chunked
from audiotool.engine.schedules import cosine_alphas_cumprod, ddim_timesteps

ACP = cosine_alphas_cumprod()
#: 4 deterministic DDIM steps with guidance 2 (unconditional concat -11.5)
GUIDED = SamplingSettings(ddim_timesteps(4), ACP, guidance=2.0, uncond_latent=-11.5)


class CountingDenoiser:
    """Pointwise in time (so chunking does not change the maths) and context-aware."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.net = torch.nn.Conv2d(4, 2, 1)
        self.calls: list[int] = []
        self.contexts: list[Tensor] = []

    def __call__(self, x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        self.calls.append(x.shape[0])
        self.contexts.append(cond["global"])
        h = torch.cat([x, cond["concat"]], dim=1)
        return self.net(h) + cond["global"].view(-1, 1, 1, 1)


def run(batch_size: int, **kw: Any) -> tuple[Tensor, CountingDenoiser]:
    """The guided DDIM (η = 1) run; ``kw`` overrides :class:`SamplingSettings` fields."""
    den = CountingDenoiser()
    cond = torch.randn(2, 2, 37, 4, generator=torch.Generator().manual_seed(5))
    ctx = {"global": torch.tensor([0.5, -0.5])}
    settings = dataclasses.replace(GUIDED, **{"eta": 1.0, **kw})
    with torch.no_grad():
        out = sample_chunked(
            den,
            cond,
            settings,
            chunk=16,
            overlap=4,
            context=ctx,
            generator=torch.Generator().manual_seed(9),
            batch_size=batch_size,
        )
    return out, den


def test_shape_and_batch_size_independence() -> None:
    a, den_a = run(1)
    b, den_b = run(3)
    c, _ = run(100)
    assert a.shape == (2, 2, 37, 4)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)
    assert max(den_b.calls) == 6  # 3 spans x (cond + uncond) in one forward
    assert len(den_a.calls) > len(den_b.calls)  # spans batched together, not one by one


def test_context_reaches_every_span_and_step() -> None:
    """Every span of item b, at every step and in both CFG halves, gets item b's context."""
    seen: list[tuple[Tensor, Tensor]] = []

    def den(x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        seen.append((cond["concat"].clone(), cond["global"].clone()))
        return torch.zeros_like(x)

    # item 0's conditioning is all +1, item 1's all -1: a span's rows say which item they are
    latent = torch.ones(2, 2, 37, 4)
    latent[1] = -1.0
    steps = 4
    with torch.no_grad():
        sample_chunked(
            den,
            latent,
            dataclasses.replace(GUIDED, timesteps=ddim_timesteps(steps)),
            chunk=16,
            overlap=4,
            context={"global": torch.tensor([0.5, -0.5])},
            generator=torch.Generator().manual_seed(0),
            batch_size=2,
        )
    rows = 0
    for concat, ctx in seen:
        n = concat.shape[0] // 2  # conditional rows, then the same spans unconditional
        item_sign = concat[:n].mean(dim=(1, 2, 3)).sign()
        assert torch.equal(ctx[:n], 0.5 * item_sign)
        assert torch.equal(ctx[n:], ctx[:n]) and bool((concat[n:] == -11.5).all())
        rows += n
    spans_per_item = 3  # 37 frames in chunks of 16 overlapping by 4
    assert rows == 2 * spans_per_item * steps


def test_seed_changes_result_and_is_reproducible() -> None:
    a, _ = run(2)
    b, _ = run(2)
    assert torch.equal(a, b)
    den = CountingDenoiser()
    cond = torch.randn(2, 2, 37, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        other = sample_chunked(
            den,
            cond,
            dataclasses.replace(GUIDED, eta=1.0),
            chunk=16,
            overlap=4,
            context={"global": torch.tensor([0.5, -0.5])},
            generator=torch.Generator().manual_seed(10),
            batch_size=2,
        )
    assert not torch.allclose(a, other)


def test_short_input_padded_to_multiple() -> None:
    seen = []

    def den(x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        seen.append(x.shape[2])
        return torch.zeros_like(x)

    out = sample_chunked(
        den,
        torch.randn(1, 2, 5, 3),
        SamplingSettings(ddim_timesteps(2), ACP),
        chunk=16,
        overlap=4,
        time_multiple=8,
    )
    assert out.shape == (1, 2, 5, 3) and set(seen) == {8}


def test_bad_shapes() -> None:
    from audiotool.errors import EngineError

    with pytest.raises(EngineError):
        sample_chunked(
            lambda x, t, c: x,
            torch.randn(2, 5, 3),
            SamplingSettings(ddim_timesteps(2), ACP),
            chunk=4,
            overlap=1,
        )


def test_per_row_is_batch_invariant() -> None:
    from audiotool.engine.batching import per_row

    torch.manual_seed(0)
    lin = torch.nn.Linear(24, 96)
    x = torch.randn(6, 24)
    x[3] = x[0]  # repeated rows are computed once
    with torch.inference_mode():
        whole = per_row(lin, x)
        parts = torch.cat([per_row(lin, x[i : i + 2]) for i in range(0, 6, 2)])
        assert torch.equal(whole, parts) and torch.equal(whole[3], whole[0])
        assert torch.allclose(whole, lin(x), atol=1e-6)
    y = per_row(lin, x)  # with gradients: the plain batched call
    assert y.requires_grad


@pytest.mark.parametrize("sampler", ["dpmpp-2m", "unipc"])
def test_solvers_batch_size_independent_and_seeded(sampler: str) -> None:
    a, den_a = run(1, eta=0.0, sampler=sampler)
    b, den_b = run(3, eta=0.0, sampler=sampler)
    ddim, _ = run(3, eta=0.0)
    assert torch.allclose(a, b, atol=1e-5) and torch.isfinite(a).all()
    assert max(den_b.calls) == 6 and len(den_a.calls) > len(den_b.calls)
    assert not torch.allclose(a, ddim, atol=1e-4)
    again, _ = run(3, eta=0.0, sampler=sampler)
    assert torch.equal(b, again)


def test_sampler_checked_up_front() -> None:
    from audiotool.errors import EngineError

    with pytest.raises(EngineError, match="sampler must be one of"):
        run(1, eta=0.0, sampler="euler")
    with pytest.raises(EngineError, match="only supported by the ddim"):
        run(1, sampler="unipc")  # run() passes eta=1.0
    with pytest.raises(EngineError, match="guidance interval"):
        SamplingSettings(ddim_timesteps(2), ACP, guidance_interval=(0.9, 0.1))

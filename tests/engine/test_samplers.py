from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from torch import Tensor

from audiotool.engine.chunking import crossfade_stitch, plan_spans
from audiotool.engine.samplers import sample_ddim
from audiotool.engine.schedules import cosine_alphas_cumprod, ddim_timesteps
from audiotool.errors import EngineError

ACP = cosine_alphas_cumprod()


def test_cosine_schedule_matches_audiosr() -> None:
    assert ACP.shape == (1000,) and ACP.dtype == torch.float32
    assert float(ACP[0]) == pytest.approx(0.9999587, abs=1e-7)
    assert float(ACP[500]) == pytest.approx(0.49229, abs=1e-5)
    assert float(ACP[999]) == 0.0
    assert bool((ACP[1:] <= ACP[:-1]).all())


def test_ddim_timesteps_spacings() -> None:
    ts = ddim_timesteps(50)
    assert ts[0] == 981 and ts[-1] == 1 and len(ts) == 50
    assert bool((ts[:-1] - ts[1:] == 20).all())
    assert ddim_timesteps(50, spacing="trailing")[0] == 999
    assert len(ddim_timesteps(7, spacing="linspace")) == 7
    with pytest.raises(EngineError):
        ddim_timesteps(0)
    every = ddim_timesteps(1000)
    assert len(set(every.tolist())) == len(every) and int(every[0]) == 999


@pytest.mark.parametrize("spacing", ["uniform", "trailing", "linspace"])
@pytest.mark.parametrize("param", ["v", "eps"])
def test_no_nan_for_any_spacing(spacing: str, param: str) -> None:
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    out = sample_ddim(
        lambda z, t, c: 0.1 * z,
        x,
        ddim_timesteps(10, spacing=spacing),  # type: ignore[arg-type]
        ACP,
        cond={},
        eta=1.0,
        parameterization=param,  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.isfinite(out).all()


def x0_denoiser(target: Tensor, parameterization: str = "v"):  # type: ignore[no-untyped-def]
    """A denoiser whose x̂₀ is always ``target``."""

    def denoise(x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        a = ACP[t].view(-1, *[1] * (x.dim() - 1)).double()
        xd = x.double()
        if parameterization == "v":
            return ((a.sqrt() * xd - target) / (1 - a).sqrt()).float()
        return ((xd - a.sqrt() * target) / (1 - a).sqrt()).float()

    return denoise


@pytest.mark.parametrize("param", ["v", "eps"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sampler_returns_known_x0(param: str, eta: float) -> None:
    target = torch.randn(2, 3, 8, 4, generator=torch.Generator().manual_seed(1)).double()
    x = torch.randn(2, 3, 8, 4, generator=torch.Generator().manual_seed(2))
    out = sample_ddim(
        x0_denoiser(target, param),
        x,
        ddim_timesteps(20),
        ACP,
        cond={},
        eta=eta,
        parameterization=param,  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(3),
        final_alpha=1.0,
    )
    assert torch.allclose(out.double(), target, atol=1e-4)
    # AudioSR's last step goes to ᾱ[0] < 1, leaving a trace of noise of about √(1-ᾱ[0])
    out2 = sample_ddim(
        x0_denoiser(target, param), x, ddim_timesteps(20), ACP, cond={}, parameterization=param
    )  # type: ignore[arg-type]
    assert float((out2.double() - target).abs().max()) < 0.05


def test_deterministic_for_a_seed() -> None:
    net = torch.nn.Conv2d(3, 3, 3, padding=1)

    def den(x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        return net(x + cond["c"])

    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = {"c": torch.randn(2, 3, 8, 8)}
    with torch.no_grad():
        runs = [
            sample_ddim(
                den,
                x,
                ddim_timesteps(5),
                ACP,
                cond=cond,
                eta=1.0,
                generator=torch.Generator().manual_seed(s),
            )
            for s in (7, 7, 8)
        ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_guidance_one_equals_conditional_and_cfg_is_one_forward() -> None:
    calls: list[int] = []

    def den(x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        calls.append(x.shape[0])
        return 0.1 * x + cond["c"]

    x = torch.randn(3, 2, 4, 4)
    cond, uncond = {"c": torch.ones(3, 2, 4, 4)}, {"c": torch.zeros(1, 2, 4, 4)}
    a = sample_ddim(den, x, ddim_timesteps(4), ACP, cond=cond, uncond=uncond, guidance=1.0)
    assert calls == [3] * 4
    b = sample_ddim(den, x, ddim_timesteps(4), ACP, cond=cond)
    assert torch.equal(a, b)
    calls.clear()
    c = sample_ddim(den, x, ddim_timesteps(4), ACP, cond=cond, uncond=uncond, guidance=3.5)
    assert calls == [6] * 4  # conditional + unconditional in ONE batched forward
    assert not torch.allclose(a, c)


def test_cfg_formula() -> None:
    def den(x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        return cond["c"].expand_as(x)

    x = torch.zeros(1, 1, 1, 1)
    ts = torch.tensor([500])
    out = sample_ddim(
        den,
        x,
        ts,
        ACP,
        cond={"c": torch.full((1, 1, 1, 1), 2.0)},
        uncond={"c": torch.full((1, 1, 1, 1), 1.0)},
        guidance=3.0,
    )
    v = 1.0 + 3.0 * (2.0 - 1.0)  # u + s (c - u)
    a_t, a0 = ACP[500].double(), ACP[0].double()
    x0, eps = -(1 - a_t).sqrt() * v, a_t.sqrt() * v
    assert float(out) == pytest.approx(float(a0.sqrt() * x0 + (1 - a0).sqrt() * eps), abs=1e-5)


def test_mismatched_cond_keys() -> None:
    with pytest.raises(EngineError, match="same keys"):
        sample_ddim(
            lambda x, t, c: x,
            torch.zeros(1, 1),
            ddim_timesteps(2),
            ACP,
            cond={"a": torch.zeros(1, 1)},
            uncond={"b": torch.zeros(1, 1)},
            guidance=2.0,
        )


def test_spans_and_crossfade() -> None:
    spans = plan_spans(100, 30, 10)
    assert spans[0].start == 0 and spans[-1].end == 100
    assert all(s.length == 30 for s in spans)
    assert all(b.start < a.end for a, b in zip(spans, spans[1:], strict=False))
    x = torch.randn(2, 100)
    chunks = [x[:, s.start : s.end] for s in spans]
    assert torch.allclose(crossfade_stitch(chunks, spans, 100), x, atol=1e-6)
    assert plan_spans(20, 30, 10) == [spans[0].__class__(0, 20)]
    # different contents blend smoothly: the seam value lies between neighbours
    a, b = torch.zeros(1, 30), torch.ones(1, 30)
    sp = plan_spans(50, 30, 10)
    y = crossfade_stitch([a, b], sp, 50)
    assert float(y[0, 19]) < 0.1 and float(y[0, 30]) > 0.9
    assert bool((y[0, 1:] >= y[0, :-1] - 1e-7).all())  # monotone crossfade

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
import torch
from torch import Tensor

from audiotool.engine.chunking import crossfade_stitch, plan_spans
from audiotool.engine.samplers import (
    SAMPLER_NAMES,
    check_interval,
    sample,
    sample_ddim,
    sample_dpmpp_2m,
    sample_unipc,
)
from audiotool.engine.schedules import (
    cosine_alphas_cumprod,
    ddim_timesteps,
    logsnr_timesteps,
    sampler_timesteps,
)
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


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_guidance_interval_guides_only_the_noise_levels_inside_it(name: str) -> None:
    seen: list[tuple[int, int]] = []  # (batch, timestep) of every forward

    def den(x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        seen.append((x.shape[0], int(t[0])))
        assert bool((t == t[0]).all())
        return 0.1 * x + cond["c"]

    x = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    cond, uncond = {"c": torch.ones(2, 2, 4, 4)}, {"c": torch.zeros(1, 2, 4, 4)}
    ts = sampler_timesteps(name, 12, ACP)
    kw = {"cond": cond, "uncond": uncond, "guidance": 3.5}
    limited = sample(name, den, x, ts, ACP, guidance_interval=(0.8, 1.0), **kw)  # type: ignore[arg-type]
    # guided (one batch of 2B) exactly where t / 1000 is in [0.8, 1], the conditional pass alone
    # (B) everywhere else
    assert seen == [(4 if int(t) >= 800 else 2, int(t)) for t in ts]
    assert 0 < sum(b == 4 for b, _ in seen) < len(ts)
    seen.clear()
    full = sample(name, den, x, ts, ACP, **kw)  # type: ignore[arg-type]
    assert [b for b, _ in seen] == [4] * len(ts)
    assert not torch.allclose(limited, full)
    # an interval no timestep falls in is guidance 1; the full one is the default
    nowhere = sample(name, den, x, ts, ACP, guidance_interval=(0.9995, 1.0), **kw)  # type: ignore[arg-type]
    assert torch.equal(nowhere, sample(name, den, x, ts, ACP, cond=cond))
    everywhere = sample(name, den, x, ts, ACP, guidance_interval=(0.0, 1.0), **kw)  # type: ignore[arg-type]
    assert torch.equal(everywhere, full)


@pytest.mark.parametrize("bad", [(-0.1, 1.0), (0.5, 0.4), (0.2, 1.5)])
def test_guidance_interval_is_checked(bad: tuple[float, float]) -> None:
    with pytest.raises(EngineError, match="0 <= lo <= hi <= 1"):
        check_interval(bad)
    with pytest.raises(EngineError):
        sample_dpmpp_2m(
            lambda x, t, c: x,
            torch.zeros(1, 1, 2, 2),
            torch.tensor([500]),
            ACP,
            cond={},
            uncond={},
            guidance=2.0,
            guidance_interval=bad,
        )


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


# --------------------------------------------------------------------------- ODE solvers
# Closed form: data x0 ~ N(MU, S^2) per element. Then x_t ~ N(a MU, a^2 S^2 + s^2)
# (a = sqrt(abar), s = sqrt(1 - abar)), the exact denoiser is
#   E[x0 | x_t] = MU + a S^2 (x_t - a MU) / var,  E[eps | x_t] = s (x_t - a MU) / var,
# and the probability-flow ODE keeps z = (x_t - a MU) / sqrt(var) constant, so its exact
# solution from any start is known.

ACP64 = cosine_alphas_cumprod(dtype=torch.float64)
MU, S = 1.5, 0.5
SOLVERS = {"ddim": sample_ddim, "dpmpp-2m": sample_dpmpp_2m, "unipc": sample_unipc}


def gaussian_denoiser(parameterization: str, shift: float = 0.0):  # type: ignore[no-untyped-def]
    """The exact v / eps prediction for N(MU + shift, S^2) data."""
    mu = MU + shift

    def denoise(x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        a2 = ACP64[t].view(-1, *[1] * (x.dim() - 1))
        a, sg = a2.sqrt(), (1 - a2).sqrt()
        xd = x.double()
        var = a2 * S * S + sg * sg
        x0 = mu + a * S * S * (xd - a * mu) / var
        eps = sg * (xd - a * mu) / var
        return (eps if parameterization == "eps" else a * eps - sg * x0).float()

    return denoise


def pf_ode_solution(x: Tensor, t0: int, abar_end: float) -> Tensor:
    a0 = float(ACP64[t0])
    z = (x.double() - math.sqrt(a0) * MU) / math.sqrt(a0 * S * S + 1 - a0)
    return math.sqrt(abar_end) * MU + math.sqrt(abar_end * S * S + 1 - abar_end) * z


def ode_error(name: str, steps: int, parameterization: str = "v", spacing: str = "logsnr") -> float:
    x = torch.randn(2048, generator=torch.Generator().manual_seed(0))
    ts = sampler_timesteps(name, steps, ACP64, spacing=spacing)
    out = SOLVERS[name](
        gaussian_denoiser(parameterization),
        x,
        ts,
        ACP64,
        cond={},
        parameterization=parameterization,  # type: ignore[arg-type]
    )
    exact = pf_ode_solution(x, int(ts[0]), float(ACP64[0]))
    return float((out.double() - exact).abs().max())


@pytest.mark.parametrize("param", ["v", "eps"])
@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_solvers_reach_the_analytic_ode_solution(name: str, param: str) -> None:
    steps = 1000 if name == "ddim" else 40  # 1000 first-order steps vs 40 second-order ones
    spacing = "uniform" if name == "ddim" else "logsnr"
    assert ode_error(name, steps, param, spacing) < (5e-3 if name == "ddim" else 7e-3)
    # ... and so map noise to the right distribution: N(a MU, a^2 S^2 + s^2) at abar[0]
    x = torch.randn(20000, generator=torch.Generator().manual_seed(1))
    ts = sampler_timesteps(name, steps, ACP64, spacing=spacing)
    a0 = float(ACP64[int(ts[0])])
    x = x * math.sqrt(a0 * S * S + 1 - a0) + math.sqrt(a0) * MU  # exact x_t0 marginal
    out = SOLVERS[name](
        gaussian_denoiser(param), x, ts, ACP64, cond={}, parameterization=param, final_alpha=1.0
    )  # type: ignore[arg-type]
    assert float(out.mean()) == pytest.approx(MU, abs=0.02)
    assert float(out.std()) == pytest.approx(S, abs=0.02)


def test_second_order_converges_faster_than_ddim() -> None:
    """Halving the step: DDIM's error halves (order 1); DPM-Solver++(2M)'s drops ~4x (order 2);
    UniPC's (UniP-2 + UniC) falls at least as fast."""
    err = {n: [ode_error(n, k) for k in (10, 20, 40)] for n in SAMPLER_NAMES}
    ratio = {n: (e[1] / e[2]) for n, e in err.items()}
    assert 1.6 < ratio["ddim"] < 2.4
    assert ratio["dpmpp-2m"] > 2.8 and ratio["unipc"] > 2.8
    assert err["dpmpp-2m"][2] < err["ddim"][2] / 10
    assert err["unipc"][2] < err["dpmpp-2m"][2]


def test_unipc_without_corrector_is_dpmpp_2m() -> None:
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    ts = logsnr_timesteps(12, ACP64)
    a = sample_dpmpp_2m(gaussian_denoiser("v"), x, ts, ACP64, cond={})
    b = sample_unipc(gaussian_denoiser("v"), x, ts, ACP64, cond={}, corrector=False)
    assert torch.allclose(a, b, atol=1e-6)
    c = sample_unipc(gaussian_denoiser("v"), x, ts, ACP64, cond={})
    assert not torch.allclose(a, c, atol=1e-4)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
@pytest.mark.parametrize("param", ["v", "eps"])
def test_known_x0_and_no_nan_from_t_max(name: str, param: str) -> None:
    target = torch.randn(2, 3, 8, 4, generator=torch.Generator().manual_seed(1)).double()
    x = torch.randn(2, 3, 8, 4, generator=torch.Generator().manual_seed(2))
    for spacing in ("uniform", "trailing"):  # trailing starts at t = T-1, where abar = 0
        ts = ddim_timesteps(10, spacing=spacing)  # type: ignore[arg-type]
        out = sample(
            name,
            x0_denoiser(target, param),
            x,
            ts,
            ACP,
            cond={},
            parameterization=param,  # type: ignore[arg-type]
            final_alpha=1.0,
        )
        assert torch.isfinite(out).all()
        if param == "v" or spacing == "uniform":  # eps cannot give x0 at abar = 0
            assert torch.allclose(out.double(), target, atol=1e-4)


@pytest.mark.parametrize("name", ["dpmpp-2m", "unipc"])
def test_solver_cfg_guidance_one_and_one_forward(name: str) -> None:
    calls: list[int] = []
    cond_den = gaussian_denoiser("v", shift=1.0)
    uncond_den = gaussian_denoiser("v", shift=-1.0)

    def den(x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        calls.append(x.shape[0])
        c = cond["c"].view(-1, *[1] * (x.dim() - 1))
        return torch.where(c > 0, cond_den(x, t, cond), uncond_den(x, t, cond))

    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    cond, uncond = {"c": torch.ones(3)}, {"c": -torch.ones(1)}
    ts = ddim_timesteps(6)
    a = sample(name, den, x, ts, ACP, cond=cond, uncond=uncond, guidance=1.0)
    b = sample(name, cond_den, x, ts, ACP, cond=cond)
    assert torch.equal(a, b) and calls == [3] * 6
    calls.clear()
    g = sample(name, den, x, ts, ACP, cond=cond, uncond=uncond, guidance=3.0)
    assert calls == [6] * 6  # conditional + unconditional in ONE batched forward
    # the guided v is u + s (c - u) (linear in the data mean here): it equals sampling with
    # the exact denoiser of a mean shifted by 1 + 3 (1 - (-1))... minus the -1 base: shift 5
    direct = sample(
        name,
        lambda z, t, c: -2 * uncond_den(z, t, c) + 3 * cond_den(z, t, c),
        x,
        ts,
        ACP,
        cond=cond,
    )
    assert torch.allclose(g, direct, atol=1e-5)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_batch_equals_one_by_one(name: str) -> None:
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 3, 3, padding=1)

    def den(x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        return 0.3 * net(x + cond["c"]) + 0.01 * t.view(-1, 1, 1, 1)

    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    c = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    u = torch.zeros(1, 3, 8, 8)
    ts = ddim_timesteps(8)
    seeds = [11, 12, 13]

    def gens(ss: list[int]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in ss]

    kw = dict(guidance=2.0, eta=0.5 if name == "ddim" else 0.0)
    with torch.no_grad():
        batch = sample(
            name, den, x, ts, ACP, cond={"c": c}, uncond={"c": u}, generator=gens(seeds), **kw
        )  # type: ignore[arg-type]
        ones = [
            sample(
                name,
                den,
                x[i : i + 1],
                ts,
                ACP,
                cond={"c": c[i : i + 1]},
                uncond={"c": u},
                generator=gens(seeds[i : i + 1]),
                **kw,
            )  # type: ignore[arg-type]
            for i in range(3)
        ]
        again = sample(
            name, den, x, ts, ACP, cond={"c": c}, uncond={"c": u}, generator=gens(seeds), **kw
        )  # type: ignore[arg-type]
    assert torch.allclose(batch, torch.cat(ones), atol=1e-5)
    assert torch.equal(batch, again)  # deterministic for a seed


def test_sampler_validation_and_spacings() -> None:
    with pytest.raises(EngineError, match="sampler must be one of"):
        sample("euler", lambda x, t, c: x, torch.zeros(1, 1), ddim_timesteps(2), ACP, cond={})
    with pytest.raises(EngineError, match="only supported by the ddim"):
        sample(
            "unipc", lambda x, t, c: x, torch.zeros(1, 1), ddim_timesteps(2), ACP, cond={}, eta=1.0
        )
    ts = logsnr_timesteps(12, ACP64)
    assert len(ts) == 12 and int(ts[0]) == int(ddim_timesteps(50)[0]) and int(ts[-1]) == 1
    assert bool((ts[:-1] > ts[1:]).all())
    lam = 0.5 * (ACP64.log() - torch.log1p(-ACP64))
    gaps = lam[ts[1:]] - lam[ts[:-1]]
    assert float(gaps.max() - gaps.min()) < 0.35 * float(gaps.mean())  # ~uniform in log-SNR
    assert torch.equal(sampler_timesteps("ddim", 12, ACP64), ddim_timesteps(12))
    with pytest.raises(EngineError):
        sampler_timesteps("ddim", 12, ACP64, spacing="cubic")
    assert cosine_alphas_cumprod(dtype=torch.float64)[0] != cosine_alphas_cumprod()[0].double()

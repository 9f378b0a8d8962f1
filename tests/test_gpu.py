"""CUDA checks for every model family (marked ``gpu``; skipped without a CUDA device).

Run where a GPU exists: ``python -m pytest -m gpu tests/test_gpu.py`` (``benchmarks/gpu_check.sh``
does it together with the benchmarks and the CLI end to end).

- fp32 on CUDA agrees with the CPU, measured against each output's own level
  (``max |cpu - cuda| / rms(cpu)``: a silent stem is all noise, so per-stem SNR alone would flag
  it; the level of the output is what a listener compares with);
- bf16 / fp16 autocast stay within a stated tolerance of fp32 (same measure);
- the engine's out-of-memory back-off works on a real CUDA allocator with a forced small memory
  fraction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

#: relative tolerances (max abs difference / rms of the fp32 CPU output)
FP32_TOL = 1e-3
HALF_TOL = {"bf16": 0.1, "fp16": 0.05}


def _rel(a: Tensor, b: Tensor) -> float:
    a, b = a.float().cpu(), b.float().cpu()
    scale = a.pow(2).mean().sqrt().clamp(min=1e-6)
    return float((a - b).abs().max() / scale)


def _outputs(out: Tensor | dict[str, Tensor] | tuple[Tensor, ...]) -> dict[str, Tensor]:
    if isinstance(out, Tensor):
        return {"out": out}
    if isinstance(out, dict):
        return {k: v for k, v in out.items() if isinstance(v, Tensor)}
    return {str(i): v for i, v in enumerate(out) if isinstance(v, Tensor)}


def _family_cases() -> dict[str, Callable[[], tuple[nn.Module, tuple[Tensor, ...]]]]:
    """Family -> (random-weight tiny model, example inputs of its forward)."""
    from audiotool.checkpoints import build_model
    from audiotool.models.registry import get_family

    def build(family: str, preset: str) -> nn.Module:
        torch.manual_seed(0)
        return build_model(get_family(family).preset(preset)).eval()

    def separator(family: str, preset: str, seconds: float = 1.0) -> Callable[[], tuple]:
        def make() -> tuple[nn.Module, tuple[Tensor, ...]]:
            model = build(family, preset)
            cfg = get_family(family).preset(preset)
            channels = int(getattr(cfg, "audio_channels", 2))
            length = int(getattr(cfg, "segment_samples", 0) or seconds * cfg.sample_rate)
            return model, (0.1 * torch.randn(2, channels, length),)

        return make

    def upsample() -> tuple[nn.Module, tuple[Tensor, ...]]:
        model = build("latent_diffusion", "tiny")
        x, cond = torch.randn(2, 1, 64, 32), torch.randn(2, 1, 64, 32)
        return model, (x, torch.tensor([10, 500]), cond)

    def embed() -> tuple[nn.Module, tuple[Tensor, ...]]:
        return build("audio_branch", "tiny"), (0.1 * torch.randn(2, 16000),)

    def codec() -> tuple[nn.Module, tuple[Tensor, ...]]:
        return build("codec", "tiny"), (0.1 * torch.randn(2, 16000),)

    class _RaeMel(nn.Module):
        """The RAE up to its decoded mel (Griffin-Lim after it amplifies float differences)."""

        def __init__(self) -> None:
            super().__init__()
            self.rae: Any = build("rae", "tiny")

        def forward(self, wave: Tensor) -> Tensor:
            out: Tensor = self.rae.decode_mel(self.rae.encode(wave))
            return out

    def rae() -> tuple[nn.Module, tuple[Tensor, ...]]:
        return _RaeMel().eval(), (0.1 * torch.randn(2, 16000),)

    return {
        "rae": rae,
        "latent_diffusion": upsample,
        "bandsplit": separator("bandsplit", "tiny"),
        "hdemucs": separator("hdemucs", "low"),
        "htdemucs": separator("htdemucs", "tiny"),
        "roformer": separator("roformer", "tiny"),
        "audio_branch": embed,
        "codec": codec,
    }


CASES = _family_cases() if torch.cuda.is_available() else {}


@pytest.mark.parametrize("family", sorted(CASES) or ["none"])
def test_cuda_fp32_agrees_with_cpu(family: str) -> None:
    model, inputs = CASES[family]()
    with torch.inference_mode():
        want = _outputs(model(*inputs))
        got = _outputs(model.cuda()(*(x.cuda() for x in inputs)))
    assert want.keys() == got.keys()
    for k in want:
        assert _rel(want[k], got[k]) < FP32_TOL, (family, k, _rel(want[k], got[k]))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("family", sorted(CASES) or ["none"])
def test_half_precision_within_tolerance(family: str, precision: str) -> None:
    model, inputs = CASES[family]()
    model, inputs = model.cuda(), tuple(x.cuda() for x in inputs)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.inference_mode():
        want = _outputs(model(*inputs))
        with torch.autocast("cuda", dtype=dtype):
            got = _outputs(model(*inputs))
    for k in want:
        assert torch.isfinite(got[k]).all(), (family, k)
        assert _rel(want[k], got[k]) < HALF_TOL[precision], (family, k, _rel(want[k], got[k]))


def test_out_of_memory_backs_off_on_cuda() -> None:
    """A model that needs 32 MiB per item under a ~160 MiB cap: a batch of 8 cannot fit, the
    engine halves the batch until it does and the result equals the one-by-one result."""
    from audiotool.engine.overlap_add import OverlapAddProcessor

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.set_per_process_memory_fraction(min(1.0, (base + 160 * 2**20) / total))
    try:
        calls: list[int] = []

        def hungry(x: Tensor) -> Tensor:
            calls.append(x.shape[0])
            scratch = torch.empty(x.shape[0], 8 * 2**20, device=x.device)  # 32 MiB per item
            scratch.fill_(1.0)
            return x * scratch[:, :1, None]

        audio = torch.randn(1, 16000 * 20)
        proc = OverlapAddProcessor(1.0, 0.5, 16000)
        out = proc.process(hungry, audio, batch_size=8, device="cuda")["output"]
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert calls[0] == 8 and min(calls) < 8  # it backed off
    assert torch.allclose(out, audio, atol=1e-5)


def _sample_tiny_upsampler(
    *,
    cuda_graphs: bool,
    dtype: torch.dtype | None,
    batch_size: int,
    interval: tuple[float, float] = (0.0, 1.0),
) -> tuple[Tensor, int]:
    """Chunked DPM-Solver++(2M) with the tiny upsampler on CUDA; (latents, graph captures)."""
    from audiotool.engine import cuda_graphs as graphs
    from audiotool.engine.diffusion import SamplingSettings, sample_chunked
    from audiotool.engine.schedules import cosine_alphas_cumprod, sampler_timesteps
    from audiotool.models.latent_diffusion import build_model, tiny_config

    torch.manual_seed(0)
    model = build_model(tiny_config()).eval().cuda()
    mel = -5 + 2 * torch.randn(2, 512, 256, generator=torch.Generator().manual_seed(1)).cuda()
    captures = 0
    original = graphs.GraphedDenoiser._capture

    def counting(self: Any, *args: Any) -> Any:
        nonlocal captures
        captures += 1
        return original(self, *args)

    acp = cosine_alphas_cumprod(dtype=torch.float64)
    settings = SamplingSettings(
        timesteps=sampler_timesteps("dpmpp-2m", 8, acp),
        alphas_cumprod=acp,
        sampler="dpmpp-2m",
        guidance=3.5,
        guidance_interval=interval,
        uncond_latent=model.uncond_value,
    )
    with torch.inference_mode():
        cond = model.encode_condition(mel)
        ctx = model.encode_global(mel)
        graphs.GraphedDenoiser._capture = counting  # type: ignore[method-assign]
        try:
            out = sample_chunked(
                model.denoise,
                cond,
                settings,
                chunk=128,
                overlap=32,  # 5 spans per item, 10 in all: the last mini-batch is padded
                out_channels=model.latent_channels,
                context=ctx,
                generator=torch.Generator().manual_seed(0),
                batch_size=batch_size,
                time_multiple=model.unet.time_multiple,
                autocast_dtype=dtype,
                cuda_graphs=cuda_graphs,
            )
        finally:
            graphs.GraphedDenoiser._capture = original  # type: ignore[method-assign]
    return out.float().cpu(), captures


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_sampling_equals_eager(precision: str) -> None:
    dtype = None if precision == "fp32" else torch.bfloat16
    eager, none = _sample_tiny_upsampler(cuda_graphs=False, dtype=dtype, batch_size=4)
    graphed, captures = _sample_tiny_upsampler(cuda_graphs=True, dtype=dtype, batch_size=4)
    assert none == 0 and captures == 1  # one capture for 3 mini-batches (last one padded)
    tol = FP32_TOL if dtype is None else HALF_TOL["bf16"]
    assert _rel(eager, graphed) < tol, _rel(eager, graphed)
    # and the padded graph run does not depend on the batch size beyond the same tolerance
    single, _ = _sample_tiny_upsampler(cuda_graphs=True, dtype=dtype, batch_size=1)
    assert _rel(eager, single) < tol


def test_cuda_graphs_with_a_guidance_interval_keep_one_graph_per_batch_shape() -> None:
    interval = (0.8, 1.0)  # guided (2B) on the noisiest steps, conditional (B) after
    eager, _ = _sample_tiny_upsampler(
        cuda_graphs=False, dtype=None, batch_size=4, interval=interval
    )
    graphed, captures = _sample_tiny_upsampler(
        cuda_graphs=True, dtype=None, batch_size=4, interval=interval
    )
    assert captures == 2  # not one per switch: 3 mini-batches x 2 shapes would be 6
    assert _rel(eager, graphed) < FP32_TOL

"""Upsampling speed and memory: audiotool's chunked sampler vs the reference scheme.

Both use the SAME model (random weights, seeded) and the SAME sampler (``--sampler``: DDIM
with η = 1 as AudioSR, or the deterministic DPM-Solver++(2M) / UniPC); they differ only in
scheduling:

- ``audiotool``: all chunks of all channels batched, classifier-free guidance as ONE batched
  forward (conditional + unconditional), optional bf16 autocast
  (:func:`audiotool.engine.diffusion.sample_chunked`).
- ``reference``: AudioSR's scheme — one chunk at a time, two separate UNet passes per step for
  guidance, fp32.

Timed: global context + condition encoding + sampling (decoding and vocoding are the
same for both schemes and are not included). Both paths are warmed up (2 steps each, same
shapes) before either is timed, so one-off costs (CUDA context, cuDNN autotuning, allocator
growth, lazy kernel loading) are not charged to the first path. Rows report seconds per
second of audio (lower is better) and peak memory. For the full AudioSR preset on a CPU only
a few steps on a short clip are run; the 50-step figure is extrapolated linearly in the step
count and labelled so.

    python benchmarks/bench_upsample.py                      # CPU: tiny (50 steps) + full (2 steps)
    python benchmarks/bench_upsample.py --device cuda --full-steps 50 --seconds 30
    python benchmarks/bench_upsample.py --sampler dpmpp-2m --tiny-steps 12 --skip-full
    python benchmarks/bench_upsample.py --device cuda --graphs-only   # eager vs CUDA graphs

``--graphs-only`` (CUDA): the batched path eager vs with the denoiser replayed from a CUDA
graph (:mod:`audiotool.engine.cuda_graphs`), DPM-Solver++(2M) 16 steps guided throughout, for
one 5.12 s chunk and for 30 s, tiny preset in fp32 and the full preset in bf16.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from typing import Any

import torch


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _inputs(model: Any, seconds: float, device: torch.device) -> torch.Tensor:
    frames = int(seconds * 100)
    mult = model.frame_multiple
    frames = (frames + mult - 1) // mult * mult
    mel = torch.randn(1, frames, 256, generator=torch.Generator().manual_seed(0)) - 5
    return mel.to(device)


def run_audiotool(
    model: Any,
    cfg: Any,
    mel: torch.Tensor,
    steps: int,
    batch: int,
    dtype: torch.dtype | None,
    sampler: str = "ddim",
    cuda_graphs: bool = False,
) -> None:
    from audiotool.engine.diffusion import SamplingSettings, sample_chunked
    from audiotool.engine.schedules import sampler_timesteps

    chunk = int(cfg.chunk_seconds * 100) // model.latent_factor
    overlap = int(cfg.overlap_seconds * 100) // model.latent_factor
    ctx = model.encode_global(mel)
    cond = model.encode_condition(mel)
    settings = SamplingSettings(
        timesteps=sampler_timesteps(sampler, steps, model.alphas_cumprod),
        alphas_cumprod=model.alphas_cumprod,
        sampler=sampler,
        guidance=3.5,
        eta=_eta(sampler),
        uncond_latent=model.uncond_value,
    )
    sample_chunked(
        model.denoise,
        cond,
        settings,
        chunk=chunk,
        overlap=overlap,
        out_channels=model.latent_channels,
        context=ctx,
        generator=torch.Generator().manual_seed(0),
        batch_size=batch,
        time_multiple=model.unet.time_multiple,
        autocast_dtype=dtype,  # the denoiser only; the sampler's arithmetic stays fp32/fp64
        cuda_graphs=cuda_graphs,
    )


def _eta(sampler: str) -> float:
    return 1.0 if sampler == "ddim" else 0.0


def run_reference(
    model: Any, cfg: Any, mel: torch.Tensor, steps: int, sampler: str = "ddim"
) -> None:
    """One chunk at a time, two separate guidance passes, fp32."""
    from audiotool.engine.chunking import plan_spans
    from audiotool.engine.samplers import sample
    from audiotool.engine.schedules import sampler_timesteps

    chunk = int(cfg.chunk_seconds * 100) // model.latent_factor
    overlap = int(cfg.overlap_seconds * 100) // model.latent_factor
    ctx = model.encode_global(mel)
    cond = model.encode_condition(mel)

    def two_pass(x: torch.Tensor, t: torch.Tensor, c: dict[str, torch.Tensor]) -> torch.Tensor:
        extra = {k: v for k, v in c.items() if k != "concat"}
        cnd = model.denoise(x, t, c)
        unc = model.denoise(
            x, t, {"concat": torch.full_like(c["concat"], model.uncond_value), **extra}
        )
        return unc + 3.5 * (cnd - unc)

    for span in plan_spans(cond.shape[2], chunk, overlap):
        piece = cond[:, :, span.start : span.end]
        x = torch.randn(
            piece.shape[0],
            model.latent_channels,
            *piece.shape[2:],
            generator=torch.Generator().manual_seed(0),
        ).to(mel.device)
        sample(
            sampler,
            two_pass,
            x,
            sampler_timesteps(sampler, steps, model.alphas_cumprod),
            model.alphas_cumprod,
            cond={"concat": piece, **ctx},
            eta=_eta(sampler),
            generator=torch.Generator().manual_seed(1),
        )


def warm_up(fns: list[Any], device: torch.device) -> None:
    """Run every path once (2 steps, same shapes) before anything is timed."""
    for fn in fns:
        measure(lambda fn=fn: fn(2), device)


def measure(fn: Any, device: torch.device) -> tuple[float, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with torch.inference_mode():
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, _peak_mib(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--tiny-steps", type=int, default=50)
    ap.add_argument("--full-steps", type=int, default=2)
    ap.add_argument("--full-seconds", type=float, default=5.12)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--sampler", default="ddim", choices=("ddim", "dpmpp-2m", "unipc"))
    ap.add_argument("--graphs-only", action="store_true", help="eager vs CUDA graphs (CUDA)")
    args = ap.parse_args()
    if args.graphs_only:
        compare_graphs(torch.device(args.device), args.batch_size)
        return
    from audiotool.models.latent_diffusion import audiosr_config, build_model, tiny_config

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else platform.machine()
    smp = args.sampler
    print(
        f"upsample benchmark on {dev} ({name}), {args.threads} threads; guidance 3.5, "
        f"eta {_eta(smp):g}; both paths warmed up before timing"
    )
    print(
        f"{'preset':<16}{'path':<22}{'sampler':<10}{'audio s':>8}{'steps':>6}"
        f"{'s / s audio':>13}{'peak MiB':>10}  note"
    )
    torch.manual_seed(0)
    tiny_cfg = tiny_config()
    tiny = build_model(tiny_cfg).to(dev).eval()
    mel = _inputs(tiny, args.seconds, dev)
    paths: list[tuple[str, Any]] = [
        (
            "audiotool batched",
            lambda n: run_audiotool(tiny, tiny_cfg, mel, n, args.batch_size, None, smp),
        ),
        ("reference", lambda n: run_reference(tiny, tiny_cfg, mel, n, smp)),
    ]
    warm_up([fn for _, fn in paths], dev)
    for label, fn in paths:
        sec, peak = measure(lambda fn=fn: fn(args.tiny_steps), dev)
        print(
            f"{'tiny':<16}{label:<22}{smp:<10}{args.seconds:>8.2f}{args.tiny_steps:>6}"
            f"{sec / args.seconds:>13.3f}{peak:>10.0f}"
        )
    if args.skip_full:
        return
    full_cfg = audiosr_config(global_encoder=True)
    full = build_model(full_cfg).to(dev).eval()
    mel = _inputs(full, args.full_seconds, dev)
    dtype = torch.bfloat16 if dev.type == "cuda" else None
    paths = [
        (
            "audiotool batched" + (" bf16" if dtype else ""),
            lambda n: run_audiotool(full, full_cfg, mel, n, args.batch_size, dtype, smp),
        ),
        ("reference fp32", lambda n: run_reference(full, full_cfg, mel, n, smp)),
    ]
    warm_up([fn for _, fn in paths], dev)
    for label, fn in paths:
        sec, peak = measure(lambda fn=fn: fn(args.full_steps), dev)
        per = sec / args.full_seconds
        note = ""
        if args.full_steps != 50:
            note = (
                f"x{50 / args.full_steps:g} -> {per * 50 / args.full_steps:.1f} s/s at 50 steps "
                "(extrapolated)"
            )
        print(
            f"{'audiosr+global':<16}{label:<22}{smp:<10}{args.full_seconds:>8.2f}"
            f"{args.full_steps:>6}"
            f"{per:>13.3f}{peak:>10.0f}  {note}"
        )


def _graphs_row(
    model: Any,
    cfg: Any,
    mel: torch.Tensor,
    batch: int,
    dtype: torch.dtype | None,
    graphs: bool,
    steps: int,
) -> float:
    """Best of 3 seconds for ``steps`` steps, after a 2-step warm-up (which also captures)."""

    def run(n: int) -> None:
        run_audiotool(model, cfg, mel, n, batch, dtype, "dpmpp-2m", cuda_graphs=graphs)

    measure(lambda: run(2), mel.device)
    return min(measure(lambda: run(steps), mel.device)[0] for _ in range(3))


def compare_graphs(dev: torch.device, batch: int, steps: int = 16) -> None:
    """Eager vs CUDA-graph replay of the denoiser (DPM-Solver++(2M), ``steps`` steps)."""
    from audiotool.models.latent_diffusion import audiosr_config, build_model, tiny_config

    if dev.type != "cuda":
        print("CUDA graphs need a CUDA device: nothing to compare on", dev)
        return
    print(f"eager vs CUDA graphs on {torch.cuda.get_device_name()}, dpmpp-2m {steps} steps")
    print(f"{'preset':<16}{'precision':<10}{'audio s':>8}{'eager s/s':>11}{'graphs s/s':>12}  x")
    for preset, cfg, dtype in (
        ("tiny", tiny_config(), None),
        ("audiosr+global", audiosr_config(global_encoder=True), torch.bfloat16),
    ):
        torch.manual_seed(0)
        model = build_model(cfg).to(dev).eval()
        for seconds in (5.12, 30.0):
            mel = _inputs(model, seconds, dev)
            per = {g: _graphs_row(model, cfg, mel, batch, dtype, g, steps) for g in (False, True)}
            per = {g: v / seconds for g, v in per.items()}
            print(
                f"{preset:<16}{'bf16' if dtype else 'fp32':<10}{seconds:>8.2f}"
                f"{per[False]:>11.4f}{per[True]:>12.4f}  {per[False] / per[True]:.2f}"
            )
        model.cpu()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""Separation speed and memory: audiotool's batched overlap-add vs a demucs-style loop.

Both paths run the SAME model — torchaudio's HDemucs "low" preset with random weights (seeded)
— on the same 3-minute stereo 44.1 kHz input:

- ``demucs-loop``: 7.8 s segments, overlap 0.25 (stride 5.85 s), triangular weights, one chunk
  per forward, accumulation on the CPU (the scheme of demucs' ``apply_model``; written here from
  its description, not copied).
- ``audiotool``: :class:`audiotool.engine.overlap_add.OverlapAddProcessor` with the same chunk and
  hop, mini-batches of ``--batch-size`` chunks on the device, accumulation on the device.

Each measurement runs in a fresh subprocess so that peak memory (max RSS on CPU,
``torch.cuda.max_memory_allocated`` on GPU) belongs to that path alone.

Usage::

    python benchmarks/bench_separate.py                  # CPU, 3-minute input
    python benchmarks/bench_separate.py --device cuda     # GPU
    python benchmarks/bench_separate.py --quick          # 20 s input, smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

SEGMENT = 7.8
OVERLAP = 0.25
RATE = 44100
STEMS = ["drums", "bass", "other", "vocals"]


def _model(device: str):  # type: ignore[no-untyped-def]
    import torch
    from torchaudio.models import hdemucs_low

    torch.manual_seed(0)
    return hdemucs_low(sources=STEMS).to(device).eval()


def _input(seconds: float):  # type: ignore[no-untyped-def]
    import torch

    gen = torch.Generator().manual_seed(1)
    return 0.1 * torch.randn(2, int(seconds * RATE), generator=gen)


def demucs_loop(model, mix, device: str):  # type: ignore[no-untyped-def]
    """One chunk per forward, triangular weights, CPU accumulation."""
    import torch

    seg = int(SEGMENT * RATE)
    stride = int((1 - OVERLAP) * seg)
    length = mix.shape[-1]
    out = torch.zeros(len(STEMS), 2, length)
    weight_sum = torch.zeros(length)
    ramp = torch.cat([torch.arange(1, seg // 2 + 1), torch.arange(seg - seg // 2, 0, -1)]).float()
    ramp = ramp / ramp.max()
    with torch.inference_mode():
        for start in range(0, length, stride):
            chunk = mix[:, start : start + seg]
            n = chunk.shape[-1]
            if n < seg:
                chunk = torch.nn.functional.pad(chunk, (0, seg - n))
            y = model(chunk[None].to(device))[0].cpu()[..., :n]
            out[..., start : start + n] += y * ramp[:n]
            weight_sum[start : start + n] += ramp[:n]
            if start + seg >= length:
                break
    return out / weight_sum


def audiotool_path(model, mix, device: str, batch_size: int):  # type: ignore[no-untyped-def]
    import torch

    from audiotool.engine.overlap_add import OverlapAddProcessor

    def fn(x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = model(x)
        return {s: y[:, i] for i, s in enumerate(STEMS)}

    proc = OverlapAddProcessor(SEGMENT, SEGMENT * (1 - OVERLAP), RATE)
    return proc.process(fn, mix, batch_size, device)


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    model = _model(args.device)
    mix = _input(args.seconds)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if args.path == "demucs-loop":
        demucs_loop(model, mix, args.device)
    else:
        audiotool_path(model, mix, args.device, args.batch_size)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if args.device.startswith("cuda")
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    print(json.dumps({"seconds": seconds, "peak_mib": peak}))


def _run(path: str, args: argparse.Namespace, batch_size: int = 1) -> dict[str, float]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--path",
        path,
        "--device",
        args.device,
        "--seconds",
        str(args.seconds),
        "--batch-size",
        str(batch_size),
        "--threads",
        str(args.threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{path} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--quick", action="store_true", help="20 s input, batch sizes 1 and 4")
    ap.add_argument("--batch-sizes", default="1,2,4,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of each path, interleaved (loop, ours, loop, ours, ...); medians are shown",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--path", default="audiotool", help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    if args.quick:
        args.seconds, args.batch_sizes = 20.0, "1,4"
    import torch

    dev = args.device
    name = (
        torch.cuda.get_device_name()
        if dev.startswith("cuda")
        else platform.processor() or (platform.machine())
    )
    print(
        f"HDemucs low (random weights), {args.seconds:g} s stereo 44.1 kHz, device {dev} "
        f"({name}), {args.threads} threads"
    )
    print(
        f"{'path':<22}{'batch':>6}{'s/s audio':>12}{'x realtime':>12}{'peak MiB':>11}"
        f"{'speed-up':>10}"
    )
    import statistics

    sizes = [int(v) for v in args.batch_sizes.split(",")]
    loop_runs: list[dict[str, float]] = []
    ours: dict[int, list[dict[str, float]]] = {b: [] for b in sizes}
    ratios: dict[int, list[float]] = {b: [] for b in sizes}
    for _ in range(args.repeats):
        for b in sizes:
            # each of our runs is paired with a loop run next to it in time, so a drift in
            # the machine's speed moves both sides of a ratio alike
            base = _run("demucs-loop", args)
            mine = _run("audiotool", args, b)
            loop_runs.append(base)
            ours[b].append(mine)
            ratios[b].append(base["seconds"] / mine["seconds"])

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    rows = [("demucs-style loop", 1, med(loop_runs, "seconds"), med(loop_runs, "peak_mib"), 1.0)]
    for b in sizes:
        rows.append(
            (
                "audiotool overlap-add",
                b,
                med(ours[b], "seconds"),
                med(ours[b], "peak_mib"),
                statistics.median(ratios[b]),
            )
        )
    for label, b, secs, peak, ratio in rows:
        sps = secs / args.seconds
        print(f"{label:<22}{b:>6}{sps:>12.3f}{1 / sps:>12.2f}{peak:>11.0f}{ratio:>10.2f}")
    spread = {b: (min(r), max(r)) for b, r in ratios.items()}
    print(
        f"medians of {args.repeats} interleaved runs; speed-up = median of paired ratios "
        "(loop time / ours), range: "
        + ", ".join(f"batch {b}: {lo:.2f}-{hi:.2f}" for b, (lo, hi) in spread.items())
    )


if __name__ == "__main__":
    main()

"""Overlap-add engine throughput and memory vs a naive chunk loop.

Model: a fixed small 1-D convolutional network (4 conv layers, 64 channels, seeded). Input: a
stereo 44.1 kHz signal (3 minutes by default). Chunks 6 s, hop 3 s for both paths.

- ``naive``: one chunk per forward, accumulation on the CPU (as demucs' apply_model does).
- ``batched b``: :class:`audiotool.engine.overlap_add.OverlapAddProcessor`, b chunks per forward.

Then peak memory of the batched path for 1 and 10 minutes of input, each in a fresh subprocess;
the column "beyond input+output" is the peak resident memory during the run above what existed
before it (model and input) minus the output buffer (C x T float32): the engine's working set,
which must stay flat with duration.

Usage::

    python benchmarks/bench_engine.py [--device cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

RATE = 44100
CHUNK, HOP = 6.0, 3.0


def make_model(device: str):  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv1d(2, 64, 9, padding=4), nn.GELU()]
    for _ in range(2):
        layers += [nn.Conv1d(64, 64, 9, padding=4), nn.GELU()]
    layers += [nn.Conv1d(64, 2, 9, padding=4)]
    return nn.Sequential(*layers).to(device).eval()


def make_input(seconds: float):  # type: ignore[no-untyped-def]
    import torch

    x = torch.randn(2, int(seconds * RATE), generator=torch.Generator().manual_seed(1))
    return x.mul_(0.1)  # in place: no second full-size temporary


def naive(model, x, device: str):  # type: ignore[no-untyped-def]
    """One chunk per forward, Hann weights, CPU accumulation."""
    import torch

    chunk, hop = int(CHUNK * RATE), int(HOP * RATE)
    length = x.shape[-1]
    out = torch.zeros_like(x)
    wsum = torch.zeros(length)
    win = torch.hann_window(chunk, periodic=False) + 1e-3
    with torch.inference_mode():
        start = 0
        while True:
            piece = x[:, start : start + chunk]
            n = piece.shape[-1]
            if n < chunk:
                piece = torch.nn.functional.pad(piece, (0, chunk - n))
            y = model(piece[None].to(device))[0].cpu()[:, :n]
            out[:, start : start + n] += y * win[:n]
            wsum[start : start + n] += win[:n]
            if start + chunk >= length:
                break
            start += hop
    return out / wsum


def batched(model, x, device: str, batch_size: int):  # type: ignore[no-untyped-def]
    from audiotool.engine.overlap_add import OverlapAddProcessor

    return OverlapAddProcessor(CHUNK, HOP, RATE).process(model, x, batch_size, device)["output"]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_it(fn, device: str, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _current_rss() -> int:
    """Resident set size now, in bytes (Linux ``/proc``; elsewhere the high-water mark)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_child(seconds: float, device: str, batch_size: int) -> None:
    """Peak memory of one batched run above what exists before it (model, input), minus the
    output buffer. On the CPU a thread samples the RSS every 2 ms during the run (the
    process-lifetime high-water mark cannot see growth below an earlier peak)."""
    import threading

    import torch

    model = make_model(device)
    x = make_input(seconds)
    peak_box = [0]
    stop = threading.Event()
    if device.startswith("cuda"):
        x = x.to(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _current_rss()

        def poll() -> None:
            while not stop.is_set():
                peak_box[0] = max(peak_box[0], _current_rss())
                stop.wait(0.002)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
    y = batched(model, x, device, batch_size)
    _sync(device)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        stop.set()
        poller.join()
        peak = max(peak_box[0], _current_rss())
    print(json.dumps({"peak": peak, "base": base, "output": y.numel() * 4, "input": x.numel() * 4}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--quick", action="store_true", help="20 s input, 1 repeat, 1/2 min memory")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--memory-child", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=8, help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        memory_child(args.memory_child, args.device, args.batch_size)
        return
    if args.quick:
        args.seconds, args.repeats = 20.0, 1
    dev = args.device
    name = (
        torch.cuda.get_device_name()
        if dev.startswith("cuda")
        else platform.processor() or (platform.machine())
    )
    model = make_model(dev)
    x = make_input(args.seconds)
    print(
        f"engine benchmark: {args.seconds:g} s stereo 44.1 kHz, chunk {CHUNK} s / hop {HOP} s, "
        f"device {dev} ({name}), {args.threads} threads, best of {args.repeats}"
    )
    t_naive = time_it(lambda: naive(model, x, dev), dev, args.repeats)
    print(f"{'path':<16}{'batch':>6}{'audio s / s':>13}{'vs naive':>10}")
    print(f"{'naive loop':<16}{1:>6}{args.seconds / t_naive:>13.1f}{1.0:>10.2f}")
    best = (0.0, 0)
    for b in (1, 2, 4, 8, 16):
        t = time_it(lambda b=b: batched(model, x, dev, b), dev, args.repeats)
        rate = args.seconds / t
        best = max(best, (rate, b))
        print(f"{'overlap-add':<16}{b:>6}{rate:>13.1f}{t_naive / t:>10.2f}")
    print(f"best batched: batch {best[1]}, {best[0] * t_naive / args.seconds:.2f}x the naive loop")
    minutes = (0.5, 2.0) if args.quick else (1.0, 10.0)
    print(f"\npeak memory of the batched path (batch {best[1]})")
    print(f"{'input':>8}{'input MiB':>11}{'output MiB':>12}{'beyond input+output MiB':>25}")
    for m in minutes:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-child",
                str(m * 60),
                "--device",
                dev,
                "--batch-size",
                str(best[1]),
                "--threads",
                str(args.threads),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        beyond = (r["peak"] - r["base"] - r["output"]) / 2**20
        print(f"{m:>6g} m{r['input'] / 2**20:>11.0f}{r['output'] / 2**20:>12.0f}{beyond:>25.0f}")


if __name__ == "__main__":
    main()

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

``--family htdemucs`` compares instead, on a full-size HTDemucs (demucs' published
architecture, random seeded weights), demucs' real ``demucs.apply.apply_model`` (with its
``Separator`` normalisation, split=True, overlap 0.25, shifts=0) against audiotool's path
(:func:`audiotool.tasks.separate.separate_tensor` with the converted model: the same cutting and
weights, segments batched), on 3- and 10-minute stereo songs (``--quick``: one 10 s song).
Needs ``pip install demucs==4.1.0``.

Rows are printed as soon as they are measured.

Usage::

    python benchmarks/bench_separate.py                  # CPU, 3-minute input
    python benchmarks/bench_separate.py --device cuda     # GPU
    python benchmarks/bench_separate.py --quick          # 20 s input, smoke test
    python benchmarks/bench_separate.py --family htdemucs [--quick] [--device cuda]
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


HT_KWARGS = dict(dconv_mode=3, bottom_channels=512)


def _ht_reference():  # type: ignore[no-untyped-def]
    from fractions import Fraction

    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)
    return HTDemucs(sources=STEMS, segment=Fraction(39, 5), **HT_KWARGS).eval()


def _ht_child(args: argparse.Namespace) -> tuple[float, float]:
    import torch

    mix = _input(args.seconds)
    ref = _ht_reference()
    if args.path == "audiotool":
        from audiotool.importers.demucs import _model_config
        from audiotool.models.htdemucs import build_model
        from audiotool.tasks.common import Runtime
        from audiotool.tasks.separate import SeparateOptions, separate_tensor

        a, kw = ref._init_args_kwargs
        cfg = _model_config("demucs.htdemucs.HTDemucs", list(a), dict(kw), "bench")
        ours = build_model(cfg)
        ours.load_state_dict(ref.state_dict())
        ours = ours.to(args.device).eval()
        del ref
        rt = Runtime(
            device=torch.device(args.device), dtype=None, batch_size=args.batch_size, seed=0
        )
    else:
        from demucs.apply import apply_model

        ref = ref.to(args.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        if args.path == "audiotool":
            separate_tensor(ours, cfg, mix, RATE, options=SeparateOptions(), runtime=rt)
        else:
            r = mix.mean(0)
            mean, std = r.mean(), r.std() + 1e-8
            out = apply_model(
                ref, ((mix - mean) / std)[None], shifts=0, overlap=OVERLAP, device=args.device
            )
            out = out * std + mean
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, 0.0


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.family == "htdemucs":
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        seconds, _ = _ht_child(args)
        peak = (
            torch.cuda.max_memory_allocated() / 2**20
            if args.device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )
        print(json.dumps({"seconds": seconds, "peak_mib": peak}))
        return
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
        "--family",
        args.family,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{path} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--songs", default="180,600", help="--family htdemucs: song lengths in seconds")
    ap.add_argument("--quick", action="store_true", help="20 s input, batch sizes 1 and 4")
    ap.add_argument("--batch-sizes", default="1,2,4,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of each path, interleaved (loop, ours, loop, ours, ...); medians are shown",
    )
    ap.add_argument(
        "--family",
        default="hdemucs",
        choices=["hdemucs", "htdemucs"],
        help="hdemucs: overlap-add vs a demucs-style loop; htdemucs: vs demucs' apply_model",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--path", default="audiotool", help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    if args.family == "htdemucs":
        _main_htdemucs(args)
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
            print(
                f"  run: loop {base['seconds']:.2f} s / {base['peak_mib']:.0f} MiB, "
                f"ours (batch {b}) {mine['seconds']:.2f} s / {mine['peak_mib']:.0f} MiB",
                flush=True,
            )

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


def _main_htdemucs(args: argparse.Namespace) -> None:
    import torch

    songs = [10.0] if args.quick else [float(v) for v in args.songs.split(",")]
    sizes = [1, 4] if args.quick else [int(v) for v in args.batch_sizes.split(",")]
    repeats = 1 if args.quick else args.repeats
    dev = args.device
    name = torch.cuda.get_device_name() if dev.startswith("cuda") else platform.machine()
    print(
        f"HTDemucs full size (random weights), stereo 44.1 kHz, segment 7.8 s, overlap "
        f"{OVERLAP}, device {dev} ({name}), {args.threads} threads, {repeats} run(s) each",
        flush=True,
    )
    print(
        f"{'song':>7} {'path':<24}{'batch':>6}{'seconds':>10}{'x realtime':>12}{'peak MiB':>10}",
        flush=True,
    )
    for secs in songs:
        args.seconds = secs
        plan = [("demucs apply_model", "demucs", 1)] + [
            ("audiotool", "audiotool", b) for b in sizes
        ]
        for label, path, b in plan:
            for _ in range(repeats):
                r = _run(path, args, b)
                print(
                    f"{secs / 60:>6.2f}m {label:<24}{b:>6}{r['seconds']:>10.2f}"
                    f"{secs / r['seconds']:>12.2f}{r['peak_mib']:>10.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()

"""Many short files: files per second file by file vs read-ahead + packing (issue #15, item 4).

Writes ``--clips`` seeded noise clips of ``--seconds`` (stereo, 44.1 kHz, 24-bit wav, real
files in a temporary folder) and runs each task over the folder through the library call the
CLI makes (``embed_files``, ``separate_files``, ``reconstruct_files``, ``upsample_files`` with
the bundled zoo models, outputs written), twice per batch size:

- ``before``: ``AUDIOTOOL_PACK=0`` — one file at a time, read when its turn comes (the path
  before read-ahead and packing existed);
- ``after``: the default — inputs read and resampled on a background thread, consecutive
  short files' chunks packed into forwards of ``--batch-size`` chunks
  (:mod:`audiotool.tasks._packing`).

Each timing is the whole call (model load, reading, processing, writing); the best of
``--repeats`` alternating runs is kept. Upsampling is not packed (read-ahead only) and runs on
``--upsample-clips`` clips with ``--upsample-steps`` steps. Rows are printed as measured.

Usage::

    python benchmarks/bench_many.py                       # CPU, 200 clips x 5 s
    python benchmarks/bench_many.py --device cuda --batch-sizes 1,4,16
    python benchmarks/bench_many.py --quick               # 12 clips x 2 s, smoke test
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

RATE = 44100


def write_clips(folder: Path, count: int, seconds: float) -> list[Path]:
    """``count`` stereo clips of seeded, gently filtered noise with a decaying tone."""
    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * RATE)) / RATE
    paths = []
    for i in range(count):
        noise = rng.standard_normal((t.size, 2)).cumsum(0)
        noise -= np.convolve(noise[:, 0], np.ones(64) / 64, "same")[:, None]
        tone = np.sin(2 * np.pi * (110 + 20 * i) * t)[:, None] * np.exp(-t)[:, None]
        x = 0.02 * noise / (np.abs(noise).max() + 1e-9) + 0.3 * tone
        path = folder / f"clip{i:04d}.wav"
        sf.write(path, x.astype(np.float32), RATE, subtype="PCM_24")
        paths.append(path)
    return paths


def run_task(task: str, clips: list[Path], out: Path, runtime: object, steps: int) -> int:
    """One batch through the library path of ``audiotool <task>``; returns the ok count."""
    from audiotool.paths import expand_inputs
    from audiotool.tasks._batch import OutputOptions

    inputs = expand_inputs([str(c) for c in clips])
    output = OutputOptions(output=out, overwrite=True)
    if task == "embed":
        from audiotool.tasks.embed import embed_files

        report = embed_files(inputs, output=output, runtime=runtime)  # type: ignore[arg-type]
    elif task == "separate":
        from audiotool.tasks.separate import separate_files

        report = separate_files(inputs, output=output, runtime=runtime)  # type: ignore[arg-type]
    elif task == "reconstruct":
        from audiotool.tasks.reconstruct import reconstruct_files

        report = reconstruct_files(inputs, output=output, runtime=runtime)  # type: ignore[arg-type]
    elif task == "upsample":
        from audiotool.tasks.upsample import UpsampleOptions, upsample_files

        report = upsample_files(
            inputs,
            options=UpsampleOptions(steps=steps),
            output=output,
            runtime=runtime,  # type: ignore[arg-type]
        )
    else:
        raise SystemExit(f"unknown task {task!r}")
    failed = report.failed
    if failed:
        raise SystemExit(f"{task}: {failed[0].error}")
    return report.counts()["ok"]


def timed(fn: Callable[[], int]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--tasks", default="embed,separate,reconstruct,upsample")
    ap.add_argument("--batch-sizes", default="1,4", help="comma list (chunks per forward)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="best of N (alternating)")
    ap.add_argument("--upsample-clips", type=int, default=16)
    ap.add_argument("--upsample-steps", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="12 clips x 2 s, 4 for upsample")
    args = ap.parse_args()
    if args.quick:
        args.clips, args.seconds, args.upsample_clips = 12, 2.0, 4
    import torch

    from audiotool.tasks._batch import RuntimeOptions

    torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.machine()
    print(
        f"{args.clips} clips x {args.seconds:g} s stereo 44.1 kHz, device {args.device} "
        f"({name}), {args.threads} threads, torch {torch.__version__}, best of {args.repeats}"
    )
    print(
        f"{'task':<12}{'batch':>6}{'files':>7}{'before f/s':>12}{'after f/s':>11}{'speed-up':>10}"
    )
    with tempfile.TemporaryDirectory(prefix="bench_many_") as tmp:
        root = Path(tmp)
        clips = write_clips(root / "in", args.clips, args.seconds)
        for task in args.tasks.split(","):
            use = clips[: args.upsample_clips] if task == "upsample" else clips
            for bs in (int(b) for b in args.batch_sizes.split(",")):
                rt = RuntimeOptions(device=args.device, batch_size=bs, threads=args.threads)

                def run(
                    mode: str, task: str = task, use: list[Path] = use, rt: RuntimeOptions = rt
                ) -> int:
                    os.environ["AUDIOTOOL_PACK"] = "0" if mode == "before" else "1"
                    return run_task(task, use, root / "out" / mode, rt, args.upsample_steps)

                run("after", use=use[:2])  # warm-up: imports, model load, caches
                best = {"before": float("inf"), "after": float("inf")}
                for _ in range(args.repeats):
                    for mode in ("before", "after"):
                        best[mode] = min(best[mode], timed(lambda mode=mode: run(mode)))
                before, after = len(use) / best["before"], len(use) / best["after"]
                print(
                    f"{task:<12}{bs:>6}{len(use):>7}{before:>12.2f}{after:>11.2f}"
                    f"{after / before:>9.2f}x",
                    flush=True,
                )
    os.environ.pop("AUDIOTOOL_PACK", None)


if __name__ == "__main__":
    main()

"""Peak memory (RSS) of each command on a short and a long file (issue #17: memory must not grow
with the duration).

Writes low-rate mono test files (dither at about -90 dBFS, written in blocks) and runs every
command in a fresh subprocess; the peak RSS is that process's ``ru_maxrss`` (read through an
intermediate process, so each run is measured alone).

    PYTHONPATH=. python benchmarks/bench_memory.py --short 3 --long 180 --commands info separate

``--budget-s`` keeps a slow command within a time budget: the short file runs first, and when
its throughput says the long file would take longer than the budget, the long file of that
command is the longest of ``--fallback`` minutes that fits (the table says which was used).
``--long-for CMD=MIN`` sets one command's long duration directly.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

COMMANDS: dict[str, list[str]] = {
    "info": ["info", "{input}"],
    "separate": ["separate", "{input}", "-o", "{out}", "--stems", "vocals", "-q"],
    "reconstruct": ["reconstruct", "{input}", "-o", "{out}.wav", "-q"],
    "embed": ["embed", "{input}", "-o", "{out}.npz", "-q"],
    "upsample": ["upsample", "{input}", "-o", "{out}.wav", "--steps", "1", "-q"],
}

_MEASURE = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def write_dither(path: Path, minutes: float, rate: int, seed: int = 0) -> None:
    """``minutes`` of mono dither (-90 dBFS RMS) at ``rate``, 16-bit, written in blocks."""
    rng = np.random.default_rng(seed)
    total = int(minutes * 60 * rate)
    with sf.SoundFile(str(path), "w", rate, 1, "PCM_16") as fh:
        for lo in range(0, total, 1 << 20):
            n = min(1 << 20, total - lo)
            fh.write((rng.standard_normal(n) * 10 ** (-90 / 20)).astype(np.float32))


def peak_rss(argv: list[str]) -> tuple[int, float, float]:
    """(exit code, peak RSS in MiB, seconds) of ``argv`` in a fresh process."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[0]), int(out[1]) / 1024, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--short", type=float, default=3.0, help="minutes")
    ap.add_argument("--long", type=float, default=180.0, help="minutes")
    ap.add_argument("--rate", type=int, default=8000)
    ap.add_argument("--commands", nargs="+", default=list(COMMANDS), choices=list(COMMANDS))
    ap.add_argument("--budget-s", type=float, default=None, help="time budget per long run")
    ap.add_argument("--fallback", type=float, nargs="+", default=[30.0, 12.0], help="minutes")
    ap.add_argument("--long-for", nargs="*", default=[], help="CMD=MINUTES overrides")
    args = ap.parse_args()
    fixed = {k: float(v) for k, v in (item.split("=") for item in args.long_for)}
    with tempfile.TemporaryDirectory() as tmp:
        files: dict[float, Path] = {}

        def audio(minutes: float) -> Path:
            if minutes not in files:  # written once, in blocks
                files[minutes] = Path(tmp) / f"{minutes:g}min.wav"
                write_dither(files[minutes], minutes, args.rate)
            return files[minutes]

        def measure(cmd: str, minutes: float) -> tuple[int, float, float]:
            argv = [sys.executable, "-m", "audiotool"] + [
                a.format(input=audio(minutes), out=Path(tmp) / f"{cmd}-{minutes:g}")
                for a in COMMANDS[cmd]
            ]
            return peak_rss(argv)

        print(f"| command | {args.short:g} min RSS (MiB) | long RSS (MiB) | ratio |")
        print("|---|---|---|---|")
        for cmd in args.commands:
            rc_s, m_s, t_s = measure(cmd, args.short)
            long = fixed.get(cmd, args.long)
            if args.budget_s is not None and cmd not in fixed:
                rate = t_s / args.short  # seconds per minute of audio, start-up included
                for minutes in [args.long, *args.fallback]:
                    long = minutes
                    if rate * minutes <= args.budget_s:
                        break
            rc_l, m_l, t_l = measure(cmd, long)
            note = "" if rc_s == rc_l == 0 else f" (exit {rc_s}/{rc_l})"
            print(
                f"| {cmd}{note} | {m_s:.0f} ({t_s:.0f} s) | {m_l:.0f} ({t_l:.0f} s), "
                f"{long:g} min | {m_l / m_s:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

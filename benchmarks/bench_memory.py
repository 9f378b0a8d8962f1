"""Peak memory (RSS) of each command on a short and a long file (issue #17: memory must not grow
with the duration).

Writes low-rate mono test files (dither at about -90 dBFS, written in blocks) and runs every
command in a fresh subprocess; the peak RSS is that process's ``ru_maxrss`` (read through an
intermediate process, so each run is measured alone).

    PYTHONPATH=. python benchmarks/bench_memory.py --short 3 --long 180 --commands info separate
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
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for label, minutes in (("short", args.short), ("long", args.long)):
            files[label] = Path(tmp) / f"{label}.wav"
            write_dither(files[label], minutes, args.rate)
        print(f"| command | {args.short:g} min RSS (MiB) | {args.long:g} min RSS (MiB) | ratio |")
        print("|---|---|---|---|")
        for cmd in args.commands:
            row = []
            for label in ("short", "long"):
                argv = [sys.executable, "-m", "audiotool"] + [
                    a.format(input=files[label], out=Path(tmp) / f"{cmd}-{label}")
                    for a in COMMANDS[cmd]
                ]
                rc, mib, secs = peak_rss(argv)
                row.append((rc, mib, secs))
            (rc_s, m_s, t_s), (rc_l, m_l, t_l) = row
            note = "" if rc_s == rc_l == 0 else f" (exit {rc_s}/{rc_l})"
            print(
                f"| {cmd}{note} | {m_s:.0f} ({t_s:.0f} s) | {m_l:.0f} ({t_l:.0f} s) "
                f"| {m_l / m_s:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Measure the real-audio sources: bandwidth, rate, format, clipping, licence per group.

For every source package unpacked under ``--sources`` (see ``fetch_sources.sh``) this prints a
Markdown table, one row per group (Tux Paint: language; Hydrogen: drum kit; Wesnoth: all tracks;
FluidR3: stem of seeded renders), and writes the per-file numbers as JSON (``--json``).

Bandwidth is :func:`audiotool.dsp.estimate_cutoff` on each file (downmixed to mono):
``cliff`` is the default rule (the highest frequency after which the smoothed long-term spectrum
falls by 20 dB and never comes back: a low-pass, codec or rate limit; ``sample_rate / 2`` when
there is no such cliff); ``energy`` (AudioSR's 98.5 % cumulative-magnitude rule) is listed for
comparison only. A file counts as "clipped" when more than 0.1 % of its samples sit within 0.1 %
of its peak and the peak is above 0.98 (flat-topped waveform).

Usage::

    python benchmarks/data/measure_sources.py --sources /work/data_sources/x \
        --per-group 40 --json /work/datasets/source_bandwidths.json > table.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from audiotool.data.sources import HYDROGEN_LICENCES, SOURCES, source_root
from audiotool.dsp import estimate_cutoff

#: per-kit licences, from hydrogen-drumkits' DEP-5 ``copyright`` (kit folder -> licence)
AUDIO = (".wav", ".flac", ".ogg", ".aiff", ".aif")


def measure(x: np.ndarray, rate: int) -> dict[str, Any]:
    """Numbers for one mono signal ``(T,)``."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
    peak = float(np.abs(x).max()) if x.size else 0.0
    near = float(np.mean(np.abs(x) >= 0.999 * peak)) if peak > 0 else 0.0
    return {
        "cliff_hz": round(estimate_cutoff(t, rate)),
        "energy_hz": round(estimate_cutoff(t, rate, method="energy")),
        "peak": round(peak, 4),
        "clipped": bool(peak > 0.98 and near > 1e-3),
    }


def read(path: Path, max_seconds: float) -> tuple[np.ndarray, int, str]:
    """Mono float32 of at most ``max_seconds`` taken from the middle, rate, subtype."""
    info = sf.info(str(path))
    n = int(max_seconds * info.samplerate)
    start = max(0, (info.frames - n) // 2) if info.frames > n else 0
    data, rate = sf.read(
        str(path), start=start, frames=min(n, info.frames), dtype="float32", always_2d=True
    )
    return data.mean(axis=1), int(rate), f"{info.format}/{info.subtype}"


def _sample(files: list[Path], k: int, rng: np.random.Generator) -> list[Path]:
    if k <= 0 or len(files) <= k:
        return files
    return [files[int(i)] for i in sorted(rng.choice(len(files), size=k, replace=False))]


def file_groups(sources: Path) -> dict[tuple[str, str], list[Path]]:
    """``{(source, group): files}`` for the recordings (not the SoundFont)."""
    groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
    tux = source_root(sources, "tuxpaint")
    for p in sorted(tux.rglob("*_desc_*.ogg")):
        m = re.search(r"_desc_([a-z]{2}(?:_[A-Za-z]{2})?)\.ogg$", p.name)
        groups[("tuxpaint", m.group(1) if m else "?")].append(p)
    kits = source_root(sources, "hydrogen") / "usr/share/hydrogen/data/drumkits"
    for p in sorted(kits.rglob("*")):
        if p.suffix.lower() in AUDIO:
            groups[("hydrogen", p.relative_to(kits).parts[0])].append(p)
    wes = source_root(sources, "wesnoth")
    for p in sorted(wes.rglob("*.ogg")):
        groups[("wesnoth", "all tracks")].append(p)
    return groups


def rendered(sources: Path, seeds: int) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Measure stems of ``seeds`` seeded songs rendered with FluidR3 (needs tinysoundfont)."""
    from audiotool.data.render import RATE, render_song

    sf2 = next(source_root(sources, "fluid").rglob("FluidR3_GM.sf2"))
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for seed in range(seeds):
        for stem, audio in render_song(sf2, seed, 8.0).items():
            row = measure(audio.mean(0), RATE)
            out[("fluid", stem)].append(
                {
                    "file": f"render_song(seed={seed}).{stem}",
                    "rate": RATE,
                    "format": "render",
                    **row,
                }
            )
    return out


def summarise(rows: list[dict[str, Any]], key: str) -> str:
    v = np.array([r[key] for r in rows], dtype=float)
    return f"{np.median(v) / 1000:.1f} ({np.percentile(v, 10) / 1000:.1f}-{v.max() / 1000:.1f})"


def licence(source: str, group: str) -> str:
    if source == "hydrogen":
        return HYDROGEN_LICENCES.get(group, "see copyright")
    return SOURCES[source].licence


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sources", type=Path, required=True, help="unpacked packages")
    ap.add_argument("--per-group", type=int, default=40, help="files measured per group (0: all)")
    ap.add_argument("--max-seconds", type=float, default=30.0, help="excerpt length per file")
    ap.add_argument("--render-seeds", type=int, default=3, help="FluidR3 songs (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write per-file numbers here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    totals: dict[tuple[str, str], int] = {}
    for (source, group), files in sorted(file_groups(args.sources).items()):
        totals[(source, group)] = len(files)
        rows = []
        for p in _sample(files, args.per_group, rng):
            x, rate, fmt = read(p, args.max_seconds)
            rows.append(
                {
                    "file": str(p.relative_to(args.sources)),
                    "rate": rate,
                    "format": fmt,
                    **measure(x, rate),
                }
            )
        results[(source, group)] = rows
    if args.render_seeds > 0:
        for key, rows in rendered(args.sources, args.render_seeds).items():
            results[key], totals[key] = rows, len(rows)
    print(
        "| source | group | files (measured) | rate Hz | format | cliff kHz median (p10-max) "
        "| energy-98.5% kHz median | >= 18.5 kHz | clipped | licence |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (source, group), rows in results.items():
        if not rows:
            continue
        rates = sorted({r["rate"] for r in rows})
        fmts = sorted({r["format"] for r in rows})
        wide = sum(r["cliff_hz"] >= 18500 for r in rows)
        clipped = sum(r["clipped"] for r in rows)
        print(
            f"| {SOURCES[source].package} | {group} | {totals[(source, group)]} ({len(rows)}) "
            f"| {'/'.join(map(str, rates))} | {', '.join(fmts)} | {summarise(rows, 'cliff_hz')} "
            f"| {np.median([r['energy_hz'] for r in rows]) / 1000:.1f} "
            f"| {wide}/{len(rows)} | {clipped}/{len(rows)} | {licence(source, group)} |"
        )
    print(f"\nmeasured in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({f"{s}/{g}": rows for (s, g), rows in results.items()}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`audiotool data fetch | build`: training / validation sets from real recordings."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Build datasets from real recordings (Debian packages).",
    no_args_is_help=True,
    add_completion=False,
)

SourcesOpt = Annotated[Path, typer.Option("--sources", help="Where the unpacked packages live.")]


@app.command("fetch", epilog="Example:\n\n  audiotool data fetch --sources ~/audiotool-sources")
def fetch(sources: SourcesOpt = Path("data-sources")) -> None:
    """Download and unpack the source packages (apt-get download + dpkg -x; no install)."""
    from audiotool.data.sources import fetch as do_fetch

    for path in do_fetch(sources):
        sys.stdout.write(f"{path}\n")


@app.command(
    "build",
    epilog="Example:\n\n  audiotool data build separate data/separate "
    "--sources ~/audiotool-sources --seed 0",
)
def build(
    kind: Annotated[
        str,
        typer.Argument(help="upsample | separate | separate-families | embed | reconstruct"),
    ],
    out: Annotated[Path, typer.Argument(help="New folder to write.")],
    sources: SourcesOpt = Path("data-sources"),
    seed: Annotated[int, typer.Option("--seed")] = 0,
    max_items: Annotated[int, typer.Option("--max-items", help="Items per group.")] = 40,
) -> None:
    """Write OUT/{train,val}/... and OUT/manifest.json (seeded, reproducible)."""
    from audiotool.cli._report import setup_logging
    from audiotool.data.build import build_dataset

    setup_logging(quiet=False)
    manifest = build_dataset(kind, sources, out, seed=seed, max_items=max_items)
    counts = {s: sum(1 for f in manifest.files if f["split"] == s) for s in ("train", "val")}
    hours = sum(f["duration"] for f in manifest.files) / 3600
    sys.stdout.write(
        json.dumps(
            {
                "kind": kind,
                "out": str(out),
                **counts,
                "hours": round(hours, 3),
                "excluded": len(manifest.excluded),
            }
        )
        + "\n"
    )

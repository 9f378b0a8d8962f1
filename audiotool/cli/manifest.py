"""`audiotool manifest summary`: counts, failures and throughput of --manifest files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from audiotool.cli._options import JsonOpt

app = typer.Typer(
    help="Inspect the JSON-lines manifests written with --manifest.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command(
    "summary",
    epilog="Examples:\n\n  audiotool manifest summary run.jsonl\n\n"
    "  audiotool manifest summary shard-*.jsonl --json",
)
def summary(
    files: Annotated[
        list[Path], typer.Argument(help="Manifest files (JSON lines).", show_default=False)
    ],
    as_json: JsonOpt = False,
) -> None:
    """Files done / failed (by each input's last line), the failures, and the throughput.

    Exit code 0 when no input is failed, 1 otherwise, 2 for a file that is not a manifest.
    """
    from audiotool.cli._report import stderr
    from audiotool.manifest import read_manifest, summarize

    rows = [row for path in files for row in read_manifest(path)]
    result = summarize(rows)
    if as_json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
    else:
        counts = ", ".join(f"{n} {status}" for status, n in result.counts.items())
        rate = f"{result.files_per_hour:g} files/h" if result.files_per_hour else "-"
        lines = [
            f"files: {result.files} ({counts}); lines: {result.lines}",
            f"tasks: {', '.join(result.tasks) or '-'}; models: {', '.join(result.models) or '-'}",
            f"processes: {result.processes}; wall: {result.wall_seconds:.1f} s; "
            f"compute: {result.compute_seconds:.1f} s; throughput: {rate}",
        ]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    for row in result.failures:
        line = f"  {row.error or row.input}" + (f" — {row.hint}" if row.hint else "")
        stderr.print(line, markup=False)
    raise typer.Exit(1 if result.failures else 0)

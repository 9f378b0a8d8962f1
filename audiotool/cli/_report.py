"""Progress bars, logging set-up and end-of-batch summaries for the CLI (rich, on stderr)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from audiotool.progress import NullProgress

if TYPE_CHECKING:
    from audiotool.progress import Progress as ProgressSink
    from audiotool.tasks._batch import BatchReport

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False, soft_wrap=True)


def setup_logging(*, quiet: bool) -> None:
    """Log WARNING and up on stderr (INFO too unless quiet, when stderr is a terminal)."""
    from rich.logging import RichHandler

    from audiotool.tasks._batch import FileLogFilter

    level = logging.WARNING if quiet or not stderr.is_terminal else logging.INFO
    handler = RichHandler(console=stderr, show_time=False, show_path=False, markup=False)
    handler.addFilter(FileLogFilter())  # messages during a file name that file
    root = logging.getLogger("audiotool")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class RichProgress:
    """:class:`audiotool.progress.Progress` drawn with rich bars on stderr."""

    _LABELS: ClassVar[dict[str, str]] = {
        "files": "files",
        "chunks": "chunks",
        "steps": "sampler steps",
    }

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def start(self, key: str, total: int | None, description: str = "") -> None:
        label = description or self._LABELS.get(key, key)
        if key in self._tasks:
            self._progress.reset(self._tasks[key], total=total, description=label, visible=True)
        else:
            self._tasks[key] = self._progress.add_task(label, total=total)

    def update(self, key: str, completed: int, total: int | None = None) -> None:
        if key not in self._tasks:
            self.start(key, total)
        kwargs: dict[str, Any] = {"completed": completed}
        if total is not None:
            kwargs["total"] = total
        self._progress.update(self._tasks[key], **kwargs)

    def end(self, key: str) -> None:
        if key in self._tasks and key != "files":
            self._progress.update(self._tasks[key], visible=False)


@contextmanager
def progress_bars(*, quiet: bool) -> Iterator[RichProgress | NullProgress]:
    """Rich bars on stderr, or a silent stand-in when quiet or stderr is not a terminal."""
    if quiet or not stderr.is_terminal:
        yield NullProgress()
        return
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=False,
    )
    with bars:
        yield RichProgress(bars)


def run_reported(
    task: str,
    run: Callable[[ProgressSink], BatchReport],
    *,
    as_json: bool,
    quiet: bool,
    bars: bool = True,
) -> BatchReport:
    """Run a batch under progress bars; on Ctrl-C print what finished, then end the command.

    Raises:
        Interrupted: Ctrl-C (the error boundary says "interrupted", exit code 130), after the
            summary (valid JSON with ``--json``) of the files that finished.
    """
    from audiotool.errors import Interrupted
    from audiotool.tasks._batch import BatchReport

    try:
        with progress_bars(quiet=quiet or not bars) as sink:
            return run(sink)
    except KeyboardInterrupt as exc:
        report = getattr(exc, "report", None)
        if not isinstance(report, BatchReport):
            report = BatchReport(task=task, interrupted=True)
        print_summary(report, as_json=as_json, quiet=quiet)
        done = report.counts()["ok"]
        raise Interrupted(
            f"interrupted: {done} file(s) finished, no partial output left behind"
        ) from None


def print_summary(
    report: BatchReport, *, as_json: bool, quiet: bool, counts_line: bool = True
) -> None:
    """Summary of a batch: failures on stderr (always), notes and counts (unless quiet), JSON
    on stdout."""
    counts = report.counts()
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), default=str) + "\n")
        sys.stdout.flush()
    if not quiet:
        for r in report.results:
            if r.status == "skipped" and r.note and r.note != "outputs exist":
                stderr.print(f"audiotool: {r.input}: {r.note}", markup=False)
    if report.failed:
        n = len(report.results)
        stderr.print(f"audiotool: {len(report.failed)} of {n} input(s) failed:", style="bold red")
        for r in report.failed:
            line = f"  {r.error}" + (f" — {r.hint}" if r.hint else "")
            stderr.print(line, markup=False)
    elif not quiet and not as_json and counts_line:
        parts = [f"{counts['ok']} done"]
        if counts["skipped"]:
            parts.append(f"{counts['skipped']} skipped")
        stderr.print(f"audiotool {report.task}: " + ", ".join(parts), markup=False)


def print_rows(header: list[str], rows: list[list[str]]) -> None:
    """A table on stdout: rich on a terminal, tab-separated lines when piped."""
    if not stdout.is_terminal:
        for row in [header, *rows]:
            sys.stdout.write("\t".join(row) + "\n")
        sys.stdout.flush()
        return
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    for i, col in enumerate(header):
        table.add_column(
            col,
            justify="left" if i == 0 or not rows or not _numeric(rows[0][i]) else "right",
            overflow="fold",
        )
    for row in rows:
        table.add_row(*row)
    stdout.print(table)


def _numeric(text: str) -> bool:
    return text[:1].isdigit() or text[:1] in "-+."

"""The batch driver shared by every task: one file after another, failures collected.

A task provides ``process_one(path) -> FileResult`` that raises an
:class:`~audiotool.errors.AudiotoolError` when the file cannot be processed. The driver goes on
with the next file (unless ``fail_fast``), and returns a :class:`BatchReport` that the CLI prints
as a summary (and as JSON with ``--json``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from audiotool.errors import AudiotoolError, InputError, debug_enabled
from audiotool.paths import ExpandedInputs
from audiotool.progress import NullProgress, Progress

if TYPE_CHECKING:
    from audiotool.audio import BitDepth, ClipMode

log = logging.getLogger(__name__)

Status = Literal["ok", "skipped", "failed"]


@dataclasses.dataclass(frozen=True)
class OutputOptions:
    """Where and how outputs are written (shared by every task).

    Attributes:
        output: ``-o``: a file (one input, one output) or a folder; None = the task's default.
        filename: ``--filename`` template (fields depend on the task).
        overwrite: replace existing outputs.
        skip_existing: leave inputs whose outputs all exist (resume a half-done batch).
        fail_fast: stop at the first failed input.
        bit_depth, clip, format: audio output format (see :func:`audiotool.audio.write_audio`).
    """

    output: Path | None = None
    filename: str | None = None
    overwrite: bool = False
    skip_existing: bool = False
    fail_fast: bool = False
    bit_depth: BitDepth = "24"
    clip: ClipMode = "rescale"
    format: str | None = None


# Measured (benchmarks/RESULTS.md, 2-core CPU): on a CPU, batching chunks is within 1% of one
# chunk per forward at best and up to 37% slower (HDemucs, batch 4), and it costs memory; on a
# GPU it is the point.
DEFAULT_BATCH_CPU = 1
DEFAULT_BATCH_ACCELERATOR = 4


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    """How models run (shared by every task).

    Attributes:
        device: ``auto`` | ``cpu`` | ``cuda`` | ``mps`` (or ``cuda:N``).
        precision: ``fp32`` | ``fp16`` | ``bf16``.
        batch_size: chunks per forward pass (halved automatically on out-of-memory); None:
            :data:`DEFAULT_BATCH_CPU` on the CPU, :data:`DEFAULT_BATCH_ACCELERATOR` elsewhere.
        seed: seed of every random draw (outputs are deterministic for a seed).
        threads: torch's CPU threads; None: the CPUs this process may use
            (:func:`audiotool.device.available_cpus`), or ``OMP_NUM_THREADS`` when set.
    """

    device: str = "auto"
    precision: str = "fp32"
    batch_size: int | None = None
    seed: int = 0
    threads: int | None = None


@dataclasses.dataclass
class FileResult:
    """What happened to one input."""

    input: str
    status: Status = "ok"
    outputs: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None
    hint: str | None = None
    seconds: float = 0.0
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class BatchReport:
    """Results of a batch, in input order."""

    task: str
    results: list[FileResult] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def exit_code(self) -> int:
        """0 when every input succeeded or was skipped, 1 otherwise."""
        return 1 if self.failed else 0

    def counts(self) -> dict[str, int]:
        out = {"ok": 0, "skipped": 0, "failed": 0}
        for r in self.results:
            out[r.status] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "counts": self.counts(),
            "files": [r.to_json() for r in self.results],
            **self.extra,
        }


def run_batch(
    task: str,
    inputs: ExpandedInputs,
    process_one: Callable[[Path], FileResult],
    *,
    fail_fast: bool = False,
    progress: Progress | None = None,
) -> BatchReport:
    """Run ``process_one`` over every input file, collecting failures.

    Inputs that could not be expanded (missing paths, empty folders) are reported as failures
    first. Unexpected exceptions (bugs) are recorded as failures too, with the exception type,
    unless ``AUDIOTOOL_DEBUG`` is set, in which case they propagate with their traceback.
    """
    progress = progress or NullProgress()
    report = BatchReport(task=task)
    for item, error in inputs.problems:
        report.results.append(_failure(item, error, 0.0))
    if report.results and fail_fast:
        return report
    total = len(inputs.files)
    progress.start("files", total, f"{task}")
    for i, path in enumerate(inputs.files):
        t0 = time.perf_counter()
        try:
            result = process_one(path)
            result.seconds = round(time.perf_counter() - t0, 3)
        except AudiotoolError as exc:
            log.debug("%s failed", path, exc_info=True)
            result = _failure(str(path), exc, time.perf_counter() - t0)
        except Exception as exc:  # a bug: keep the batch going, but say so plainly
            if debug_enabled():
                raise
            log.debug("%s crashed", path, exc_info=True)
            result = FileResult(
                input=str(path),
                status="failed",
                error=f"{path}: internal error {type(exc).__name__}: {exc}",
                hint="set AUDIOTOOL_DEBUG=1 for the traceback and report it",
                seconds=round(time.perf_counter() - t0, 3),
            )
        report.results.append(result)
        progress.update("files", i + 1)
        if fail_fast and result.status == "failed":
            break
    progress.end("files")
    return report


def _failure(item: str, error: AudiotoolError, seconds: float) -> FileResult:
    return FileResult(
        input=item,
        status="failed",
        error=error.message,
        hint=error.hint,
        seconds=round(seconds, 3),
    )


def ensure_inputs(inputs: ExpandedInputs) -> None:
    """Raise the first expansion problem when there is nothing to process at all."""
    if not inputs.files and inputs.problems:
        _item, error = inputs.problems[0]
        if len(inputs.problems) == 1:
            raise error
        raise InputError(
            f"none of the {len(inputs.problems)} inputs can be used ({error.message}, ...)",
            hint=error.hint,
        )

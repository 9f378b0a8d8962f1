"""The file-batch driver shared by every task: plan every output first, then run the files.

Two steps, so that shards, a manifest or a distributed runner can sit between them:

1. :func:`plan_batch` turns the expanded inputs into a list of :class:`WorkItem` (one input, its
   named output paths, whether it is skipped or already failed). Every mistake that concerns the
   whole command (an output equal to an input, two inputs with one output, a template escaping
   the folder, an unwritable or non-folder output path, a bad format / bit depth) raises a
   :class:`~audiotool.errors.UsageError` here, before any model is loaded or anything written.
2. :func:`execute` runs the items in order: :func:`run_item` reads the input, calls the task's
   ``process(item, audio) -> Produced`` and writes what it produced, all outputs of an input
   or none, never over a file that appeared meanwhile unless ``--overwrite``
   (:func:`audiotool.paths.atomic_outputs`). Per-file errors are collected (``--fail-fast``
   stops at the first), a :class:`~audiotool.errors.UsageError` stops the batch, Ctrl-C raises
   :class:`BatchInterrupted` carrying the report of what finished.

:func:`run_files` is both steps with the model loaded lazily in between (``start()`` runs only
when some item is left to process). A task keeps only what is its own: the names of its
outputs (``targets_for``) and the processing of one signal.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from audiotool.errors import AudiotoolError, InputError, UsageError, debug_enabled
from audiotool.paths import (
    ExpandedInputs,
    OutputPlanner,
    atomic_outputs,
    check_existing,
    check_writable,
)
from audiotool.progress import NullProgress, Progress

if TYPE_CHECKING:
    from torch import Tensor

    from audiotool.audio import AudioData, BitDepth, ClipMode

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
    note: str | None = None
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
    #: Ctrl-C stopped the batch; ``results`` holds what finished
    interrupted: bool = False

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
        out: dict[str, Any] = {
            "task": self.task,
            "counts": self.counts(),
            "files": [r.to_json() for r in self.results],
            **self.extra,
        }
        if self.interrupted:
            out["interrupted"] = True
        return out


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a batch; ``report`` holds the files that finished (nothing partial is left:
    the interrupted file's temporary outputs are removed)."""

    def __init__(self, report: BatchReport) -> None:
        super().__init__()
        self.report = report


# --------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class WorkItem:
    """One unit of work: an input and where its outputs go.

    Attributes:
        input: the input file.
        targets: final output paths by output name (a stem, ``"audio"``, ...); empty for tasks
            that keep results in memory (e.g. one combined file written after the batch).
        skip: ``--skip-existing`` and every target exists.
        error: found while planning (an output exists); the item is reported, not run.
    """

    input: Path
    targets: Mapping[str, Path] = dataclasses.field(default_factory=dict)
    skip: bool = False
    error: AudiotoolError | None = None


@dataclasses.dataclass
class BatchPlan:
    """Everything :func:`execute` needs, computed before anything runs."""

    task: str
    items: list[WorkItem]
    problems: list[tuple[str, AudiotoolError]] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)

    @property
    def inputs(self) -> list[Path]:
        """Every input (never written over)."""
        return [item.input for item in self.items]

    @property
    def to_run(self) -> list[WorkItem]:
        return [i for i in self.items if not i.skip and i.error is None]


TargetsFn = Callable[[Path], Mapping[str, Path]]


def plan_batch(
    task: str,
    inputs: ExpandedInputs,
    targets_for: TargetsFn | None = None,
    *,
    output: OutputOptions = OutputOptions(),
    audio_outputs: bool = True,
) -> BatchPlan:
    """Plan and validate every output of a batch before anything runs.

    Args:
        targets_for: ``input -> {name: path}`` (an :class:`~audiotool.paths.OutputPlanner`
            underneath: it raises on outputs equal to an input, two inputs with one output and
            templates escaping the folder); None: the task writes no per-input files.
        output: ``--overwrite`` / ``--skip-existing`` and the audio format.
        audio_outputs: the targets are audio files (their container and bit depth are checked).

    Raises:
        InputError: no usable input at all (the first problem, e.g. a missing file).
        UsageError: any output mistake; nothing has been written.
    """
    from audiotool.audio import check_output_format

    ensure_inputs(inputs)
    items: list[WorkItem] = []
    probed: set[Path] = set()
    for path in inputs.files:
        targets = dict(targets_for(path)) if targets_for is not None else {}
        for target in targets.values():
            if audio_outputs:
                check_output_format(target, output.format, output.bit_depth)
            if target.parent not in probed:
                check_writable(target)
                probed.add(target.parent)
            elif target.is_dir():
                check_writable(target)
        try:
            skip = check_existing(
                targets.values(), overwrite=output.overwrite, skip_existing=output.skip_existing
            )
        except AudiotoolError as exc:
            items.append(WorkItem(path, targets, error=exc))
            continue
        items.append(WorkItem(path, targets, skip=skip))
    return BatchPlan(task, items, list(inputs.problems), list(inputs.ignored))


# --------------------------------------------------------------------------- running it


@dataclasses.dataclass
class Produced:
    """What a task made of one input; :func:`run_item` writes it to the item's targets.

    Attributes:
        audio: ``{output name: (C, T) tensor at sample_rate}``.
        sample_rate: rate of every ``audio`` entry.
        files: ``{output name: writer}`` for non-audio outputs; the writer fills the temporary
            path it is given (it never sees the final path).
        details: per-file facts for the summary (JSON).
    """

    audio: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    sample_rate: int = 0
    files: dict[str, Callable[[Path], None]] = dataclasses.field(default_factory=dict)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


ProcessFn = Callable[[WorkItem, "AudioData"], Produced]

#: the input being processed (log records name it, see :class:`FileLogFilter`)
current_input: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "audiotool_current_input", default=None
)


class FileLogFilter(logging.Filter):
    """Prefix log messages emitted while a file is processed with that file's path."""

    def filter(self, record: logging.LogRecord) -> bool:
        path = current_input.get()
        if path and path not in record.getMessage():
            record.msg = f"{path}: {record.getMessage()}"
            record.args = None
        return True


def run_item(
    item: WorkItem,
    process: ProcessFn,
    *,
    output: OutputOptions = OutputOptions(),
    protect: Sequence[Path] = (),
) -> FileResult:
    """Process and write one planned item (the unit a shard or a remote worker runs).

    Raises:
        AudiotoolError: the file failed (the batch records it); UsageError stops the batch.
    """
    from audiotool.audio import read_audio, save_audio

    if item.error is not None:
        raise item.error
    if item.skip:
        return FileResult(
            input=str(item.input),
            status="skipped",
            outputs=[str(t) for t in item.targets.values()],
            note="outputs exist",
        )
    token = current_input.set(str(item.input))
    try:
        audio = read_audio(item.input)
        produced = process(item, audio)
        with atomic_outputs(item.targets, protect=protect, overwrite=output.overwrite) as tmps:
            for name, tmp in tmps.items():
                target = Path(item.targets[name])
                if name in produced.audio:
                    save_audio(
                        tmp,
                        produced.audio[name],
                        produced.sample_rate,
                        bit_depth=output.bit_depth,
                        clip=output.clip,
                        fmt=output.format,
                        name=target,
                    )
                elif name in produced.files:
                    produced.files[name](tmp)
                else:
                    raise AssertionError(f"the task produced no output '{name}' for {target}")
    finally:
        current_input.reset(token)
    return FileResult(
        input=str(item.input),
        outputs=[str(t) for t in item.targets.values()],
        details=produced.details,
    )


def execute(
    plan: BatchPlan,
    process: ProcessFn,
    *,
    output: OutputOptions = OutputOptions(),
    progress: Progress | None = None,
) -> BatchReport:
    """Run every item of ``plan`` in order, collecting failures (see the module docstring).

    Unexpected exceptions (bugs) are recorded as failures with the exception type, unless
    ``AUDIOTOOL_DEBUG`` is set, in which case they propagate with their traceback.

    Raises:
        UsageError: raised by ``process`` (an option that cannot work for any file).
        BatchInterrupted: Ctrl-C; carries the report so far.
    """
    progress = progress or NullProgress()
    report = BatchReport(task=plan.task)
    for item_name, error in plan.problems:
        report.results.append(_failure(item_name, error, 0.0))
    for name in plan.ignored:
        report.results.append(
            FileResult(input=name, status="skipped", note="not an audio file name, skipped")
        )
    if plan.problems and output.fail_fast:
        return report
    protect = plan.inputs
    progress.start("files", len(plan.items), plan.task)
    try:
        for i, item in enumerate(plan.items):
            result = _run_one(item, process, output=output, protect=protect)
            report.results.append(result)
            progress.update("files", i + 1)
            if output.fail_fast and result.status == "failed":
                break
    except KeyboardInterrupt as exc:
        report.interrupted = True
        raise BatchInterrupted(report) from exc
    finally:
        progress.end("files")
    return report


def _run_one(
    item: WorkItem, process: ProcessFn, *, output: OutputOptions, protect: Sequence[Path]
) -> FileResult:
    t0 = time.perf_counter()
    try:
        result = run_item(item, process, output=output, protect=protect)
    except UsageError:
        raise
    except AudiotoolError as exc:
        log.debug("%s failed", item.input, exc_info=True)
        return _failure(str(item.input), exc, time.perf_counter() - t0)
    except Exception as exc:  # a bug: keep the batch going, but say so plainly
        if debug_enabled():
            raise
        log.debug("%s crashed", item.input, exc_info=True)
        return FileResult(
            input=str(item.input),
            status="failed",
            error=f"{item.input}: internal error {type(exc).__name__}: {exc}",
            hint="set AUDIOTOOL_DEBUG=1 for the traceback and report it",
            seconds=round(time.perf_counter() - t0, 3),
        )
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def run_files(
    task: str,
    inputs: ExpandedInputs,
    *,
    targets_for: TargetsFn | None,
    start: Callable[[], ProcessFn],
    output: OutputOptions = OutputOptions(),
    progress: Progress | None = None,
    audio_outputs: bool = True,
) -> BatchReport:
    """:func:`plan_batch`, then ``start()`` (load the model) only if something is left to run,
    then :func:`execute`."""
    plan = plan_batch(task, inputs, targets_for, output=output, audio_outputs=audio_outputs)
    process: ProcessFn = start() if plan.to_run else _nothing
    return execute(plan, process, output=output, progress=progress)


def output_planner(
    inputs: ExpandedInputs,
    output: OutputOptions,
    *,
    default_template: str,
    default_dir: Path,
    single_output: bool = True,
    allowed_fields: frozenset[str] | None = None,
) -> OutputPlanner:
    """The :class:`~audiotool.paths.OutputPlanner` of a batch (inputs are checked first, so a
    missing input is reported as such, not as a consequence for ``-o``)."""
    ensure_inputs(inputs)
    extra = {} if allowed_fields is None else {"allowed_fields": allowed_fields}
    return OutputPlanner(
        output=output.output,
        template=output.filename,
        default_template=default_template,
        default_dir=default_dir,
        inputs=inputs.files,
        single_output=single_output,
        **extra,
    )


def audio_extension(output: OutputOptions) -> str:
    """The extension of audio outputs: ``--format``, else ``-o``'s suffix, else ``wav``."""
    if output.format:
        return output.format
    if output.output is not None and output.output.suffix and not output.output.is_dir():
        return output.output.suffix.lstrip(".").lower()
    return "wav"


def _nothing(item: WorkItem, audio: AudioData) -> Produced:
    raise AssertionError(f"{item.input} was planned as skipped")


def _failure(item: str, error: AudiotoolError, seconds: float) -> FileResult:
    message = error.message if item in error.message else f"{item}: {error.message}"
    return FileResult(
        input=item,
        status="failed",
        error=message,
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

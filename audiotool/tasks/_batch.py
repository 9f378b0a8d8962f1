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

:func:`run_files` is both steps with the model loaded lazily in between (``start(progress)``
runs only when some item is left to process), and the at-scale options
(:class:`ScaleOptions`) between them: the plan keeps this process's shard
(:meth:`BatchPlan.for_shard`), ``--resume`` marks the items a manifest records as done
(:func:`resume_plan`), every finished or failed input is appended to the manifest, and with
``engine="ray"`` the items run on a Ray cluster (:func:`audiotool.runners.ray.run_on_ray`: each
worker calls ``start(None)`` once, then :func:`run_item` per item). A task keeps only what is
its own: the names of its outputs (``targets_for``), the processing of one signal (``start``,
a picklable factory: a module-level function bound with :func:`functools.partial`) and what
identifies its outputs (``identity``, see :class:`RunIdentity`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from audiotool.errors import AudiotoolError, InputError, UsageError
from audiotool.paths import (
    ExpandedInputs,
    OutputPlanner,
    check_existing,
    check_writable,
    remove_stale_temporaries,
)
from audiotool.progress import NullProgress, Progress
from audiotool.tasks._items import (
    DEFAULT_BATCH_ACCELERATOR,
    DEFAULT_BATCH_CPU,
    FileLogFilter,
    FileResult,
    OutputOptions,
    ProcessFn,
    Produced,
    ResultHook,
    Runner,
    RuntimeOptions,
    StartFn,
    Status,
    Streaming,
    WorkItem,
    _failure,
    current_input,
    no_process,
    run_item,
    run_one,
)

__all__ = [
    "DEFAULT_BATCH_ACCELERATOR",
    "DEFAULT_BATCH_CPU",
    "BatchInterrupted",
    "BatchPlan",
    "BatchReport",
    "FileLogFilter",
    "FileResult",
    "OutputOptions",
    "ProcessFn",
    "Produced",
    "ResultHook",
    "RunIdentity",
    "Runner",
    "RuntimeOptions",
    "ScaleOptions",
    "StartFn",
    "Status",
    "Streaming",
    "WorkItem",
    "current_input",
    "drive",
    "execute",
    "no_process",
    "plan_batch",
    "run_files",
    "run_item",
    "run_one",
]

if TYPE_CHECKING:
    from audiotool.manifest import ResumeIndex
    from audiotool.runners.ray import RayOptions
    from audiotool.shards import Shard

log = logging.getLogger(__name__)


# Measured (benchmarks/RESULTS.md, 2-core CPU): on a CPU, batching chunks is within 1% of one
# chunk per forward at best and up to 37% slower (HDemucs, batch 4), and it costs memory; on a
# GPU it is the point.


Engine = Literal["local", "ray"]


@dataclasses.dataclass(frozen=True)
class ScaleOptions:
    """How a batch is spread and recorded (shared by every task).

    Attributes:
        shard: process only this shard of the inputs (``--shard I/N`` / ``auto``).
        manifest: append one JSON line per finished input to this file.
        resume: skip inputs whose last manifest line is ``ok`` with the same options digest,
            unchanged input and existing outputs; redo the others over their old outputs and
            temporaries (needs ``manifest``).
        engine: ``local`` (this process) or ``ray`` (:mod:`audiotool.runners.ray`).
        ray: cluster settings for ``engine="ray"``.
    """

    shard: Shard | None = None
    manifest: Path | None = None
    resume: bool = False
    engine: Engine = "local"
    ray: RayOptions | None = None

    def __post_init__(self) -> None:
        if self.resume and self.manifest is None:
            raise UsageError(
                "--resume needs --manifest FILE.jsonl",
                hint="the manifest records which inputs are done and with which options",
            )
        if self.engine not in ("local", "ray"):
            raise UsageError(f"--engine must be one of ['local', 'ray'], got {self.engine!r}")

    @property
    def collects_per_file(self) -> bool:
        """True when results must come back to this process one by one and be final: a task
        that gathers every input into one file (``embed -o x.npz``, ``reconstruct
        --latents``) cannot run like this (remote workers, or a resumed half of a batch)."""
        return self.engine == "ray" or self.resume


@dataclasses.dataclass(frozen=True)
class RunIdentity:
    """What identifies a batch's outputs, for the manifest and ``--resume``.

    Attributes:
        options: :func:`audiotool.manifest.options_digest` of everything that changes the
            outputs (task options, model and revision, seed, precision, audio format).
        model: model id(s).
        revision: what identifies the weights (Hub commit or a hash of the files).
    """

    options: str | None = None
    model: str | None = None
    revision: str | None = None


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


@dataclasses.dataclass
class BatchPlan:
    """Everything :func:`execute` needs, computed before anything runs."""

    task: str
    items: list[WorkItem]
    problems: list[tuple[str, AudiotoolError]] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    #: inputs of the batch that other shards process (never written over either)
    others: list[Path] = dataclasses.field(default_factory=list)

    @property
    def inputs(self) -> list[Path]:
        """Every input of the batch, this shard's and the others' (never written over)."""
        return [item.input for item in self.items] + self.others

    @property
    def to_run(self) -> list[WorkItem]:
        return [i for i in self.items if not i.skip and i.error is None]

    def for_shard(self, shard: Shard | None) -> BatchPlan:
        """The part of the plan that ``shard`` owns (all of it for None or one shard).

        Items go by their key; unusable command-line items (``problems``, ``ignored``) by the
        item as given, so each is reported by exactly one shard. The outputs were planned over
        the whole batch, so clashes between shards were found before.
        """
        if shard is None or shard.count == 1:
            return self
        return BatchPlan(
            self.task,
            [i for i in self.items if shard.owns(i.key)],
            [(name, e) for name, e in self.problems if shard.owns(name)],
            [name for name in self.ignored if shard.owns(name)],
            [i.input for i in self.items if not shard.owns(i.key)] + self.others,
        )


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
            items.append(WorkItem(path, targets, error=exc, key=inputs.key(path)))
            continue
        items.append(WorkItem(path, targets, skip=skip, key=inputs.key(path)))
    return BatchPlan(task, items, list(inputs.problems), list(inputs.ignored))


# --------------------------------------------------------------------------- running it


def execute(
    plan: BatchPlan,
    process: ProcessFn,
    *,
    output: OutputOptions = OutputOptions(),
    progress: Progress | None = None,
    on_result: ResultHook | None = None,
) -> BatchReport:
    """Run every item of ``plan`` in order, here, collecting failures (see the module docstring).

    The next inputs are read ahead on a background thread, and a ``process`` that is a
    :class:`~audiotool.tasks._packing.Packing` runs consecutive short files through shared
    forward passes (:func:`audiotool.tasks._packing.local_runner`; ``AUDIOTOOL_PACK=0``: file
    by file, nothing read ahead). Results, manifest rows and ``--fail-fast`` keep input order.

    Unexpected exceptions (bugs) are recorded as failures with the exception type, unless
    ``AUDIOTOOL_DEBUG`` is set, in which case they propagate with their traceback.

    Args:
        on_result: called with every result that is not ``skipped`` (the manifest).

    Raises:
        UsageError: raised by ``process`` (an option that cannot work for any file).
        BatchInterrupted: Ctrl-C; carries the report so far.
    """
    from audiotool.tasks._packing import local_runner, per_file

    protect = plan.inputs
    single = per_file(process)

    def run_here(items: Sequence[WorkItem]) -> Iterator[tuple[int, FileResult]]:
        for i, item in enumerate(items):
            yield i, run_one(item, single, output=output, protect=protect)

    runner = local_runner(process, output=output, protect=protect, plain=run_here) or run_here
    return drive(plan, runner, output=output, progress=progress, on_result=on_result)


def drive(
    plan: BatchPlan,
    runner: Runner,
    *,
    output: OutputOptions = OutputOptions(),
    progress: Progress | None = None,
    on_result: ResultHook | None = None,
) -> BatchReport:
    """The bookkeeping of :func:`execute` around any ``runner`` (here, or a cluster):
    expansion problems first, progress, ``--fail-fast``, results in input order, Ctrl-C."""
    progress = progress or NullProgress()
    report = BatchReport(task=plan.task)

    def record(result: FileResult, item: WorkItem | None) -> None:
        if on_result is not None and result.status != "skipped":
            on_result(result, item)

    for item_name, error in plan.problems:
        failure = _failure(item_name, error, 0.0)
        report.results.append(failure)
        record(failure, None)
    for name in plan.ignored:
        report.results.append(
            FileResult(input=name, status="skipped", note="not an audio file name, skipped")
        )
    if plan.problems and output.fail_fast:
        return report
    done: dict[int, FileResult] = {}
    progress.start("files", len(plan.items), plan.task)
    try:
        results = runner(plan.items)
        try:
            for i, result in results:
                done[i] = result
                record(result, plan.items[i])
                progress.update("files", len(done))
                if output.fail_fast and result.status == "failed":
                    break
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()
    except KeyboardInterrupt as exc:
        report.results.extend(done[i] for i in sorted(done))
        report.interrupted = True
        raise BatchInterrupted(report) from exc
    finally:
        progress.end("files")
    report.results.extend(done[i] for i in sorted(done))
    return report


def run_files(
    task: str,
    inputs: ExpandedInputs,
    *,
    targets_for: TargetsFn | None,
    start: StartFn,
    output: OutputOptions = OutputOptions(),
    progress: Progress | None = None,
    audio_outputs: bool = True,
    scale: ScaleOptions | None = None,
    identity: Callable[[], RunIdentity] | None = None,
) -> BatchReport:
    """:func:`plan_batch`, then ``start(progress)`` (load the model) only if something is left
    to run, then :func:`execute`; with ``scale``, see the module docstring.

    Args:
        start: builds the process function; picklable for ``engine="ray"`` (:data:`StartFn`).
        scale: shard, manifest, resume and engine.
        identity: what identifies the outputs (computed only when a manifest is used; it may
            hash the weights); None: the task name alone.

    Raises:
        UsageError: as :func:`plan_batch`, and a manifest that is not one
            (:class:`~audiotool.manifest.ManifestError`), before anything is written.
    """
    from audiotool.manifest import ResumeIndex, optional_writer, read_manifest

    scale = scale or ScaleOptions()
    output = resume_output(output, scale)
    index: ResumeIndex | None = None
    if scale.manifest is not None:  # a file that is not a manifest is refused before any write
        rows = read_manifest(scale.manifest, missing_ok=True)
        index = ResumeIndex.from_rows(rows) if scale.resume else None
    plan = plan_batch(task, inputs, targets_for, output=output, audio_outputs=audio_outputs)
    plan = plan.for_shard(scale.shard)
    ident = RunIdentity()
    if scale.manifest is not None:
        ident = identity() if identity is not None else task_identity(task)
    if index is not None:
        plan = resume_plan(plan, index, ident)
    with optional_writer(scale.manifest) as writer:
        on_result: ResultHook | None = None
        if writer is not None:
            shard = str(scale.shard) if scale.shard is not None else None

            def on_result(result: FileResult, item: WorkItem | None) -> None:
                assert writer is not None
                writer.append(_manifest_row(task, result, item, ident, shard))

        if scale.engine == "ray":
            from audiotool.runners.ray import RayOptions, ray_runner

            runner = ray_runner(
                start, output=output, protect=plan.inputs, options=scale.ray or RayOptions()
            )
            report = drive(plan, runner, output=output, progress=progress, on_result=on_result)
        else:
            process: ProcessFn = start(progress) if plan.to_run else no_process
            report = execute(plan, process, output=output, progress=progress, on_result=on_result)
    if scale.shard is not None:
        report.extra["shard"] = str(scale.shard)
    return report


def resume_output(output: OutputOptions, scale: ScaleOptions) -> OutputOptions:
    """``--resume`` redoes unfinished inputs over their old outputs (unless --skip-existing)."""
    if scale.resume and not output.skip_existing and not output.overwrite:
        return dataclasses.replace(output, overwrite=True)
    return output


def task_identity(task: str, **options: object) -> RunIdentity:
    """The identity of a task run without a model (``info``)."""
    from audiotool.manifest import options_digest

    return RunIdentity(options=options_digest({"task": task, **options}))


def resume_plan(plan: BatchPlan, index: ResumeIndex, identity: RunIdentity) -> BatchPlan:
    """Mark the items ``index`` records as done with the same options (``--resume``); remove
    the temporary files a killed run left for the targets of the items that will run again."""
    items: list[WorkItem] = []
    for item in plan.items:
        if identity.options is not None and index.done(
            item.input, item.targets.values(), identity.options
        ):
            item = dataclasses.replace(item, skip=True, error=None, resumed=True)
        elif not item.skip and item.error is None:
            for target in item.targets.values():
                if remove_stale_temporaries(Path(target)):
                    log.info("removed temporary files of %s left by an interrupted run", target)
        items.append(item)
    return dataclasses.replace(plan, items=items)


def _manifest_row(
    task: str, result: FileResult, item: WorkItem | None, ident: RunIdentity, shard: str | None
) -> Any:
    from audiotool.manifest import make_row

    return make_row(
        input=result.input,
        status=result.status,
        task=task,
        outputs=result.outputs,
        key=item.key if item is not None else None,
        model=ident.model,
        revision=ident.revision,
        options=ident.options,
        error=result.error,
        hint=result.hint,
        seconds=result.seconds,
        shard=shard,
    )


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

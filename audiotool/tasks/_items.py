"""One unit of a batch: a :class:`WorkItem` (an input and its planned outputs), how a task
turns it into outputs (``start(progress) -> process(item, audio) -> Produced``) and how
:func:`run_item` / :func:`run_one` read, process and write it (all outputs of an input or none,
never over a file that appeared meanwhile unless ``--overwrite``).

This is what any runner executes — the local loop of :mod:`audiotool.tasks._batch` or a
cluster worker (:mod:`audiotool.runners.ray`) — so it depends on neither.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from audiotool.errors import AudiotoolError, UsageError, debug_enabled
from audiotool.paths import atomic_outputs

if TYPE_CHECKING:
    from torch import Tensor

    from audiotool.audio import AudioData, BitDepth, ClipMode
    from audiotool.progress import Progress
    from audiotool.stream import AudioSink, AudioSource

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

    def sink(
        self, path: Path, sample_rate: int, channels: int, *, name: Path | None = None
    ) -> AudioSink:
        """A streamed writer of ``path`` in these options' format
        (:class:`audiotool.stream.AudioSink`; ``name``: the final path, for its extension)."""
        from audiotool.stream import AudioSink

        return AudioSink(
            path,
            sample_rate,
            channels,
            bit_depth=self.bit_depth,
            clip=self.clip,
            fmt=self.format,
            name=name,
        )


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


@dataclasses.dataclass(frozen=True)
class WorkItem:
    """One unit of work: an input and where its outputs go.

    Attributes:
        input: the input file.
        targets: final output paths by output name (a stem, ``"audio"``, ...); empty for tasks
            that keep results in memory (e.g. one combined file written after the batch).
        skip: ``--skip-existing`` and every target exists, or ``resumed``.
        error: found while planning (an output exists); the item is reported, not run.
        key: the input's path below its root (:attr:`~audiotool.paths.ExpandedInputs.keys`),
            what shards are assigned by.
        resumed: ``--resume`` found it done in the manifest (``skip`` is set too).
    """

    input: Path
    targets: Mapping[str, Path] = dataclasses.field(default_factory=dict)
    skip: bool = False
    error: AudiotoolError | None = None
    key: str = ""
    resumed: bool = False


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
    #: long files: fills every output's temporary path (``{name: tmp}``, in the format of
    #: the :class:`OutputOptions`) block by block as the work proceeds (the work runs inside
    #: it, see :class:`Streaming`); may add to ``details``
    write: Callable[[Mapping[str, Path], OutputOptions], None] | None = None


ProcessFn = Callable[[WorkItem, "AudioData"], Produced]

#: the long-file path of a task: ``(item, source) -> Produced`` whose :attr:`Produced.write`
#: reads ``source`` in blocks and writes the outputs as they are finished
StreamFn = Callable[[WorkItem, "AudioSource"], Produced]

#: inputs longer than this (seconds, from the header) take a task's :class:`Streaming` path;
#: the environment variable ``AUDIOTOOL_STREAM_SECONDS`` overrides it
STREAM_SECONDS = 600.0


def stream_seconds() -> float:
    """The duration above which inputs are streamed (:data:`STREAM_SECONDS` or the
    ``AUDIOTOOL_STREAM_SECONDS`` environment variable)."""
    import os

    value = os.environ.get("AUDIOTOOL_STREAM_SECONDS")
    return float(value) if value else STREAM_SECONDS


@dataclasses.dataclass(frozen=True)
class Streaming:
    """A process function with a long-file path: called like ``process``, and :func:`run_item`
    calls ``stream`` instead for inputs longer than :func:`stream_seconds` (memory then
    bounded by the chunk, not the duration; outputs equal to float precision)."""

    process: ProcessFn
    stream: StreamFn

    def __call__(self, item: WorkItem, audio: AudioData) -> Produced:
        return self.process(item, audio)


#: builds a task's ``process`` (loads the model); gets the progress sink for per-file bars
#: (None in a remote worker). Must be picklable for ``engine="ray"``: a module-level function
#: bound with :func:`functools.partial` to picklable arguments.
StartFn = Callable[["Progress | None"], ProcessFn]


#: called with each finished or failed result (the manifest)
ResultHook = Callable[[FileResult, WorkItem | None], None]


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
    read: Callable[[Path], AudioData] | None = None,
) -> FileResult:
    """Process and write one planned item (the unit a shard or a remote worker runs).

    Args:
        read: how the input is read (default :func:`audiotool.audio.read_audio`; the local
            driver passes the audio it read ahead, :mod:`audiotool.tasks._prefetch`). Only
            for inputs known short (:func:`is_long` False): with it, a :class:`Streaming`
            process is not asked whether to stream (no second header read).

    Raises:
        AudiotoolError: the file failed (the batch records it); UsageError stops the batch.
    """
    from audiotool.audio import read_audio

    if item.error is not None:
        raise item.error
    if item.skip:
        return FileResult(
            input=str(item.input),
            status="skipped",
            outputs=[str(t) for t in item.targets.values()],
            note="done (manifest)" if item.resumed else "outputs exist",
            details={"resumed": True} if item.resumed else {},
        )
    token = current_input.set(str(item.input))
    # an input given by ``read`` was read ahead: the read-ahead found it short (is_long)
    streams = isinstance(process, Streaming) and read is None
    source = _long_input(item.input) if streams else None
    try:
        if source is not None:
            assert isinstance(process, Streaming)
            with source:
                produced = process.stream(item, source)
                _write_streamed(item, produced, output=output, protect=protect)
        else:
            produced = process(item, (read or read_audio)(item.input))
            _write(item, produced, output=output, protect=protect)
    finally:
        current_input.reset(token)
    return FileResult(
        input=str(item.input),
        outputs=[str(t) for t in item.targets.values()],
        details=produced.details,
    )


def is_long(path: Path) -> bool:
    """Whether the header says ``path`` is longer than :func:`stream_seconds` (unreadable
    headers: False, the in-memory reader reports them)."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError):
        return False
    return bool(info.samplerate) and info.frames / info.samplerate > stream_seconds()


def _long_input(path: Path) -> AudioSource | None:
    """``path`` opened for streaming when :func:`is_long`; None otherwise."""
    from audiotool.stream import AudioSource

    return AudioSource(path) if is_long(path) else None


def _write_streamed(
    item: WorkItem, produced: Produced, *, output: OutputOptions, protect: Sequence[Path]
) -> None:
    with atomic_outputs(item.targets, protect=protect, overwrite=output.overwrite) as tmps:
        if produced.write is not None:
            produced.write(tmps, output)
        for name, tmp in tmps.items():
            if name in produced.files:
                produced.files[name](tmp)


def _write(
    item: WorkItem, produced: Produced, *, output: OutputOptions, protect: Sequence[Path]
) -> None:
    from audiotool.audio import save_audio

    if produced.write is not None:
        _write_streamed(item, produced, output=output, protect=protect)
        return
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


#: runs items, yields ``(index in items, result)`` in any order
Runner = Callable[[Sequence[WorkItem]], Iterator[tuple[int, FileResult]]]


def run_one(
    item: WorkItem,
    process: ProcessFn,
    *,
    output: OutputOptions,
    protect: Sequence[Path],
    read: Callable[[Path], AudioData] | None = None,
) -> FileResult:
    """:func:`run_item` timed, a per-file error turned into a ``failed`` result.

    Raises:
        UsageError: an option that cannot work for any file (stops the batch).
    """
    t0 = time.perf_counter()
    try:
        result = run_item(item, process, output=output, protect=protect, read=read)
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


def _failure(item: str, error: AudiotoolError, seconds: float) -> FileResult:
    message = error.message if item in error.message else f"{item}: {error.message}"
    return FileResult(
        input=item,
        status="failed",
        error=message,
        hint=error.hint,
        seconds=round(seconds, 3),
    )


def no_process(item: WorkItem, audio: AudioData) -> Produced:
    """The process of a plan with nothing to run (its items are skipped or failed)."""
    raise AssertionError(f"{item.input} was planned as skipped")

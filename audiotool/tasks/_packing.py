"""The local loop with read-ahead and packing: many short files per forward pass.

A task whose work is chunks through one model (embed, reconstruct, the overlap-add separators)
returns a :class:`Packing` from its ``start``: the per-file ``process`` as before, plus the
same work in three steps — ``prepare`` (the CPU part that needs no model: resampling to the
model rate, the channel policy), ``plan`` (the file's :class:`~audiotool.engine.packing.ChunkJob`
list, a per-file global context computed here, once) and the returned :attr:`FileWork.finish`
(from the jobs' outputs to the :class:`~audiotool.tasks._items.Produced` of the per-file path,
through the same code). :func:`local_runner` then runs a batch so:

- inputs are read and prepared ahead on a background thread (:mod:`audiotool.tasks._prefetch`);
- consecutive files with fewer chunks than ``--batch-size`` whose chunks have one shape
  (:func:`~audiotool.engine.packing.pack_key`) are packed: their chunks share forward passes
  (:func:`~audiotool.engine.packing.run_packed`), each file's rows with its own context; a
  pack closes when its chunks fill whole mini-batches (or :data:`PACK_BATCHES` of them);
- longer files run alone (the same code, their own mini-batches); long inputs (streamed),
  and anything when packing is off, take the per-file ``process``;
- results come out in input order; each file is finished and written on its own
  (:func:`~audiotool.tasks._items.run_one`), so a file that fails to read, plan, finish or
  write fails alone with its one-line error. A forward pass that fails (not a usage error)
  fails the files of its pack with that error; ``--fail-fast`` stops at the first failure,
  before the files after it are finished or written.

Outputs are those of the file-by-file path: a file's chunks are cut, accumulated and finished
by the same code, only the rows next to them in a forward differ (equal for models whose batch
rows do not interact; ``tests/tasks/test_packing.py`` checks the bundled families bit for bit
on the CPU).

Any task gets the read-ahead: a plain process function (upsample, demucs-scheme separation,
ensembles) is run file by file on inputs decoded in the background. ``AUDIOTOOL_PACK=0`` turns
both off (the plain loop of :func:`audiotool.tasks._batch.execute`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiotool.errors import UsageError
from audiotool.tasks._items import (
    FileResult,
    OutputOptions,
    ProcessFn,
    Produced,
    Runner,
    WorkItem,
    no_process,
    run_one,
)
from audiotool.tasks._prefetch import Prefetched, Prefetcher

if TYPE_CHECKING:
    import torch

    from audiotool.audio import AudioData
    from audiotool.engine.overlap_add import ChunkModel
    from audiotool.engine.packing import ChunkJob
    from audiotool.progress import Progress

log = logging.getLogger(__name__)

#: a pack closes at this many mini-batches even when its chunks do not fill the last one
PACK_BATCHES = 4


@dataclasses.dataclass(frozen=True)
class FileWork:
    """A task's work on one file, for a packing driver.

    Attributes:
        jobs: the file's chunk jobs (one per signal: a file, or each channel group).
        finish: called once every job's chunks went through the model; the file's outputs,
            exactly as the per-file ``process`` returns them.
    """

    jobs: Sequence[ChunkJob]
    finish: Callable[[], Produced]


@dataclasses.dataclass(frozen=True)
class Packing:
    """A process function that a local batch may also run packed (see the module docstring).

    Attributes:
        process: the per-file path (a plain function or a
            :class:`~audiotool.tasks._items.Streaming`): long inputs, Ray workers, one file.
        prepare: ``(item, audio) -> prepared``; no model, thread-safe (run on the read-ahead
            thread when the model is on the CPU; on an accelerator, here, where it runs on
            the device as the per-file path does).
        plan: ``(item, audio, prepared) -> FileWork``; may run models (a global context).
        model: what the jobs' chunks go through.
        batch_size: chunks per forward.
        device: the model's device.
        dtype: autocast dtype, or None.
        progress: chunk progress sink.
    """

    process: ProcessFn
    prepare: Callable[[WorkItem, AudioData], Any]
    plan: Callable[[WorkItem, AudioData, Any], FileWork]
    model: ChunkModel
    batch_size: int
    device: torch.device
    dtype: torch.dtype | None = None
    progress: Progress | None = None

    def __call__(self, item: WorkItem, audio: AudioData) -> Produced:
        return self.process(item, audio)


def per_file(process: ProcessFn) -> ProcessFn:
    """The per-file process function of ``process`` (a :class:`Packing`'s own)."""
    return process.process if isinstance(process, Packing) else process


def enabled() -> bool:
    """Read-ahead and packing are on unless ``AUDIOTOOL_PACK=0``."""
    return os.environ.get("AUDIOTOOL_PACK", "1").strip().lower() not in ("0", "false", "no")


def _spare_core() -> bool:
    """Whether torch's CPU threads leave a CPU of this process free for the read-ahead."""
    import torch

    from audiotool.device import available_cpus

    return torch.get_num_threads() < available_cpus()


def local_runner(
    process: ProcessFn, *, output: OutputOptions, protect: Sequence[Path], plain: Runner
) -> Runner | None:
    """The runner of a local batch with read-ahead (and packing for a :class:`Packing`);
    None when ``AUDIOTOOL_PACK=0`` or when neither helps (the caller runs ``plain``, its
    file-by-file loop, which also runs batches with fewer than two inputs to process)."""
    if not enabled():
        return None
    spare = False  # torch's threads leave a core for the read-ahead (asked once, CPU only)
    if isinstance(process, Packing) and process.device.type == "cpu":
        spare = _spare_core()
        if process.batch_size <= 1 and not spare:
            # nothing to pack and no core for the read-ahead: the plain loop (measured faster
            # on 2 cores with 2 torch threads: the read-ahead's bookkeeping cost ~8%)
            return None

    def run(items: Sequence[WorkItem]) -> Iterator[tuple[int, FileResult]]:
        todo = [i for i in items if not i.skip and i.error is None]
        if len(todo) < 2:  # nothing to overlap
            yield from plain(items)
        elif isinstance(process, Packing):
            yield from _run_packed(
                items, todo, process, output=output, protect=protect, prepare_ahead=spare
            )
        else:
            yield from _run_ahead(items, todo, process, output=output, protect=protect)

    return run


def _run_ahead(
    items: Sequence[WorkItem],
    todo: Sequence[WorkItem],
    process: ProcessFn,
    *,
    output: OutputOptions,
    protect: Sequence[Path],
) -> Iterator[tuple[int, FileResult]]:
    """File by file, inputs decoded ahead."""
    with Prefetcher(todo) as fetch:
        for i, item in enumerate(items):
            if item.skip or item.error is not None:
                yield i, run_one(item, no_process, output=output, protect=protect)
                continue
            entry = fetch.next()
            assert entry.item is item
            read = None if entry.direct else entry.read
            yield i, run_one(item, process, output=output, protect=protect, read=read)


@dataclasses.dataclass
class _Pending:
    """A planned file waiting for its pack's forwards."""

    index: int
    item: WorkItem
    audio: AudioData
    work: FileWork
    seconds: float
    #: the jobs' common :func:`~audiotool.engine.packing.pack_key`; None: they differ (or
    #: there are none), the file runs alone
    key: Hashable | None


def _run_packed(
    items: Sequence[WorkItem],
    todo: Sequence[WorkItem],
    packing: Packing,
    *,
    output: OutputOptions,
    protect: Sequence[Path],
    prepare_ahead: bool,
) -> Iterator[tuple[int, FileResult]]:
    """See the module docstring (``prepare_ahead``: see :class:`_PackedLoop`)."""
    loop = _PackedLoop(packing, output=output, protect=protect, prepare_ahead=prepare_ahead)
    with Prefetcher(todo, packing.prepare if loop.prepare_ahead else None) as fetch:
        for i, item in enumerate(items):
            if loop.stopped:
                break
            if item.skip or item.error is not None:
                loop.ready[i] = run_one(item, no_process, output=output, protect=protect)
            else:
                entry = fetch.next()
                assert entry.item is item
                yield from loop.add(i, entry)
            yield from loop.drain()
        if not loop.stopped:
            yield from loop.flush()
        yield from loop.drain()


class _PackedLoop:
    """The state of :func:`_run_packed`: the open pack and the results not yet handed out
    (``ready``: a result waits there until every earlier input's is out, so results and
    manifest rows keep input order; each is handed out as soon as it can be)."""

    def __init__(
        self,
        packing: Packing,
        *,
        output: OutputOptions,
        protect: Sequence[Path],
        prepare_ahead: bool,
    ) -> None:
        self.packing, self.output, self.protect = packing, output, protect
        # the CPU part (resampling) runs on the read-ahead thread only where a core is spare
        # (a model on the CPU, :func:`_spare_core`): with torch's threads on every core it
        # competes with the model (measured on 2 cores, 2 threads: embed 0.85x, reconstruct
        # 0.88x of the plain loop; 1 thread: 1.15x / 1.09x)
        self.prepare_ahead = prepare_ahead
        self.ready: dict[int, FileResult] = {}
        self.next = 0
        self.pack: list[_Pending] = []
        self.key: Hashable | None = None
        self.chunks = 0
        self.stopped = False  # --fail-fast met a failure: nothing after it runs

    def drain(self) -> Iterator[tuple[int, FileResult]]:
        while self.next in self.ready:
            yield self.next, self.ready.pop(self.next)
            self.next += 1

    def add(self, index: int, entry: Prefetched) -> Iterator[tuple[int, FileResult]]:
        """Run, pack or fail the input of ``entry``; yield what is finished."""
        item, bs = entry.item, self.packing.batch_size
        if entry.direct:  # long: the per-file path streams it
            yield from self.flush()
            if not self.stopped:
                self.ready[index] = run_one(
                    item, self.packing.process, output=self.output, protect=self.protect
                )
            return
        if entry.error is not None:
            yield from self.fail(index, item, entry.error)
            return
        try:
            pending = _plan(index, entry, self.packing, prepared_ahead=self.prepare_ahead)
        except UsageError:
            raise
        except Exception as exc:
            yield from self.fail(index, item, exc)
            return
        n, key = sum(j.n_chunks for j in pending.work.jobs), pending.key
        if key is None or n >= bs or key != self.key:
            yield from self.flush()
            if self.stopped:
                return
        self.pack.append(pending)
        self.key, self.chunks = key, self.chunks + n
        if key is None or n >= bs:  # alone: its own mini-batches
            yield from self.flush()
        elif self.chunks % bs == 0 or self.chunks >= PACK_BATCHES * bs:
            yield from self.flush()

    def flush(self) -> Iterator[tuple[int, FileResult]]:
        """The forwards of the open pack, its files finished and written one by one."""
        pack = list(self.pack)
        self.pack.clear()
        self.key, self.chunks = None, 0
        if not pack:
            return
        for index, result in _run_pack(
            pack, self.packing, output=self.output, protect=self.protect
        ):
            self.ready[index] = result
            yield from self.drain()
            if self.output.fail_fast and result.status == "failed":
                self.stopped = True
                return  # the rest of the pack is neither finished nor written

    def fail(
        self, index: int, item: WorkItem, error: BaseException
    ) -> Iterator[tuple[int, FileResult]]:
        """``item`` failed before its forward: the open pack first (the files before it),
        then its failure."""
        yield from self.flush()
        if self.stopped:
            return
        entry = Prefetched(item, error=error)
        self.ready[index] = run_one(
            item, no_process, output=self.output, protect=self.protect, read=entry.read
        )
        self.stopped = self.output.fail_fast


def _plan(index: int, entry: Prefetched, packing: Packing, *, prepared_ahead: bool) -> _Pending:
    """The file's :class:`FileWork` and its pack key (None: its jobs cannot share a forward
    with each other, so it runs alone), computed here once."""
    from audiotool.engine.packing import pack_key

    item, audio = entry.item, entry.audio
    assert audio is not None
    t0 = time.perf_counter()
    prepared = entry.prepared if prepared_ahead else packing.prepare(item, audio)
    work = packing.plan(item, audio, prepared)
    keys = {pack_key(j) for j in work.jobs}
    key = keys.pop() if len(keys) == 1 else None
    return _Pending(index, item, audio, work, time.perf_counter() - t0, key)


def _run_pack(
    pack: Sequence[_Pending],
    packing: Packing,
    *,
    output: OutputOptions,
    protect: Sequence[Path],
) -> Iterator[tuple[int, FileResult]]:
    """The forwards of a pack, then each file finished and written on its own."""
    import torch

    from audiotool.engine.packing import run_packed
    from audiotool.progress import chunk_progress

    t0 = time.perf_counter()
    error: BaseException | None = None
    jobs = [j for p in pack for j in p.work.jobs]
    groups: list[list[ChunkJob]] = [jobs]
    if len(pack) == 1 and pack[0].key is None and jobs:
        groups = [[j] for j in jobs]  # one file whose signals differ in shape
    try:
        with torch.inference_mode():
            for group in groups:
                run_packed(
                    packing.model,
                    group,
                    packing.batch_size,
                    dtype=packing.dtype,
                    progress=chunk_progress(packing.progress),
                    check=False,  # the keys were compared when the pack was made (_plan)
                )
    except UsageError:
        raise
    except Exception as exc:  # every file of the pack fails with it
        log.debug("a packed forward failed", exc_info=True)
        error = exc
    share = (time.perf_counter() - t0) / len(pack)
    for p in pack:

        def finish(
            item: WorkItem,
            audio: AudioData,
            work: FileWork = p.work,
            err: BaseException | None = error,
        ) -> Produced:
            if err is not None:
                raise err
            return work.finish()

        entry = Prefetched(p.item, audio=p.audio)
        result = run_one(p.item, finish, output=output, protect=protect, read=entry.read)
        result.seconds = round(result.seconds + p.seconds + share, 3)
        yield p.index, result

"""Packing: the chunks of several short signals through one forward pass.

Legend: ``b`` chunks per forward, ``C`` channels, ``L`` chunk length, ``D`` a per-signal
conditioning width.

A short file (one or two chunks) leaves most of a ``--batch-size`` mini-batch empty when it
runs alone, and the device waits on the host between files. :func:`run_packed` takes the
:class:`ChunkJob` of several signals (e.g.
:meth:`audiotool.engine.overlap_add.OverlapAddProcessor.job`, one per file or channel group),
numbers their chunks consecutively, cuts that sequence into mini-batches of ``batch_size``
(halved on out-of-memory, :func:`audiotool.engine.batching.map_batches`), stacks the chunks of
each mini-batch into one ``(b, C, L)`` forward and hands every job the outputs of its own
chunks, in chunk order. Each job accumulates them exactly as it does when it runs alone
(:meth:`~audiotool.engine.overlap_add.OverlapAddJob.run`), so a signal's result does not
depend on its neighbours as long as the model treats the rows of a batch independently.

Per-signal conditioning (a query embedding, a global context) stays per signal: a tensor
keyword argument with a leading dimension of 1 is repeated for each of the signal's chunks in
the batch, so every row carries its own file's context. Jobs can share a forward only when
:func:`pack_key` says so (same chunk shape and dtype, same keyword arguments apart from the
values of those per-signal tensors).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from audiotool.engine.batching import ProgressFn, map_batches
from audiotool.engine.overlap_add import ChunkModel, _expand_kwargs, forward
from audiotool.errors import EngineError


class ChunkJob(Protocol):
    """The chunks of one signal and what becomes of their outputs.

    Attributes:
        n_chunks: ``N``.
        kwargs: model keyword arguments of this signal, on ``device``.
        device: where the chunks live.
    """

    kwargs: dict[str, Any]
    device: torch.device

    @property
    def n_chunks(self) -> int: ...

    def chunks(self, start: int, stop: int) -> Tensor:
        """Chunks ``start:stop`` as ``(b, C, L)``."""
        ...

    def add(self, start: int, stop: int, outputs: dict[str, Tensor]) -> None:
        """The model outputs of chunks ``start:stop`` (in order, each chunk once)."""
        ...


def pack_key(job: ChunkJob) -> Hashable:
    """What must agree for two jobs to share a forward: the device, the chunk shape and dtype,
    the names of the keyword arguments and, per name, the trailing shape and dtype of a
    per-signal tensor (leading dimension 1) or the value itself (anything else)."""
    first = job.chunks(0, 1)
    kwargs: list[tuple[str, Hashable]] = []
    for name, value in sorted(job.kwargs.items()):
        if _per_signal(value):
            kwargs.append((name, ("tensor", tuple(value.shape[1:]), str(value.dtype))))
        elif isinstance(value, Tensor):
            kwargs.append((name, ("shared", id(value))))
        else:
            kwargs.append((name, ("value", repr(value))))
    return (str(job.device), tuple(first.shape[1:]), str(first.dtype), tuple(kwargs))


def run_packed(
    model: ChunkModel,
    jobs: Sequence[ChunkJob],
    batch_size: int,
    *,
    dtype: torch.dtype | None = None,
    progress: ProgressFn | None = None,
    check: bool = True,
) -> None:
    """Run the chunks of every job through ``model``, ``batch_size`` chunks per forward across
    job boundaries, and give each job its outputs (see the module docstring).

    With one job this is that job's own ``run``: the same mini-batches, the same forwards.
    Call it under :func:`torch.inference_mode` (the jobs' buffers are made there).

    Args:
        model: ``(b, C, L), **kwargs -> (b, C', L')`` or ``{key: (b, C', L')}``.
        jobs: in order; all with one :func:`pack_key`.
        batch_size: chunks per forward at first (halved on out-of-memory).
        dtype: autocast dtype (bf16 / fp16); None: the model's own.
        progress: ``(chunks done, chunks total)`` over all jobs.
        check: compare the jobs' :func:`pack_key` first (each cuts a chunk); False for a
            caller that already did.

    Raises:
        EngineError: jobs that cannot share a forward (different :func:`pack_key`; only
            with ``check``).
        DeviceOutOfMemoryError: memory ran out with one chunk per forward.
    """
    jobs = [j for j in jobs if j.n_chunks > 0]
    if not jobs:
        return
    keys = {pack_key(j) for j in jobs} if check and len(jobs) > 1 else set()
    if len(keys) > 1:
        raise EngineError("these signals cannot share a forward pass (different chunk shapes)")
    starts = [0]
    for job in jobs:
        starts.append(starts[-1] + job.n_chunks)
    device = jobs[0].device

    def parts(start: int, stop: int) -> list[tuple[ChunkJob, int, int]]:
        """``(job, first chunk, end chunk)`` of every job with chunks in ``[start, stop)``."""
        out = []
        for job, lo, hi in zip(jobs, starts, starts[1:], strict=False):
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                out.append((job, a - lo, b - lo))
        return out

    def run(start: int, stop: int) -> dict[str, Tensor]:
        pieces = parts(start, stop)
        if len(pieces) == 1:
            job, lo, hi = pieces[0]
            kwargs = _expand_kwargs(job.kwargs, hi - lo)
            return forward(model, job.chunks(lo, hi), kwargs, device, dtype)
        batch = torch.cat([job.chunks(lo, hi) for job, lo, hi in pieces])
        return forward(model, batch, _packed_kwargs(pieces), device, dtype)

    def done(start: int, stop: int, outputs: dict[str, Tensor]) -> None:
        at = 0
        for job, lo, hi in parts(start, stop):
            n = hi - lo
            job.add(lo, hi, {k: v[at : at + n] for k, v in outputs.items()})
            at += n

    map_batches(run, starts[-1], batch_size, on_done=done, progress=progress)


def _per_signal(value: object) -> bool:
    return isinstance(value, Tensor) and value.dim() >= 2 and value.shape[0] == 1


def _packed_kwargs(pieces: Sequence[tuple[ChunkJob, int, int]]) -> dict[str, Any]:
    """The keyword arguments of a forward over the chunks of several jobs: a per-signal tensor
    shared by all of them is expanded as for one job; otherwise every job's own is repeated
    for its chunks and the rows concatenated in chunk order."""
    b = sum(hi - lo for _, lo, hi in pieces)
    first = pieces[0][0].kwargs
    out: dict[str, Any] = {}
    for name, value in first.items():
        values = [job.kwargs[name] for job, _, _ in pieces]
        if all(v is value for v in values) or not _per_signal(value):
            out[name] = _expand_kwargs({name: value}, b)[name]
            continue
        out[name] = torch.cat(
            [v.expand(hi - lo, *v.shape[1:]) for v, (_, lo, hi) in zip(values, pieces, strict=True)]
        )
    return out

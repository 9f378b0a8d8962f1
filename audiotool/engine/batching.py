"""Mini-batching with out-of-memory back-off.

:func:`map_batches` runs a function over ``total`` items in mini-batches and hands each finished
batch to a callback right away (the caller accumulates it), so when the device runs out of
memory only the *unfinished* items are retried, with half the batch size, down to one item.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

from audiotool.errors import DeviceOutOfMemoryError

log = logging.getLogger(__name__)

T = TypeVar("T")
ProgressFn = Callable[[int, int], None]


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/MPS/CPU allocator failures (``torch.OutOfMemoryError`` and the
    ``RuntimeError("... out of memory ...")`` that older backends and MPS raise)."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if (
        mps is not None
        and getattr(torch.backends, "mps", None)
        and torch.backends.mps.is_available()
    ):
        mps.empty_cache()


def map_batches(
    fn: Callable[[int, int], T],
    total: int,
    batch_size: int,
    *,
    on_done: Callable[[int, int, T], None],
    progress: ProgressFn | None = None,
    what: str = "chunks",
) -> int:
    """Call ``fn(start, stop)`` for consecutive item ranges covering ``[0, total)``.

    Args:
        fn: computes the items ``start:stop`` (e.g. a model forward on those chunks).
        total: number of items.
        batch_size: items per call at first.
        on_done: receives ``(start, stop, result)`` as soon as a range is finished.
        progress: ``(done, total)`` after each finished range.
        what: noun for messages ("chunks").

    Returns:
        The batch size in use at the end (smaller than ``batch_size`` after a back-off).

    Raises:
        DeviceOutOfMemoryError: memory ran out with a batch of one item.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    b = batch_size
    start = 0
    while start < total:
        stop = min(start + b, total)
        try:
            result = fn(start, stop)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            del exc
            _free_cache()
            if b == 1:
                raise DeviceOutOfMemoryError(
                    f"out of memory even with one {what[:-1] if what.endswith('s') else what} "
                    "per forward pass",
                    hint="use a smaller --chunk-seconds, or --device cpu",
                ) from None
            b = max(1, b // 2)
            log.warning("out of memory: retrying the remaining %s with batch size %d", what, b)
            continue
        on_done(start, stop, result)
        start = stop
        if progress is not None:
            progress(start, total)
    return b


def per_item(fn: Callable[..., Tensor], x: Tensor, *others: Tensor) -> Tensor:
    """``fn(x, *others)`` one item at a time, concatenated: ``(B, ...)`` out for ``x`` ``(B, ...)``.

    Item ``i`` is ``fn(x[i:i+1], *(o[i:i+1] for o in others))``; an ``other`` with a leading dim
    of 1 is shared, passed whole to every item. Used where a kernel's choice (oneDNN's
    convolutions, cuBLAS' products) depends on the batch size, so that an item's result does not
    change in the last bits with the items batched beside it.
    """

    def item(v: Tensor, i: int) -> Tensor:
        return v if v.shape[0] == 1 else v[i : i + 1]

    return torch.cat([fn(x[i : i + 1], *(item(o, i) for o in others)) for i in range(x.shape[0])])


def per_row(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``fn`` over the leading dim of ``x``, one distinct row at a time, at inference.

    Small matrix products (time embedding, per-item context) take a different BLAS / cuBLAS
    kernel for each batch size, so an item's result would change in the last bits with the
    batch it shares — and a vocoder's phase retrieval amplifies that to audible differences.
    Computing each distinct row alone makes the result batch-invariant (and cheaper: the rows of
    a DDIM step share one timestep). With gradients enabled (training) ``fn(x)`` is used.
    """
    if torch.is_grad_enabled() or x.shape[0] == 1:
        return fn(x)
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        # a CUDA graph cannot capture ``unique`` (data-dependent shape, host sync): every row
        # alone instead — the same per-row kernels, so the same numbers as the eager path
        return per_item(fn, x)
    rows, inverse = torch.unique(x.reshape(x.shape[0], -1), dim=0, return_inverse=True)
    outs = torch.cat([fn(rows[i : i + 1].reshape(1, *x.shape[1:])) for i in range(len(rows))])
    return outs[inverse]

"""Several streamed engine runs side by side, block by block.

The streamed engines (:meth:`OverlapAddProcessor.stream`,
:func:`~audiotool.engine.segments.stream_segments`) *push* finished blocks into a sink. Work
that combines several runs over the same file — test-time shifts, the channel groups of the
demucs scheme, the members of an ensemble — needs their blocks side by side. :func:`pulled`
turns one pushing run into an iterator (the run works in a thread and waits while its block
is not taken: at most one block ahead), and :func:`lockstep` cuts several iterators' blocks
to common lengths. Memory: one block and one batch per run.

Blocks are ``{key: (C, n)}`` tensors, consecutive along the last axis.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from audiotool.errors import EngineError

Blocks = dict[str, Tensor]
#: runs an engine, handing its finished blocks to the given sink in order
Producer = Callable[[Callable[[Blocks], None]], None]


class _Stopped(Exception):
    """The consumer went away: the producer's thread ends quietly."""


def pulled(produce: Producer, *, poll_s: float = 0.1) -> Generator[Blocks, None, None]:
    """The blocks ``produce`` pushes into its sink, as an iterator.

    ``produce`` runs in a thread; an exception there is raised here. Closing the iterator
    early (or an error in the consumer) stops the run at its next block.
    """
    slot: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> None:
        while not stop.is_set():
            try:
                slot.put(item, timeout=poll_s)
                return
            except queue.Full:
                continue
        raise _Stopped

    def target() -> None:
        try:
            produce(lambda blocks: put(("block", blocks)))
            put(("done", None))
        except _Stopped:
            return
        except BaseException as exc:  # handed to the consumer, raised there
            try:
                put(("error", exc))
            except _Stopped:
                return

    thread = threading.Thread(target=target, name="audiotool-stream", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = slot.get()
            if kind == "block":
                yield value
            elif kind == "done":
                return
            else:
                raise value
    finally:
        stop.set()
        while thread.is_alive():
            try:
                slot.get(timeout=poll_s)
            except queue.Empty:
                pass
        thread.join()


def lockstep(streams: Sequence[Iterator[Blocks]]) -> Iterator[list[Blocks]]:
    """Blocks of equal length from every stream, in order: ``[blocks of stream 0, ...]``.

    Raises:
        EngineError: the streams end at different lengths.
    """
    its = list(streams)
    held: list[Blocks | None] = [None] * len(its)
    ended = [False] * len(its)

    def size(b: Blocks | None) -> int:
        return 0 if not b else int(next(iter(b.values())).shape[-1])

    while True:
        for i, it in enumerate(its):
            while not ended[i] and size(held[i]) == 0:
                nxt = next(it, None)
                if nxt is None:
                    ended[i] = True
                else:
                    held[i] = nxt
        n = min(size(b) for b in held)
        if n == 0:
            if any(size(b) for b in held):
                raise EngineError("streams combined side by side ended at different lengths")
            return
        out: list[Blocks] = []
        for i, b in enumerate(held):
            assert b is not None
            out.append({k: v[..., :n] for k, v in b.items()})
            held[i] = {k: v[..., n:] for k, v in b.items()}
        yield out


class Windowed:
    """Apply ``fn`` to a stream of blocks with ``margin`` positions of context on each side.

    ``fn(window)`` maps ``{key: (C, m)}`` to outputs of the same length whose values more than
    ``margin`` positions from the window's edges do not depend on where the window was cut
    (e.g. an STFT with hop dividing ``margin``, ``margin >= n_fft``). Windows start at
    multiples of ``align`` (the STFT hop) or at 0; the signal's own edges are the first and
    the last windows' edges, so the result equals ``fn`` of the whole signal.

    Args:
        fn: the windowed operation.
        length: the signal's length.
        margin: context on each side (a multiple of ``align``).
        align: window starts are multiples of this.
    """

    def __init__(
        self, fn: Callable[[Blocks], Blocks], length: int, margin: int, *, align: int = 1
    ) -> None:
        if margin % align:
            raise EngineError(f"margin {margin} is not a multiple of {align}")
        self.fn, self.length, self.margin, self.align = fn, int(length), int(margin), int(align)
        self._buf: Blocks = {}
        self._start = self._end = self._done = 0

    def push(self, blocks: Blocks) -> Blocks:
        """Append ``blocks``; returns the finished outputs (``{}`` when none is finished)."""
        with torch.inference_mode():
            n = int(next(iter(blocks.values())).shape[-1])
            self._buf = (
                dict(blocks)
                if not self._buf
                else {k: torch.cat([self._buf[k], v], dim=-1) for k, v in blocks.items()}
            )
            self._end += n
            if self._end >= self.length:
                ready = self.length
            else:
                ready = (self._end - self.margin) // self.align * self.align
            if ready <= self._done:
                return {}
            w0 = max(self._start, self._done - self.margin)
            window = {k: v[..., w0 - self._start :] for k, v in self._buf.items()}
            out = self.fn(window)
            res = {k: v[..., self._done - w0 : ready - w0] for k, v in out.items()}
            keep = max(self._start, ready - self.margin)
            self._buf = {k: v[..., keep - self._start :].clone() for k, v in self._buf.items()}
            self._start, self._done = keep, ready
            return res

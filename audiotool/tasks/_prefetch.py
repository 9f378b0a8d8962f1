"""Reading ahead: the next inputs of a batch are decoded (and prepared) on a background thread
while the current one is on the device.

:class:`Prefetcher` walks the items in order on one daemon thread and puts each result on a
bounded queue, so at most ``ahead`` inputs wait decoded in memory (plus the one being read).
Inputs longer than :func:`~audiotool.tasks._items.stream_seconds` are never read ahead: they
come back as ``direct`` entries and the per-file path reads (or streams) them as before. An
error while reading or preparing one input is kept in its entry and raised when that input's
turn comes, so it fails alone, with the message the per-file path gives. :meth:`close` (also on
Ctrl-C, ``--fail-fast`` or any exit of the ``with`` block) stops the thread after the input it
is reading; nothing it holds is written anywhere.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from audiotool.tasks._items import WorkItem, current_input, is_long

if TYPE_CHECKING:
    from audiotool.audio import AudioData

log = logging.getLogger(__name__)

#: inputs read ahead of the one being processed (each at most stream_seconds long)
AHEAD = 2


@dataclasses.dataclass
class Prefetched:
    """One input as the background thread left it.

    Attributes:
        item: the work item.
        audio: the decoded input (None when ``direct`` or on error).
        prepared: what the task's ``prepare`` made of it (None without one).
        error: raised while reading or preparing; raised again by :meth:`read`.
        direct: a long input, not read ahead (the per-file path reads or streams it).
    """

    item: WorkItem
    audio: AudioData | None = None
    prepared: Any = None
    error: BaseException | None = None
    direct: bool = False

    def read(self, path: Path) -> AudioData:
        """The decoded input (a ``read`` for :func:`~audiotool.tasks._items.run_one`), or the
        error met while reading it."""
        if self.error is not None:
            raise self.error
        assert self.audio is not None, "a direct entry is read by the per-file path"
        return self.audio


_DONE = object()


class Prefetcher:
    """Decode ``items`` in order on a background thread (see the module docstring).

    Args:
        items: the inputs to read, in the order :meth:`next` returns them.
        prepare: run on the decoded input in the thread (CPU work that needs no model, e.g.
            resampling to the model rate); its result is :attr:`Prefetched.prepared`.
        ahead: decoded inputs waiting at most.

    Use as a context manager; :meth:`next` returns the entries in order.
    """

    def __init__(
        self,
        items: Sequence[WorkItem],
        prepare: Callable[[WorkItem, AudioData], Any] | None = None,
        *,
        ahead: int = AHEAD,
    ) -> None:
        self.items = list(items)
        self.prepare = prepare
        self.queue: queue.Queue[Prefetched | object] = queue.Queue(maxsize=max(1, ahead))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, name="audiotool-prefetch", daemon=True)
        self.taken = 0

    def __enter__(self) -> Prefetcher:
        self.thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the thread (after the input it is reading) and drop what it read."""
        self.stop.set()
        while True:  # unblock a put()
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=5.0)

    def next(self) -> Prefetched:
        """The next input's entry (blocks while the thread reads it)."""
        if self.taken >= len(self.items):
            raise IndexError("every input was taken")
        while True:
            try:
                entry = self.queue.get(timeout=0.5)
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    raise RuntimeError("the read-ahead thread stopped early") from None
                continue
            if entry is _DONE:
                raise RuntimeError("the read-ahead thread stopped early")
            assert isinstance(entry, Prefetched)
            self.taken += 1
            return entry

    def _put(self, entry: Prefetched | object) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(entry, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        from audiotool.audio import read_audio

        for item in self.items:
            if self.stop.is_set():
                return
            entry = Prefetched(item)
            token = current_input.set(str(item.input))
            try:
                if is_long(item.input):
                    entry.direct = True
                else:
                    entry.audio = read_audio(item.input)
                    if self.prepare is not None:
                        entry.prepared = self.prepare(item, entry.audio)
            except Exception as exc:  # kept for the input's turn: it fails alone
                log.debug("reading ahead %s failed", item.input, exc_info=True)
                entry.error, entry.audio, entry.prepared = exc, None, None
            finally:
                current_input.reset(token)
            if not self._put(entry):
                return
        self._put(_DONE)

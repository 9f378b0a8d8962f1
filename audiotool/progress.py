"""Progress reporting interface for library code.

Library functions never draw bars; they call a :class:`Progress` the caller passes in. The CLI
passes a rich implementation (``audiotool.cli._progress``); the default does nothing.

Keys used by the tasks: ``"files"`` (file i of N), ``"chunks"`` (chunks of the current file),
``"steps"`` (sampler steps of the current mini-batch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Progress(Protocol):
    """Receiver of progress events."""

    def start(self, key: str, total: int | None, description: str = "") -> None:
        """A new bar ``key`` with ``total`` units (None = unknown)."""

    def update(self, key: str, completed: int, total: int | None = None) -> None:
        """Set bar ``key`` to ``completed`` units (and optionally a new total)."""

    def end(self, key: str) -> None:
        """Bar ``key`` is finished (hide or freeze it)."""


class NullProgress:
    """A :class:`Progress` that ignores everything."""

    def start(self, key: str, total: int | None, description: str = "") -> None:
        return None

    def update(self, key: str, completed: int, total: int | None = None) -> None:
        return None

    def end(self, key: str) -> None:
        return None


def chunk_progress(progress: Progress | None, key: str = "chunks") -> Callable[[int, int], None]:
    """An engine callback ``(done, total)`` forwarding to ``progress`` bar ``key``."""
    sink = progress or NullProgress()
    started = False

    def update(done: int, total: int) -> None:
        nonlocal started
        if not started:
            sink.start(key, total)
            started = True
        sink.update(key, done, total)
        if done >= total:
            sink.end(key)
            started = False

    return update

"""Foreign checkpoint layouts: how a Hub repo or folder in someone else's format is recognised
and converted (once) into audiotool's format.

A layout is one importer module exposing ``LAYOUT = Layout(...)`` plus one line in
:data:`_LAYOUTS` below. :mod:`audiotool.hub` uses it when a repo or folder has no
``config.json``:

1. ``detect(folder, files)``: does this layout claim the repo? ``files`` are the repo's (or
   folder's) file names, relative POSIX paths; ``folder`` may not hold them yet (a Hub repo is
   listed before anything is downloaded), so decide from the names.
2. ``needed(files, file)``: the files ``convert`` reads (download patterns for
   :func:`huggingface_hub.snapshot_download`); ``file`` is the ``:FILE`` part of the spec.
   The converted cache is keyed by these files' hashes (not by ``file``), so they must
   determine the result: name the chosen checkpoint, not every checkpoint of the repo.
3. ``convert(folder, file=...)``: read them from ``folder`` and return an
   :class:`ImportedModel`. Raise :class:`~audiotool.errors.UnsupportedCheckpointError` (one
   line, exit code 2) for anything the layout does not support.
4. ``alias(name)`` (optional): a short name users type (``htdemucs_ft``) -> ``(repo_id, file)``.

The hub caches the converted model (``config.json`` + ``model.safetensors`` + card) keyed by
repo, revision, layout version and the hashes of the files read, so later runs load it
directly, offline.

This module does not import torch; layouts are loaded lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from audiotool.importers import ImportedModel, Layout

__all__ = ["ImportedModel", "Layout", "find_layout", "layouts", "resolve_alias"]


def _demucs() -> Layout:
    from audiotool.importers.demucs import LAYOUT

    return LAYOUT


def _roformer() -> Layout:
    from audiotool.importers.roformer import LAYOUT

    return LAYOUT


def _audiosr() -> Layout:
    from audiotool.importers.audiosr import LAYOUT

    return LAYOUT


#: layout name -> loader (order = detection priority)
_LAYOUTS: dict[str, Callable[[], Layout]] = {
    "demucs": _demucs,
    "roformer": _roformer,
    "audiosr": _audiosr,
}


def layouts() -> list[Layout]:
    """All registered layouts, in detection order."""
    return [load() for load in _LAYOUTS.values()]


def find_layout(folder: Path, files: Sequence[str]) -> Layout | None:
    """The first layout whose ``detect`` claims ``files``, or None."""
    for layout in layouts():
        if layout.detect(folder, files):
            return layout
    return None


def resolve_alias(name: str) -> tuple[str, str | None] | None:
    """``(repo_id, file)`` for a short name some layout publishes under, or None."""
    for layout in layouts():
        if layout.alias is not None:
            hit = layout.alias(name)
            if hit is not None:
                return hit
    return None

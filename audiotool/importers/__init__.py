"""Importers of public checkpoints into audiotool's format.

Each reads someone else's checkpoint (pickles with ``torch.load(..., weights_only=True)`` or a
restricted unpickler: no code runs; safetensors as they are), maps its keys explicitly and
strictly, and yields our format (``config.json`` + ``model.safetensors``). They run once per
checkpoint: by ``audiotool models convert``, or when :mod:`audiotool.hub` recognises a Hub
repo or folder in a registered :class:`Layout` (:mod:`audiotool.importers.layouts`) and caches
the converted copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiotool.errors import ModelLoadError

if TYPE_CHECKING:
    from torch import nn

    from audiotool.models._config import ModelConfig


def load_pickle_state(path: Path, *, key: str | None = None) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with clear errors; optionally take ``key``."""
    import pickle

    import torch

    if not Path(path).is_file():
        raise ModelLoadError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ModelLoadError(
            f"{path}: cannot be read safely with weights_only=True ({str(exc).splitlines()[0]})",
            hint="only plain tensor checkpoints are accepted; re-save the state_dict with "
            "torch.save(model.state_dict(), path)",
        ) from exc
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            raise ModelLoadError(
                f"{path}: no '{key}' entry in the checkpoint",
                hint="is this the right kind of checkpoint?",
            )
        data = data[key]
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: the checkpoint is not a state dict")
    return data


@dataclasses.dataclass(frozen=True)
class ImportedModel:
    """A converted model, ready for :func:`audiotool.checkpoints.save_pretrained`.

    Attributes:
        model: the family's module with the checkpoint's weights loaded strictly.
        config: its family config.
        card: README.md text (where it came from, its licence note).
    """

    model: nn.Module
    config: ModelConfig
    card: str


@dataclasses.dataclass(frozen=True)
class Layout:
    """One foreign layout (see the module docstring for the contract of each callable).

    Attributes:
        name: short name, written into the converted folder's ``source.json``.
        version: bump when ``convert`` changes its output; invalidates converted caches.
    """

    name: str
    detect: Callable[[Path, Sequence[str]], bool]
    needed: Callable[[Sequence[str], str | None], list[str]]
    convert: Callable[..., ImportedModel]
    alias: Callable[[str], tuple[str, str | None] | None] | None = None
    version: int = 1

"""Importers of public checkpoints into audiotool's format.

Each reads a pickle checkpoint with ``torch.load(..., weights_only=True)`` (no code runs), maps
its keys explicitly and strictly, and writes ``config.json`` + ``model.safetensors``. They are
run once, by ``audiotool models convert``; pickles are never loaded implicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from audiotool.errors import ModelLoadError


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

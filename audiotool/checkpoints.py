"""audiotool's checkpoint format: ``config.json`` + ``model.safetensors`` (+ a ``README.md``
card), read and written here; weights are always loaded strictly (every missing, unexpected or
reshaped key listed in one error).

Below :mod:`audiotool.hub` (which finds a spec's files) and the importers (which convert
someone else's checkpoints into this format): both use these functions, and this module uses
neither. Only the functions that build or load a model import torch.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiotool.errors import ConfigError, ModelLoadError, WeightMismatchError
from audiotool.models._config import ModelConfig
from audiotool.paths import replace_atomically, write_text_atomically

if TYPE_CHECKING:
    import torch
    from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes), read without torch.

    Raises:
        ModelLoadError: if the file is not a valid safetensors file.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise ValueError("file shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            size = path.stat().st_size
            if n > size - 8 or n > 100_000_000:
                raise ValueError("header length exceeds the file")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
        if 8 + n + end > size:
            raise ValueError(f"truncated: data needs {8 + n + end} bytes, file has {size}")
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"{path}: corrupt or truncated safetensors file ({exc})",
            hint="re-download it (audiotool models download SPEC) or re-export the model",
        ) from exc
    return header


def count_parameters(path: Path) -> int:
    """Number of tensor elements stored in a safetensors file (no torch needed)."""
    total = 0
    for name, info in safetensors_header(path).items():
        if name == "__metadata__":
            continue
        n = 1
        for d in info["shape"]:
            n *= int(d)
        total += n
    return total


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised model of the config's family (fixed registry, no dynamic import).

    Raises:
        ConfigError: the config names an unknown family or describes a model that cannot be
            built (inconsistent sizes: the family's own checks, or torch's layers refusing
            their arguments).
    """
    from audiotool.models.registry import get_family

    family = get_family(config.family)
    try:
        return family.build(config)
    except (ValueError, AssertionError) as exc:  # torch layers check their arguments so
        raise ConfigError(
            f"a '{family.name}' model cannot be built from this config: {exc}",
            hint="fix the config's sizes (config.json or the recipe's overrides)",
        ) from exc


def load_weights(model: nn.Module, path: Path, *, device: str | torch.device = "cpu") -> None:
    """Load a safetensors file into ``model`` strictly.

    Raises:
        ModelLoadError: the file is corrupt.
        WeightMismatchError: keys are missing or unexpected, or shapes differ (all listed).
    """
    from safetensors.torch import load_file

    safetensors_header(path)  # clear error for truncated / non-safetensors files
    try:
        state = load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types
        raise ModelLoadError(
            f"{path}: cannot read weights ({exc})",
            hint="re-download it (audiotool models download SPEC) or re-export the model",
        ) from exc
    load_state_strict(model, state, source=str(path))


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` into ``model`` strictly, after :func:`check_state_dict` has listed every
    problem in one error (``source`` names where the weights came from)."""
    check_state_dict(model, state, source=source)
    model.load_state_dict(state, strict=True)


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Raise :class:`WeightMismatchError` listing every missing, unexpected or reshaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:8]) + (
                    f", ... ({len(keys)} in all)" if len(keys) > 8 else ""
                )
                parts.append(f"{label}: {shown}")
        raise WeightMismatchError(
            f"{source}: weights do not match the model built from config.json; " + "; ".join(parts),
            missing=missing,
            unexpected=unexpected,
            mismatched=mismatched,
            hint="the checkpoint and config.json come from different models; re-export both",
        )


def save_pretrained(
    model: nn.Module,
    config: ModelConfig,
    folder: str | Path,
    *,
    card: str | None = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and (optionally) a ``README.md`` card.

    Each file is written to a temporary name in ``folder`` and renamed into place
    (:func:`audiotool.paths.replace_atomically`), with the permissions of a new file.
    """
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", "family": config.family}
    replace_atomically(out / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp), metadata))
    write_text_atomically(out / CONFIG_NAME, json.dumps(config.to_json_dict(), indent=2) + "\n")
    if card is not None:
        write_text_atomically(out / CARD_NAME, card)
    return out

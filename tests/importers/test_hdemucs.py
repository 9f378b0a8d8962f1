from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torchaudio.models import hdemucs_low

from audiotool.errors import ModelLoadError, WeightMismatchError
from audiotool.hub import load_model
from audiotool.importers.hdemucs import convert_hdemucs_checkpoint, import_hdemucs


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    state = hdemucs_low(["drums", "bass", "other", "vocals"]).state_dict()
    path = tmp_path_factory.mktemp("ck") / "hdemucs_low.pt"
    torch.save(state, path)
    return path, state


def test_import_round_trip(
    checkpoint: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    path, state = checkpoint
    model, cfg = convert_hdemucs_checkpoint(path)
    assert (cfg.nfft, cfg.depth, cfg.stems) == (1024, 5, ("drums", "bass", "other", "vocals"))
    assert all(torch.equal(model.state_dict()["model." + k], v) for k, v in state.items())
    folder = import_hdemucs(path, tmp_path / "out")
    loaded = load_model(str(folder), task="separate")
    assert loaded.config == cfg


def test_bundle_format_and_names(
    checkpoint: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    _, state = checkpoint
    p = tmp_path / "wrapped.pt"
    torch.save({"state_dict": state}, p)
    _, cfg = convert_hdemucs_checkpoint(p, sources=("a", "b", "c", "d"))
    assert cfg.stems == ("a", "b", "c", "d")
    with pytest.raises(WeightMismatchError, match="4 sources"):
        convert_hdemucs_checkpoint(p, sources=("a", "b"))


def test_strictness(checkpoint: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    _, state = checkpoint
    missing = dict(state)
    del missing[next(k for k in missing if k.startswith("time_encoder.1."))]
    p = tmp_path / "m.pt"
    torch.save(missing, p)
    with pytest.raises(WeightMismatchError):
        convert_hdemucs_checkpoint(p)
    extra = dict(state)
    extra["bogus.weight"] = torch.zeros(1)
    torch.save(extra, p)
    with pytest.raises(WeightMismatchError):
        convert_hdemucs_checkpoint(p)


class _Code:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("never",))


def test_non_tensor_pickle_refused(tmp_path: Path) -> None:
    p = tmp_path / "evil.pt"
    with open(p, "wb") as fh:
        pickle.dump({"x": _Code()}, fh)
    with pytest.raises(ModelLoadError, match="weights_only"):
        convert_hdemucs_checkpoint(p)

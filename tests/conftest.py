"""Shared fixtures: real audio files on disk, a tiny registered model family, a fake HF cache."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from audiotool.models import registry
from audiotool.models._config import ModelConfig, ModelFamily

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _grad_mode_left_on() -> object:
    """Every test leaves torch's grad mode as it found it (a generator that yields inside
    ``torch.inference_mode()`` leaks the mode into its caller and later tests)."""
    yield
    assert torch.is_grad_enabled(), "a test left torch's grad mode off"
    assert not torch.is_inference_mode_enabled(), "a test left torch in inference mode"


def sine(freq: float, seconds: float, rate: int, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    """(T, C) float32 sine wave, a slightly different phase per channel."""
    t = np.arange(round(seconds * rate)) / rate
    cols = [amp * np.sin(2 * np.pi * freq * t + 0.3 * c) for c in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


@pytest.fixture
def write_wav(tmp_path: Path) -> Callable[..., Path]:
    """Write a sine to ``tmp_path/name`` with soundfile and return its path."""

    def _write(
        name: str = "clip.wav",
        *,
        seconds: float = 0.5,
        rate: int = 16000,
        channels: int = 1,
        freq: float = 440.0,
        subtype: str | None = None,
    ) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), sine(freq, seconds, rate, channels), rate, subtype=subtype)
        return path

    return _write


# --------------------------------------------------------------------------- a tiny family


@dataclasses.dataclass(frozen=True)
class ScaleConfig(ModelConfig):
    """Config of the test-only family "test_scale"."""

    family: ClassVar[str] = "test_scale"
    task: ClassVar[str] = "upsample"

    channels: int = 2
    hidden: int = 3


class ScaleModel(nn.Module):
    def __init__(self, *, channels: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(channels, hidden)
        self.out = nn.Linear(hidden, channels)
        self.register_buffer("gain", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.proj(x)) * self.gain


def _build(cfg: ScaleConfig) -> nn.Module:
    return ScaleModel(channels=cfg.channels, hidden=cfg.hidden)


FAMILY = ModelFamily(
    config_cls=ScaleConfig,
    build=_build,
    presets={"tiny": ScaleConfig},
)


@pytest.fixture
def test_family(monkeypatch: pytest.MonkeyPatch) -> ModelFamily[ScaleConfig]:
    """Register the test-only family for the duration of a test (this module holds both its
    config class and its ``FAMILY``)."""
    monkeypatch.setitem(registry._MODULES, "test_scale", (__name__, __name__))
    return FAMILY


@pytest.fixture
def model_folder(tmp_path: Path, test_family: ModelFamily[ScaleConfig]) -> Path:
    """A local model folder in our format (config.json + model.safetensors + README.md)."""
    from audiotool.checkpoints import save_pretrained

    torch.manual_seed(0)
    cfg = ScaleConfig(sample_rate=16000)
    model = _build(cfg)
    return save_pretrained(model, cfg, tmp_path / "my-model", card="# test model\n")


FAKE_SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_cache(tmp_path: Path, model_folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pre-populated Hugging Face cache holding ``org/tiny`` at ``main`` and tag ``v1``.

    Layout as huggingface_hub writes it: ``models--org--tiny/refs/{main,v1}`` (commit sha) and
    ``snapshots/<sha>/<files>``. ``HF_HOME`` points at it and ``HF_HUB_OFFLINE=1``.
    """
    home = tmp_path / "hf-home"
    repo = home / "hub" / "models--org--tiny"
    other_sha = "f" * 40
    for sha in (FAKE_SHA, other_sha):
        snap = repo / "snapshots" / sha
        snap.mkdir(parents=True)
        for name in ("config.json", "model.safetensors", "README.md"):
            (snap / name).write_bytes((model_folder / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FAKE_SHA)
    (repo / "refs" / "v1").write_text(other_sha)
    use_hf_home(monkeypatch, home, offline=True)
    return home / "hub"


def use_hf_home(monkeypatch: pytest.MonkeyPatch, home: Path, *, offline: bool) -> None:
    """Point huggingface_hub at ``home`` (``HF_HOME``) and set its offline mode, in the
    environment (for subprocesses) and in ``huggingface_hub.constants``, which it reads once at
    import (audiotool leaves cache and offline handling to it)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


@pytest.fixture
def empty_zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty zoo folder (AUDIOTOOL_ZOO) that tests can fill."""
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "index.json").write_text(json.dumps({"defaults": {}, "descriptions": {}}))
    monkeypatch.setenv("AUDIOTOOL_ZOO", str(zoo))
    return zoo

"""The dataset builder on a tiny synthetic source tree laid out like the Debian packages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiotool.data.build import build_dataset
from audiotool.errors import InputError, UsageError


def _speech_like(rate: int, seconds: float, seed: int, full_band: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    x = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 60)) * 0.05
    x = x + 0.02 * rng.standard_normal(len(t))
    if not full_band:
        from scipy.signal import butter, sosfiltfilt

        x = sosfiltfilt(butter(10, 8000, fs=rate, output="sos"), x)
    return x.astype(np.float32)


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    stamps = root / "tuxpaint-stamps-default" / "usr/share/tuxpaint/stamps/animals"
    stamps.mkdir(parents=True)
    for lang in ("be", "es", "da", "ru"):
        for i in range(6):
            sf.write(
                stamps / f"thing{i}_desc_{lang}.ogg",
                _speech_like(44100, 1.2, hash((lang, i)) % 1000, full_band=i != 5),
                44100,
                format="OGG",
            )
    kits = root / "hydrogen-drumkits" / "usr/share/hydrogen/data/drumkits"
    for kit in ("KitA", "VariBreaks"):
        (kits / kit).mkdir(parents=True)
        for i, name in enumerate(("Kick 1", "Snare 2", "Hat Cl", "Crash")):
            rng = np.random.default_rng(i)
            hit = rng.standard_normal(22050).astype(np.float32) * np.exp(-np.arange(22050) / 3000)
            sf.write(kits / kit / f"{name}.flac", 0.5 * hit, 44100)
    return root


def test_upsample_split_manifest_and_bandwidth_filter(tmp_path: Path, sources: Path) -> None:
    out = tmp_path / "up"
    m = build_dataset("upsample", sources, out, seed=1, max_items=3)
    info = json.loads((out / "manifest.json").read_text())
    assert info["kind"] == "upsample" and info["files"]
    for f in info["files"]:
        assert (out / f["file"]).is_file() and f["sample_rate"] == 48000
        assert f["sha256"] and f["licence"] and f["sources"]
        lang = f.get("speaker_group")
        if lang:  # no speaker (language) in both splits
            assert f["split"] == ("val" if lang in ("da", "ru") else "train")
        if f.get("kit"):
            assert f["split"] == ("val" if f["kit"] == "VariBreaks" else "train")
    # the low-passed recordings (i == 5) were measured and excluded
    assert any("thing5" in e["file"] for e in m.excluded)
    assert not any("thing5" in s for f in info["files"] for s in f["sources"])


def test_deterministic(tmp_path: Path, sources: Path) -> None:
    a = build_dataset("upsample", sources, tmp_path / "a", seed=3, max_items=2)
    b = build_dataset("upsample", sources, tmp_path / "b", seed=3, max_items=2)
    assert [f["sha256"] for f in a.files] == [f["sha256"] for f in b.files]
    c = build_dataset("upsample", sources, tmp_path / "c", seed=4, max_items=2)
    assert [f["sha256"] for f in a.files] != [f["sha256"] for f in c.files]


def test_refuses_non_empty_output_and_unknown_kind(tmp_path: Path, sources: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("x")
    with pytest.raises(UsageError, match="not empty"):
        build_dataset("upsample", sources, tmp_path / "x")
    with pytest.raises(UsageError):
        build_dataset("music", sources, tmp_path / "y")
    with pytest.raises(InputError, match="data fetch"):
        build_dataset("separate", tmp_path / "nowhere", tmp_path / "z")


def test_mixture_equals_sum_of_stems(tmp_path: Path, sources: Path) -> None:
    pytest.importorskip("tinysoundfont")
    sf2 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
    found = (
        sorted(Path("/work/data_sources").glob("**/FluidR3_GM.sf2")) if not sf2.is_file() else [sf2]
    )
    if not found:
        pytest.skip("no FluidR3_GM.sf2 SoundFont here (Debian package fluid-soundfont-gm)")
    target = sources / "fluid-soundfont-gm" / "usr/share/sounds/sf2"
    target.mkdir(parents=True)
    (target / "FluidR3_GM.sf2").symlink_to(found[0])
    out = tmp_path / "sep"
    build_dataset("separate", sources, out, seed=0, max_items=1)
    songs = sorted(p.parent for p in out.rglob("mixture.wav"))
    assert songs
    for song in songs:
        mix, rate = sf.read(song / "mixture.wav", dtype="float32")
        stems = sum(
            sf.read(song / f"{s}.wav", dtype="float32")[0]
            for s in ("vocals", "drums", "bass", "other")
        )
        assert rate == 44100 and mix.shape[1] == 2
        assert np.abs(mix - stems).max() < 1e-6

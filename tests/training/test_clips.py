"""Random training crops: exact content, lengths, padding, channel policy, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiotool.errors import InputError
from audiotool.training.clips import ClipIndex, SongIndex


def _ramp(n: int) -> np.ndarray:
    """A strictly increasing signal, so a crop's first value tells where it started."""
    return np.linspace(-0.9, 0.9, n, dtype=np.float32)


@pytest.fixture
def clip_folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "train" / "speech").mkdir(parents=True)
    (root / "train" / "music").mkdir(parents=True)
    (root / "val").mkdir(parents=True)
    sf.write(root / "train" / "speech" / "a.wav", _ramp(16000), 16000, subtype="FLOAT")
    stereo = np.stack([_ramp(8000), -_ramp(8000)], axis=1)
    sf.write(root / "train" / "music" / "b.wav", stereo, 16000, subtype="FLOAT")
    t = np.arange(22050) / 22050
    sf.write(root / "train" / "c.wav", 0.5 * np.sin(2 * np.pi * 440 * t), 22050, subtype="FLOAT")
    sf.write(root / "val" / "v.wav", _ramp(4000), 16000, subtype="FLOAT")
    return root


def test_index_reads_the_headers_and_labels(clip_folder: Path) -> None:
    idx = ClipIndex(clip_folder / "train")
    info = {f.path.name: (f.frames, f.rate, f.channels, f.label) for f in idx.files}
    assert info == {
        "a.wav": (16000, 16000, 1, "speech"),
        "b.wav": (8000, 16000, 2, "music"),
        "c.wav": (22050, 22050, 1, ""),
    }
    assert idx.labels == ["", "music", "speech"]
    assert all("val" not in f.path.parts for f in idx.files)  # train and val stay apart
    assert [f.path.name for f in ClipIndex(clip_folder / "val").files] == ["v.wav"]


def test_an_empty_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no audio files"):
        ClipIndex(tmp_path)


def test_crops_are_exact_slices_at_the_native_rate(clip_folder: Path) -> None:
    idx = ClipIndex(clip_folder / "train")
    item = next(f for f in idx.files if f.path.name == "a.wav")
    ramp = torch.from_numpy(_ramp(16000))
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        x, got = idx.random_crop(gen, 1000, 16000, item=item)
        assert got is item and x.shape == (1, 1000)
        start = int(torch.argmin((ramp - x[0, 0]).abs()))
        assert torch.equal(x[0], ramp[start : start + 1000])


def test_crops_are_deterministic_for_a_generator(clip_folder: Path) -> None:
    idx = ClipIndex(clip_folder / "train")

    def draw(seed: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return [idx.random_crop(gen, 800, 16000)[0] for _ in range(6)]

    a, b, c = draw(0), draw(0), draw(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_short_files_are_zero_padded(clip_folder: Path) -> None:
    idx = ClipIndex(clip_folder / "val")
    x, _ = idx.random_crop(torch.Generator().manual_seed(0), 6000, 16000)
    assert x.shape == (1, 6000)
    assert torch.equal(x[0, :4000], torch.from_numpy(_ramp(4000)))
    assert torch.count_nonzero(x[0, 4000:]) == 0


def test_mono_policy(clip_folder: Path) -> None:
    idx = ClipIndex(clip_folder / "train")
    item = next(f for f in idx.files if f.path.name == "b.wav")
    gen = torch.Generator().manual_seed(0)
    stereo, _ = idx.random_crop(gen, 500, 16000, item=item, mono=False)
    mono = idx.read(item, 0, 500, 16000, mono=True)
    assert stereo.shape == (2, 500) and torch.equal(stereo[0], -stereo[1])
    assert mono.shape == (1, 500) and float(mono.abs().max()) < 1e-6  # (L + R) / 2 = 0


@pytest.mark.parametrize("rate", [16000, 48000])
def test_resampled_crops_have_the_exact_length_and_level(clip_folder: Path, rate: int) -> None:
    idx = ClipIndex(clip_folder / "train")
    item = next(f for f in idx.files if f.path.name == "c.wav")
    x, _ = idx.random_crop(torch.Generator().manual_seed(0), rate // 4, rate, item=item)
    assert x.shape == (1, rate // 4)
    middle = x[0, rate // 20 : -rate // 20]
    rms = float(middle.pow(2).mean().sqrt())
    assert rms == pytest.approx(0.5 / 2**0.5, rel=0.02)  # a 440 Hz sine of amplitude 0.5


def _write_song(folder: Path, n: int, rate: int, offset: float) -> None:
    folder.mkdir(parents=True)
    vocals = _ramp(n) * 0.5 + offset
    drums = -_ramp(n) * 0.25
    sf.write(folder / "vocals.wav", vocals, rate, subtype="FLOAT")
    sf.write(folder / "drums.wav", drums, rate, subtype="FLOAT")
    sf.write(folder / "mixture.wav", vocals + drums, rate, subtype="FLOAT")


def test_song_crops_are_aligned_across_stems(tmp_path: Path) -> None:
    _write_song(tmp_path / "train" / "s1", 3000, 8000, 0.0)
    _write_song(tmp_path / "train" / "s2", 5000, 8000, 0.05)
    songs = SongIndex(tmp_path / "train", ("vocals", "drums"))
    assert [p.name for p in songs.songs] == ["s1", "s2"] and songs.frames == [3000, 5000]
    assert songs.rate == 8000
    for song, start in ((0, 0), (1, 1234), (1, 4500)):
        stems = [songs.crop(song, s, start, 700) for s in songs.stems]
        mix = songs.crop(song, "mixture", start, 700)
        assert mix.shape == (1, 700)
        assert torch.allclose(stems[0] + stems[1], mix, atol=1e-6)
    tail = songs.crop(1, "vocals", 4500, 700)
    assert torch.count_nonzero(tail[0, 500:]) == 0  # past the end: zero padding
    with pytest.raises(InputError, match="mixture"):
        SongIndex(tmp_path / "nothing", ("vocals",))

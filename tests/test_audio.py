from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiotool.audio import (
    apply_clip,
    match_channels,
    peak,
    read_audio,
    resample,
    rms,
    write_audio,
)
from audiotool.errors import AudioReadError, AudioWriteError, InputError, UsageError
from tests.conftest import sine


@pytest.mark.parametrize(
    ("fmt", "subtype", "tol"),
    [
        ("wav", "PCM_16", 1 / 32768 + 1e-6),
        ("wav", "PCM_24", 1 / 2**23 + 1e-7),
        ("wav", "PCM_32", 1e-7),
        ("wav", "FLOAT", 0.0),
        ("wav", "PCM_U8", 1 / 128 + 1e-6),
        ("flac", "PCM_16", 1 / 32768 + 1e-6),
        ("flac", "PCM_24", 1 / 2**23 + 1e-7),
        ("aiff", "PCM_16", 1 / 32768 + 1e-6),
    ],
)
@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("rate", [8000, 44100])
def test_read_round_trip_formats(
    tmp_path: Path, fmt: str, subtype: str, tol: float, channels: int, rate: int
) -> None:
    data = sine(220.0, 0.1, rate, channels)
    path = tmp_path / f"x.{fmt}"
    sf.write(str(path), data, rate, subtype=subtype)
    audio = read_audio(path)
    assert audio.samples.dtype == torch.float32
    assert audio.samples.shape == (channels, data.shape[0])
    assert audio.sample_rate == rate
    assert audio.subtype == subtype
    assert float((audio.samples - torch.from_numpy(data.T)).abs().max()) <= tol


@pytest.mark.parametrize("fmt", ["ogg", "mp3"])
def test_read_lossy_formats(tmp_path: Path, fmt: str) -> None:
    if fmt.upper() not in sf.available_formats():
        pytest.skip(f"libsndfile here has no {fmt}")
    data = sine(440.0, 0.5, 44100, 2)
    path = tmp_path / f"x.{fmt}"
    sf.write(str(path), data, 44100, format=fmt.upper())
    audio = read_audio(path)
    assert audio.channels == 2 and audio.sample_rate == 44100
    assert abs(audio.frames - data.shape[0]) < 4096  # codecs may pad the last frame
    # a lossy codec keeps the tone's level within 1 dB
    assert abs(20 * math.log10(rms(audio.samples) / float(np.sqrt((data**2).mean())))) < 1.0


@pytest.mark.parametrize("bit_depth", ["16", "24", "32f"])
@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_write_round_trip(tmp_path: Path, bit_depth: str, fmt: str) -> None:
    x = torch.from_numpy(sine(1000.0, 0.05, 48000, 2).T.copy())
    path = tmp_path / f"out.{fmt}"
    if fmt == "flac" and bit_depth == "32f":
        with pytest.raises(UsageError, match="flac"):
            write_audio(path, x, 48000, bit_depth=bit_depth)  # type: ignore[arg-type]
        return
    write_audio(path, x, 48000, bit_depth=bit_depth)  # type: ignore[arg-type]
    info = sf.info(str(path))
    assert info.subtype == {"16": "PCM_16", "24": "PCM_24", "32f": "FLOAT"}[bit_depth]
    back = read_audio(path).samples
    tol = {"16": 1 / 32768, "24": 1 / 2**23, "32f": 0.0}[bit_depth] + 1e-7
    assert float((back - x).abs().max()) <= tol
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left


def test_clip_modes() -> None:
    x = torch.tensor([[0.5, -2.0, 1.5]])
    assert peak(apply_clip(x, "rescale")) == pytest.approx(0.999)
    assert torch.equal(apply_clip(x, "clamp"), torch.tensor([[0.5, -1.0, 1.0]]))
    assert torch.equal(apply_clip(x, "none"), x)
    quiet = torch.tensor([[0.5, -0.25]])
    assert torch.equal(apply_clip(quiet, "rescale"), quiet)  # never scales up


def test_float_output_keeps_overs_with_clip_none(tmp_path: Path) -> None:
    x = torch.tensor([[0.5, -1.5, 2.0]])
    write_audio(tmp_path / "o.wav", x, 16000, bit_depth="32f", clip="none")
    assert torch.equal(read_audio(tmp_path / "o.wav").samples, x)


def test_atomic_write_leaves_nothing_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.wav"

    def boom(*args: object, **kwargs: object) -> None:
        Path(str(args[0])).write_bytes(b"RIFF partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sf, "write", boom)
    with pytest.raises(AudioWriteError, match="No space left"):
        write_audio(target, torch.zeros(1, 100), 16000)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_previous_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.wav"
    write_audio(target, torch.full((1, 10), 0.25), 16000)
    before = target.read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(sf, "write", boom)
    with pytest.raises(AudioWriteError):
        write_audio(target, torch.zeros(1, 100), 16000)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]


def test_never_writes_over_input(tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    sf.write(str(src), sine(440, 0.1, 16000), 16000)
    before = src.read_bytes()
    with pytest.raises(AudioWriteError, match="input"):
        write_audio(src, torch.zeros(1, 10), 16000, protect=[src])
    # also through a different spelling of the same path
    with pytest.raises(AudioWriteError):
        write_audio(tmp_path / "." / "in.wav", torch.zeros(1, 10), 16000, protect=[src])
    assert src.read_bytes() == before


def test_uncreatable_output_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(AudioWriteError, match="cannot create the output folder"):
        write_audio(blocker / "sub" / "o.wav", torch.zeros(1, 10), 16000)


def test_bad_output_format(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="format"):
        write_audio(tmp_path / "o.mp3", torch.zeros(1, 10), 16000)


# --------------------------------------------------------------------------- bad inputs


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_audio(tmp_path / "nope.wav")


def test_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    with pytest.raises(AudioReadError, match="0 bytes"):
        read_audio(p)


def test_text_file_named_wav(tmp_path: Path) -> None:
    p = tmp_path / "notes.wav"
    p.write_text("this is not audio\n" * 20)
    with pytest.raises(AudioReadError, match="not a readable audio file") as exc:
        read_audio(p)
    assert str(p) in exc.value.message and exc.value.hint


def test_truncated_wav(tmp_path: Path) -> None:
    p = tmp_path / "cut.wav"
    sf.write(str(p), sine(440, 1.0, 16000), 16000, subtype="PCM_16")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioReadError, match="truncated"):
        read_audio(p)
    p.write_bytes(data[:30])  # header only
    with pytest.raises(AudioReadError):
        read_audio(p)


def test_truncated_flac(tmp_path: Path) -> None:
    p = tmp_path / "cut.flac"
    sf.write(str(p), np.random.default_rng(0).uniform(-0.5, 0.5, 48000), 48000)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioReadError):
        read_audio(p)


def test_zero_samples(tmp_path: Path) -> None:
    p = tmp_path / "silent.wav"
    sf.write(str(p), np.zeros((0, 1), dtype=np.float32), 16000)
    with pytest.raises(AudioReadError, match="no samples"):
        read_audio(p)


def test_nan_samples_rejected(tmp_path: Path) -> None:
    p = tmp_path / "nan.wav"
    data = sine(440, 0.1, 16000)
    data[10, 0] = np.nan
    data[20, 0] = np.inf
    sf.write(str(p), data, 16000, subtype="FLOAT")
    with pytest.raises(AudioReadError, match="2 NaN/Inf"):
        read_audio(p)


def test_absurd_sample_rate(tmp_path: Path) -> None:
    p = tmp_path / "slow.wav"
    sf.write(str(p), sine(1, 0.1, 16000), 100)
    with pytest.raises(AudioReadError, match="sample rate 100 Hz"):
        read_audio(p)


def test_folder_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="folder"):
        read_audio(tmp_path)


# --------------------------------------------------------------------------- dsp helpers


@pytest.mark.parametrize(
    ("src", "dst"), [(44100, 48000), (48000, 16000), (16000, 48000), (22050, 44100)]
)
def test_resample_sine_accuracy(src: int, dst: int) -> None:
    freq = 1000.0
    x = torch.from_numpy(sine(freq, 0.5, src).T.copy())
    y = resample(x, src, dst)
    assert y.shape[-1] == math.ceil(x.shape[-1] * dst / src)
    ref = torch.from_numpy(sine(freq, y.shape[-1] / dst, dst).T.copy())[:, : y.shape[-1]]
    core = slice(dst // 20, -dst // 20)  # ignore filter edges
    err = (y[:, core] - ref[:, core]).abs().max()
    assert float(err) < 1e-3  # better than -60 dB against the exact sine


def test_resample_removes_content_above_new_nyquist() -> None:
    x = torch.from_numpy(sine(15000.0, 0.5, 48000).T.copy())
    y = resample(x, 48000, 16000)
    assert rms(y[:, 800:-800]) < 1e-3 * rms(x)


def test_resample_identity_is_noop() -> None:
    x = torch.randn(2, 100)
    assert resample(x, 16000, 16000) is x


def test_match_channels() -> None:
    mono = torch.arange(4.0).unsqueeze(0)
    st = match_channels(mono, 2)
    assert st.shape == (2, 4) and torch.equal(st[0], st[1])
    assert torch.equal(match_channels(st, 1), mono)
    six = torch.arange(6.0).unsqueeze(1).repeat(1, 3)  # channel c holds value c
    two = match_channels(six, 2)
    assert torch.equal(two[:, 0], torch.tensor([2.0, 3.0]))  # mean(0,2,4), mean(1,3,5)
    assert match_channels(st, 2) is st
    with pytest.raises(UsageError):
        match_channels(st, 0)

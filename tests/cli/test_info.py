from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.cli.test_app import run_main


def test_info_json(
    write_wav: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write_wav("a.wav", rate=16000, channels=2, seconds=1.0, subtype="PCM_16")
    noise = np.random.default_rng(0).normal(0, 0.1, (48000, 1)).astype(np.float32)
    sf.write(tmp_path / "b.flac", noise, 48000)
    code, out, _ = run_main(["info", str(a), str(tmp_path / "b.flac"), "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["counts"] == {"ok": 2, "skipped": 0, "failed": 0}
    da, db = data["files"][0]["details"], data["files"][1]["details"]
    assert (da["sample_rate"], da["channels"], da["subtype"]) == (16000, 2, "PCM_16")
    assert da["duration"] == pytest.approx(1.0)
    assert da["peak_dbfs"] == pytest.approx(20 * np.log10(0.5), abs=0.05)
    assert da["rms_dbfs"] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.05)
    assert da["bandwidth_hz"] < 1000  # a 440 Hz sine has no content above
    assert db["bandwidth_hz"] == pytest.approx(24000, rel=0.02)  # white noise: full band


def test_info_table_and_failures(
    write_wav: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write_wav("good.wav")
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    code, out, err = run_main(["info", str(a), str(bad), str(tmp_path / "missing.wav")], capsys)
    assert code == 1
    assert "good.wav" in out and "16000" in out
    assert "2 of 3 input(s) failed" in err
    assert "bad.wav: not a readable audio file" in err and "missing.wav: no such file" in err


def test_info_fail_fast(
    tmp_path: Path, write_wav: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "a_bad.wav"
    bad.write_bytes(b"")
    good = write_wav("b_good.wav")
    code, out, err = run_main(["info", str(bad), str(good), "--fail-fast", "--json"], capsys)
    data = json.loads(out)
    assert code == 1 and [f["status"] for f in data["files"]] == ["failed"]
    assert "0 bytes" in err


def test_info_stdin_and_folder(
    tmp_path: Path,
    write_wav: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    a = write_wav("x/a.wav")
    b = write_wav("x/sub/b.wav")
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{a}\n"))
    code, out, _ = run_main(["info", "-", str(tmp_path / "x"), "--json"], capsys)
    files = [f["input"] for f in json.loads(out)["files"]]
    assert code == 0 and files == [str(a), str(b)]
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_main(["info", str(empty)], capsys)
    assert code == 1 and "no audio files" in err

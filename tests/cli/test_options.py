"""Shared options: plain on/off flags, listed choices, --device cuda:N, --threads."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from audiotool.cli.app import app, main

runner = CliRunner()
COMPUTE = [
    ["upsample"],
    ["separate"],
    ["reconstruct"],
    ["embed"],
    ["eval", "upsample"],
    ["eval", "separate"],
    ["eval", "reconstruct"],
    ["eval", "embed"],
    ["train"],
]


def _help(cmd: list[str]) -> str:
    result = runner.invoke(app, [*cmd, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("cmd", COMPUTE, ids=" ".join)
def test_compute_commands_take_threads_and_flags_take_no_value(cmd: list[str]) -> None:
    text = _help(cmd)
    assert "--threads" in text and "cuda:N" in text
    flagged = [ln for ln in text.splitlines() if "<bool>" in ln and "--help" not in ln]
    assert not flagged, flagged


def test_embed_format_lists_its_choices() -> None:
    assert re.search(r"--format\s+<?npz\|npy\|jsonl", _help(["embed"]))


def test_device_accepts_cuda_index_and_refuses_nonsense() -> None:
    for bad in ("gpu", "cuda:x"):
        result = runner.invoke(app, ["embed", "x.wav", "--device", bad])
        assert result.exit_code == 2 and "cuda:N" in result.output
    # cuda:N passes the parser: what stops it here is a missing GPU (or a missing input)
    result = runner.invoke(app, ["embed", "x.wav", "--device", "cuda:1", "--json"])
    assert "Invalid value" not in result.output


@pytest.mark.parametrize("value", ["0.9,0.1", "1.2,1", "-0.1,1", "x,1", "0.5"])
def test_guidance_interval_is_a_one_line_usage_error(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = tmp_path / "in.wav"
    sf.write(wav, np.zeros(1600, dtype="float32"), 16000)
    out = tmp_path / "out.wav"
    for argv in (
        ["upsample", str(wav), "-o", str(out), "--guidance-interval", value],
        ["eval", "upsample", "--data", str(tmp_path), "--guidance-interval", value],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert "--guidance-interval" in err and len(err.splitlines()) == 1, err
    assert not out.exists()

"""`audiotool eval`, `data build` and `train` end to end on tiny inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiotool.checkpoints import save_pretrained
from audiotool.models.separation import build_model, tiny_config
from tests.cli.test_app import run_main
from tests.test_evaluation import _song, _tone


def test_eval_upsample_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sf.write(tmp_path / "a.wav", _tone(48000, 1.0, 220), 48000)
    code, out, err = run_main(
        [
            "eval",
            "upsample",
            "--data",
            str(tmp_path),
            "--no-model",
            "--input-rate",
            "12000",
            "--json",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["input_rate"] == 12000 and [r["system"] for r in data["rows"]] == [
        "input",
        "baseline",
    ]
    code, _, err = run_main(
        ["eval", "upsample", "--data", str(tmp_path), "--no-model", "--input-rate", "11025"], capsys
    )
    assert code == 2 and "input-rate" in err


def test_eval_upsample_limit_and_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i, f in enumerate((220, 330, 440)):
        sf.write(tmp_path / f"{i}.wav", _tone(48000, 0.5, f), 48000)
    args = ["eval", "upsample", "--data", str(tmp_path), "--no-model", "--json", "--limit", "2"]
    code, out, err = run_main(args, capsys)
    assert code == 0, err
    files = [Path(f["file"]).name for f in json.loads(out)["rows"][0]["files"]]
    assert files == ["0.wav", "1.wav"]
    assert "file 2/2" in err and "ETA" in err  # one line per file when stderr is not a tty
    code, _, err = run_main([*args, "--quiet"], capsys)
    assert code == 0 and "ETA" not in err


def test_eval_separate_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _song(tmp_path / "songs" / "a", 0)
    torch.manual_seed(0)
    cfg = tiny_config().replace(sample_rate=22050)
    model_dir = save_pretrained(build_model(cfg), cfg, tmp_path / "m")
    code, out, err = run_main(
        [
            "eval",
            "separate",
            "--data",
            str(tmp_path / "songs"),
            "--model",
            str(model_dir),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("system\tfile\tvocals SI-SDR")
    assert {ln.split("\t")[0] for ln in lines[1:]} == {"model", "mixture", "baseline"}


def test_train_cli_then_use_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    for i in range(2):
        _song(data / "train" / f"s{i}", i)
    _song(data / "val" / "v0", 9)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "task: separate\nmodel: {family: bandsplit, preset: tiny, overrides: "
        "{sample_rate: 22050}}\ndata: {clip_seconds: 0.5}\n"
        "train: {steps: 4, batch_size: 2, val_every: 2, ckpt_every: 2, log_every: 1, "
        "warmup_steps: 1}\n"
    )
    out = tmp_path / "model"
    code, _, err = run_main(
        [
            "train",
            "separate",
            "--data",
            str(data),
            "--config",
            str(recipe),
            "-o",
            str(out),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and "bandsplit" in (out / "README.md").read_text()
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and "val_si_sdr" in log[-1]
    song = data / "val" / "v0" / "mixture.wav"
    code, _, err = run_main(
        ["separate", str(song), "--model", str(out), "-o", str(tmp_path / "sep"), "--quiet"], capsys
    )
    assert code == 0, err
    code, _, err = run_main(
        ["train", "embed", "--data", str(data), "--config", str(recipe), "-o", str(out)], capsys
    )
    assert code == 2 and "'separate' recipe" in err


def test_data_build_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(
        ["data", "build", "upsample", str(tmp_path / "o"), "--sources", str(tmp_path / "none")],
        capsys,
    )
    assert code == 1 and "data fetch" in err
    code, _, err = run_main(["data", "build", "music", str(tmp_path / "o2")], capsys)
    assert code == 2 and "kind" in err


def test_info_on_bundled_examples(capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parents[2] / "examples"
    code, out, _ = run_main(["info", str(root), "--json"], capsys)
    files = {Path(f["input"]).name: f["details"] for f in json.loads(out)["files"]}
    assert code == 0 and files["speech_16k.flac"]["bandwidth_hz"] < 8000
    assert np.isclose(files["music_44k.flac"]["duration"], 6.0)

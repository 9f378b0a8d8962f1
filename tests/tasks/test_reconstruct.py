from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from audiotool.checkpoints import save_pretrained
from audiotool.models.rae import PRESETS, build_model
from tests.cli.test_app import run_main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = PRESETS["tiny"]()
    return save_pretrained(build_model(cfg).eval(), cfg, tmp_path_factory.mktemp("m") / "rae")


def test_cli_round_trip_with_metrics_and_latents(
    tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    a = tmp_path / "a.wav"
    sf.write(a, (0.1 * rng.standard_normal((int(22050 * 2.3), 2))).astype(np.float32), 22050)
    b = tmp_path / "b.wav"
    sf.write(b, (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)
    out = tmp_path / "rt"
    lat = tmp_path / "lat.safetensors"
    code, stdout, err = run_main(
        [
            "reconstruct",
            str(a),
            str(b),
            "-o",
            str(out),
            "--model",
            str(tiny_dir),
            "--latents",
            str(lat),
            "--json",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    data = json.loads(stdout)
    assert set(data["mean"]) == {"si_sdr", "log_mel", "mrstft"}
    info = sf.info(str(out / "a_reconstruct.wav"))
    assert (info.samplerate, info.channels, info.frames) == (22050, 2, int(22050 * 2.3))
    tensors = load_file(str(lat))
    assert tensors[str(a)].shape[0] == 2 and tensors[str(a)].shape[2] == 16
    code, stdout, _ = run_main(
        ["reconstruct", str(b), "-o", str(tmp_path / "x.wav"), "--model", str(tiny_dir)], capsys
    )
    assert code == 0 and "SI-SDR" in stdout


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from audiotool.models import codec

    torch.manual_seed(0)
    cfg = codec.PRESETS["tiny"]()
    return save_pretrained(codec.build_model(cfg).eval(), cfg, tmp_path_factory.mktemp("c") / "c")


def test_codec_round_trip_and_eval_beside_griffin_lim(
    tmp_path: Path, codec_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(1)
    a = tmp_path / "a.flac"
    sf.write(a, (0.1 * rng.standard_normal((int(44100 * 1.1), 2))).astype(np.float32), 44100)
    lat = tmp_path / "lat.safetensors"
    args = ["-o", str(tmp_path / "rt.wav"), "--model", str(codec_dir), "--latents", str(lat)]
    code, stdout, err = run_main(["reconstruct", str(a), *args, "--json", "--quiet"], capsys)
    assert code == 0, err
    assert np.isfinite(json.loads(stdout)["mean"]["si_sdr"])
    info = sf.info(str(tmp_path / "rt.wav"))
    assert (info.samplerate, info.channels, info.frames) == (44100, 2, int(44100 * 1.1))
    z = load_file(str(lat))[str(a)]
    assert z.shape == (2, int(16000 * 1.1) // 128, 8)
    val = tmp_path / "val"
    val.mkdir()
    sf.write(val / "v.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    code, stdout, err = run_main(
        ["eval", "reconstruct", "--data", str(val), "--model", str(codec_dir), "--json", "--quiet"],
        capsys,
    )
    assert code == 0, err
    rows = {r["system"]: r["mean"] for r in json.loads(stdout)["rows"]}
    assert set(rows) == {"model", "baseline"}
    assert rows["baseline"]["log_mel"] < 0.5  # Griffin-Lim keeps the mel of the noise

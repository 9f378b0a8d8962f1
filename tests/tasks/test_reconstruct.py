from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from audiotool.hub import save_pretrained
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

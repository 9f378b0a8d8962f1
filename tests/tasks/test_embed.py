from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiotool.checkpoints import save_pretrained
from audiotool.models.audio_branch import PRESETS, build_model
from audiotool.tasks.common import Runtime
from audiotool.tasks.embed import embed_tensor
from tests.cli.test_app import run_main

RT = Runtime(device=torch.device("cpu"), dtype=None, batch_size=4, seed=0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = PRESETS["tiny"]()
    return save_pretrained(build_model(cfg).eval(), cfg, tmp_path_factory.mktemp("m") / "emb")


def _clip(path: Path, seconds: float, rate: int = 16000, freq: float = 300.0) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)
    return path


def test_long_file_frames_match_whole_file_encoding(tiny_dir: Path) -> None:
    from audiotool.hub import load_model

    loaded = load_model(str(tiny_dir))
    x = 0.1 * torch.randn(1, 16000 * 7)
    emb = embed_tensor(loaded.model, loaded.config, x, 16000, runtime=RT)  # type: ignore[arg-type]
    assert emb.frames.shape == (round(7 / 0.08), 32)
    assert emb.segments.shape == (8, 32) and emb.pooled.shape == (32,)
    assert emb.timestamps[0, 0] == 0 and emb.timestamps[-1, 1] == pytest.approx(7.04, abs=0.1)
    again = embed_tensor(
        loaded.model,
        loaded.config,
        x,
        16000,  # type: ignore[arg-type]
        runtime=Runtime(device=RT.device, dtype=None, batch_size=1, seed=0),
    )
    assert np.allclose(emb.pooled, again.pooled, atol=1e-5)  # batch size does not matter


def test_chunked_frames_follow_the_whole_file_encoding(tiny_dir: Path) -> None:
    """Overlap-added chunk frames vs one forward over the whole file: the Conformer attends
    over its input, so they are not equal, but every frame stays aligned with its own
    whole-file frame and the pooled embedding barely moves (tiny model, seed 0: centred error
    0.49 vs 1.17 for frames five steps off, 97% of nearest frames within one, pooled 1%)."""
    from audiotool.hub import load_model

    loaded = load_model(str(tiny_dir))
    model = loaded.model
    t = torch.arange(16000 * 7) / 16000  # a chirp with a slow tremolo: frames differ
    x = 0.3 * torch.sin(2 * torch.pi * (200 + 300 * t) * t) * (1 + torch.sin(1.4 * torch.pi * t))
    emb = embed_tensor(model, loaded.config, x[None], 16000, runtime=RT)  # type: ignore[arg-type]
    with torch.no_grad():
        whole, lengths = model.encode_frames(x[None])  # type: ignore[operator]
        _, whole_pooled = model.pool(whole)  # type: ignore[operator]
    w, c = whole[0].numpy(), emb.frames
    assert c.shape == w.shape and int(lengths[0]) == len(c)
    mean = w.mean(0)
    err = np.linalg.norm(c - w) / np.linalg.norm(w - mean)
    off = np.linalg.norm(c[5:] - w[:-5]) / np.linalg.norm(w[:-5] - mean)
    assert err < 0.75 and err < 0.6 * off
    nearest = ((c[:, None, :] - w[None, :, :]) ** 2).sum(-1).argmin(1)
    assert (np.abs(nearest - np.arange(len(c))) <= 1).mean() > 0.9
    pooled = whole_pooled[0].numpy()
    assert np.linalg.norm(emb.pooled - pooled) / np.linalg.norm(pooled) < 0.05


def test_cli_folder_per_file_and_deterministic(
    tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "clips"
    src.mkdir()
    _clip(src / "a.wav", 1.0)
    _clip(src / "b.flac", 3.3, rate=22050, freq=800)
    out = tmp_path / "emb"
    code, _, err = run_main(
        ["embed", str(src), "-o", str(out), "--model", str(tiny_dir), "--quiet"], capsys
    )
    assert code == 0, err
    data = np.load(out / "a.npz")
    assert set(data.files) == {"pooled", "segments", "timestamps", "model", "sample_rate"}
    assert data["segments"].shape == (8, 32) and int(data["sample_rate"]) == 16000
    first = (out / "b.npz").read_bytes()
    code, _, _ = run_main(
        ["embed", str(src), "-o", str(out), "--model", str(tiny_dir), "--overwrite", "--quiet"],
        capsys,
    )
    assert code == 0 and (out / "b.npz").read_bytes() == first  # same bytes every run


def test_cli_combined_formats(
    tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = _clip(tmp_path / "a.wav", 1.0), _clip(tmp_path / "b.wav", 2.0, freq=900)
    code, _, err = run_main(
        [
            "embed",
            str(a),
            str(b),
            "-o",
            str(tmp_path / "all.npz"),
            "--model",
            str(tiny_dir),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    data = np.load(tmp_path / "all.npz")
    assert list(data["files"]) == [str(a), str(b)] and data["pooled"].shape == (2, 32)
    code, _, _ = run_main(
        [
            "embed",
            str(a),
            str(b),
            "-o",
            str(tmp_path / "p.npy"),
            "--pooled-only",
            "--model",
            str(tiny_dir),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0 and np.load(tmp_path / "p.npy").shape == (2, 32)
    code, _, _ = run_main(
        [
            "embed",
            str(a),
            str(b),
            "-o",
            str(tmp_path / "e.jsonl"),
            "--model",
            str(tiny_dir),
            "--quiet",
        ],
        capsys,
    )
    lines = (tmp_path / "e.jsonl").read_text().splitlines()
    assert code == 0 and len(lines) == 2
    row = json.loads(lines[1])
    assert row["file"] == str(b) and len(row["pooled"]) == 32 and len(row["segments"]) == 8
    code, _, err = run_main(
        ["embed", str(a), "-o", str(tmp_path / "all.npz"), "--model", str(tiny_dir)], capsys
    )
    assert code == 1 and "already exists" in err


def test_hear_api(tiny_dir: Path) -> None:
    import audiotool.hear as hear

    model = hear.load_model(str(tiny_dir))
    assert isinstance(model, torch.nn.Module)  # heareval rejects anything else
    assert model.to("cpu") is model and not model.training
    assert model.sample_rate == 16000 and model.scene_embedding_size == 32
    audio = 0.1 * torch.randn(3, 16000)
    scene = hear.get_scene_embeddings(audio, model)
    frames, ts = hear.get_timestamp_embeddings(audio, model)
    assert scene.shape == (3, 32)
    assert frames.shape[0] == 3 and frames.shape[2] == 32 and ts.shape == frames.shape[:2]
    assert float(ts[0, 0]) == pytest.approx(40.0) and bool((ts.diff(dim=1) == 80).all())

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiotool.errors import InputError
from audiotool.evaluation import (
    evaluate_embeddings,
    evaluate_separation,
    evaluate_upsample,
    format_rows,
    knn_accuracy,
    linear_probe_accuracy,
)


def _tone(rate: int, seconds: float, freq: float) -> np.ndarray:
    """Harmonics up to 20 kHz plus a little noise: content in every band."""
    t = np.arange(int(rate * seconds)) / rate
    x = sum(np.sin(2 * np.pi * freq * k * t + k) / k**0.7 for k in range(1, int(20000 / freq)))
    x = 0.03 * x + 0.003 * np.random.default_rng(int(freq)).standard_normal(len(t))
    return x.astype(np.float32)


def test_upsample_schema_and_ordering(tmp_path: Path) -> None:
    for i, f in enumerate((200.0, 330.0)):
        sf.write(tmp_path / f"r{i}.wav", _tone(44100, 1.0, f), 44100)

    def oracle(x: torch.Tensor, sr: int) -> torch.Tensor:  # cheats: knows nothing but is ok
        from audiotool.audio import resample

        return resample(x, sr, 48000)

    result = evaluate_upsample(tmp_path, systems={"model": oracle}, input_rate=16000)
    json.dumps(result, allow_nan=False)  # valid JSON, no NaN
    assert result["task"] == "upsample" and result["input_rate"] == 16000
    systems = [r["system"] for r in result["rows"]]
    assert systems == ["model", "input", "baseline"]
    for row in result["rows"]:
        assert set(row["mean"]) == {"lsd", "lsd_hf", "lsd_lf", "si_sdr", "hf_ratio_db", "limited"}
        assert len(row["files"]) == 2
    by = {r["system"]: r["mean"] for r in result["rows"]}
    assert by["model"]["lsd"] == pytest.approx(by["input"]["lsd"])
    assert by["baseline"]["lsd_hf"] < by["input"]["lsd_hf"]
    assert by["input"]["hf_ratio_db"] < -30 and by["input"]["limited"] is None  # nothing there
    header, rows = format_rows(result)
    assert header[:2] == ["system", "file"] and len(rows) == 9
    assert header[-2:] == ["hf_ratio_db", "limited"]


def test_upsample_reports_high_band_level_and_limiting(tmp_path: Path) -> None:
    from audiotool.audio import read_audio, resample
    from audiotool.dsp import lowpass

    for i, f in enumerate((200.0, 330.0)):
        sf.write(tmp_path / f"r{i}.wav", _tone(48000, 1.0, f), 48000)
    truths = [read_audio(tmp_path / f"r{i}.wav").samples for i in range(2)]
    calls: list[int] = []

    def loud(x: torch.Tensor, sr: int) -> tuple[torch.Tensor, dict[str, bool]]:
        """The true high band 10 dB too loud; reports 'limited' for the first file only."""
        truth = truths[len(calls)]
        calls.append(1)
        high = truth - lowpass(truth, 48000, sr / 2)
        return resample(x, sr, 48000) + high * 10 ** (10 / 20), {"limited": len(calls) == 1}

    result = evaluate_upsample(tmp_path, systems={"model": loud}, input_rate=16000)
    model = result["rows"][0]
    ratios = [f["hf_ratio_db"] for f in model["files"]]
    assert ratios == [pytest.approx(10.0, abs=1.0)] * 2
    assert [f["limited"] for f in model["files"]] == [True, False]
    assert model["mean"]["limited"] == 1
    assert result["rows"][2]["mean"]["limited"] is None  # the baseline does not say
    _, rows = format_rows(result)
    assert rows[0][-1] == "yes" and rows[2][-1] == "1/2"


def _song(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    stems = {
        s: (0.1 * rng.standard_normal((22050, 2))).astype(np.float32)
        for s in ("vocals", "drums", "bass", "other")
    }
    for s, x in stems.items():
        sf.write(folder / f"{s}.wav", x, 22050, subtype="FLOAT")
    sf.write(folder / "mixture.wav", sum(stems.values()), 22050, subtype="FLOAT")


def test_separation_schema_and_perfect_system(tmp_path: Path) -> None:
    _song(tmp_path / "a", 0)
    _song(tmp_path / "b", 1)

    def perfect(mix: torch.Tensor, sr: int) -> dict[str, torch.Tensor]:
        song = next(
            p
            for p in tmp_path.iterdir()
            if np.allclose(sf.read(p / "mixture.wav")[0].T, mix.numpy(), atol=1e-6)
        )
        return {
            s: torch.from_numpy(sf.read(song / f"{s}.wav", dtype="float32")[0].T.copy())
            for s in ("vocals", "drums", "bass", "other")
        }

    result = evaluate_separation(tmp_path, systems={"model": perfect})
    json.dumps(result, allow_nan=False)
    by = {r["system"]: r["mean"] for r in result["rows"]}
    assert set(by) == {"model", "mixture", "baseline"}
    assert by["model"]["average"]["si_sdr"] > 100
    # four equal-energy stems: the mixture as estimate of one is about -4.8 dB
    assert by["mixture"]["vocals"]["usdr"] == pytest.approx(-10 * math.log10(3), abs=0.3)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "mixture.wav").write_bytes((tmp_path / "a" / "mixture.wav").read_bytes())
    with pytest.raises(InputError, match="missing"):
        evaluate_separation(tmp_path, systems={})


def test_knn_and_linear_probe() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 16)) * 5
    labels = [str(i % 3) for i in range(60)]
    sep = np.stack([centres[int(lab)] + rng.standard_normal(16) * 0.3 for lab in labels])
    assert knn_accuracy(sep, labels, k=1) == 1.0 and knn_accuracy(sep, labels, k=5) == 1.0
    assert linear_probe_accuracy(sep, labels) == 1.0
    noise = rng.standard_normal((60, 16))
    assert knn_accuracy(noise, labels, k=1) < 0.6
    assert linear_probe_accuracy(noise, labels) < 0.6


def test_embedding_eval_needs_labels(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    sf.write(tmp_path / "a" / "x.wav", _tone(16000, 0.5, 300), 16000)
    with pytest.raises(InputError, match="label"):
        evaluate_embeddings(tmp_path, systems={"m": lambda files: np.zeros((len(files), 4))})


def test_knn_never_votes_for_itself() -> None:
    vecs = np.array([[1.0, 0], [1.0, 0.1], [0, 1.0], [0.1, 1.0]])
    assert knn_accuracy(vecs, ["a", "b", "a", "b"], k=5) == 0.0  # neighbours all disagree...
    assert knn_accuracy(vecs, ["a", "a", "b", "b"], k=1) == 1.0


def test_short_outputs_are_penalised(tmp_path: Path) -> None:
    from audiotool.evaluation import evaluate_reconstruct

    sf.write(tmp_path / "a.wav", _tone(16000, 1.0, 200), 16000)
    res = evaluate_reconstruct(
        tmp_path,
        systems={"half": lambda x, sr: x[..., : x.shape[-1] // 2], "full": lambda x, sr: x},
    )
    by = {r["system"]: r["mean"] for r in res["rows"]}
    assert by["full"]["si_sdr"] > 100 and by["half"]["si_sdr"] < 10


def test_bad_eval_inputs(tmp_path: Path) -> None:
    from audiotool.errors import UsageError
    from audiotool.metrics import lsd

    with pytest.raises(UsageError):
        evaluate_upsample(tmp_path, systems={}, input_rate=48000)
    with pytest.raises(UsageError, match="band"):
        lsd(torch.zeros(1, 4096), torch.zeros(1, 4096), band="mid")
    _song(tmp_path / "s", 0)
    sf.write(tmp_path / "s" / "bass.wav", np.zeros((100, 2), np.float32), 8000)
    with pytest.raises(InputError, match=r"bass\.wav"):
        evaluate_separation(tmp_path, systems={})
    (tmp_path / "s" / "mixture.wav").unlink()
    with pytest.raises(InputError, match=r"no mixture\.wav"):
        evaluate_separation(tmp_path, systems={})

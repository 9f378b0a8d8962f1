"""`audiotool separate` with demucs checkpoints from a (temporary, offline) Hub cache, checked
against demucs' own apply_model; ensembles; refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("demucs")

from audiotool.cli.app import main
from tests.conftest import use_hf_home
from tests.importers.demucs_export import (
    RATE,
    STEMS4,
    STEMS6,
    bag_yaml,
    export_safetensors,
    make_hdemucs,
    make_htdemucs,
    publish,
    reference_separate,
    write_hub_repo,
)

BAG_WEIGHTS = [[1.0, 0.5, 0.0, 1.0], [0.0, 0.5, 1.0, 2.0]]
#: a v3 bag's segment replaces its models' (0.25 s), here with a longer one
HD_BAG_SEGMENT = 0.3


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[torch.nn.Module]]:
    """Offline HF cache holding demucs-layout repos; the converted cache in tmp_path."""
    use_hf_home(monkeypatch, tmp_path / "hf", offline=True)
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("AUDIOTOOL_CACHE", str(tmp_path / "atcache"))
    m1, m2, m6 = make_htdemucs(1), make_htdemucs(2), make_htdemucs(6, sources=STEMS6)
    publish(cache, tmp_path, "org/tiny", "tiny", [m1])
    publish(cache, tmp_path, "org/bag", "bag", [m1, m2], BAG_WEIGHTS)
    publish(cache, tmp_path, "org/six", "tiny_6s", [m6])
    publish(cache, tmp_path, "adefossez/HTDemucs-ft", "htdemucs_ft", [m2])
    h1, h2 = make_hdemucs(11), make_hdemucs(12)
    publish(cache, tmp_path, "org/hd", "tiny_hd", [h1])
    publish(cache, tmp_path, "org/hdbag", "hd_bag", [h1, h2], BAG_WEIGHTS, HD_BAG_SEGMENT)
    return {
        "org/tiny": [m1],
        "org/bag": [m1, m2],
        "org/six": [m6],
        "htdemucs_ft": [m2],
        "org/hd": [h1],
        "org/hdbag": [h1, h2],
    }


@pytest.fixture
def song(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    torch.manual_seed(0)
    mix = torch.randn(2, 26000) * 0.3
    path = tmp_path / "song.wav"
    sf.write(path, mix.T.numpy(), RATE, subtype="FLOAT")
    return path, mix


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 1), out, err


def separate(spec: list[str], song: Path, out: Path, capsys, *extra: str):  # type: ignore[no-untyped-def]
    models = [a for s in spec for a in ("--model", s)]
    args = ["separate", str(song), *models, "-o", str(out), "--bit-depth", "32f", "--clip", "none"]
    return run([*args, "--quiet", *extra], capsys)


@pytest.mark.parametrize(
    ("spec", "stems", "weights", "bag_segment"),
    [
        ("org/tiny", STEMS4, None, None),
        ("org/bag", STEMS4, BAG_WEIGHTS, None),
        ("org/six", STEMS6, None, None),
        ("org/hd", STEMS4, None, None),
        ("org/hdbag", STEMS4, BAG_WEIGHTS, HD_BAG_SEGMENT),
    ],
)
def test_cli_matches_demucs_apply_model(
    hub, song, tmp_path: Path, capsys, spec: str, stems: list[str], weights, bag_segment
) -> None:  # type: ignore[no-untyped-def]
    path, mix = song
    code, _, err = separate([spec], path, tmp_path / "out", capsys)
    assert code == 0, err
    ref = reference_separate(hub[spec], mix, weights=weights, bag_segment=bag_segment)
    for i, s in enumerate(stems):
        y, rate = sf.read(tmp_path / "out" / "song" / f"{s}.wav", dtype="float32")
        assert rate == RATE
        assert np.abs(y.T - ref[i].numpy()).max() <= 1e-4


def test_hdemucs_chunk_seconds_overlap_match_demucs(hub, song, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """``--chunk-seconds`` is demucs' ``--segment``: for a v3 model it may exceed the training
    segment; the last, shorter segment runs unpadded as in demucs."""
    path, mix = song
    code, _, err = separate(
        ["org/hd"], path, tmp_path / "o", capsys, "--chunk-seconds", "0.4", "--overlap", "0.5"
    )
    assert code == 0, err
    ref = reference_separate(hub["org/hd"], mix, overlap=0.5, segment=0.4)
    for i, s in enumerate(STEMS4):
        y, _ = sf.read(tmp_path / "o" / "song" / f"{s}.wav", dtype="float32")
        assert np.abs(y.T - ref[i].numpy()).max() <= 1e-4


def test_second_run_uses_converted_cache(hub, song, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    from audiotool.importers import demucs as imp

    path, _ = song
    assert separate(["htdemucs_ft"], path, tmp_path / "a", capsys)[0] == 0
    converted = list((tmp_path / "atcache" / "converted").rglob("config.json"))
    assert len(converted) == 1 and "adefossez--HTDemucs-ft" in str(converted[0])

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("reconverted")

    monkeypatch.setattr(imp, "LAYOUT", dataclasses.replace(imp.LAYOUT, convert=boom))
    code, _, err = separate(["adefossez/HTDemucs-ft"], path, tmp_path / "b", capsys)
    assert code == 0, err
    a = sf.read(tmp_path / "a" / "song" / "vocals.wav")[0]
    b = sf.read(tmp_path / "b" / "song" / "vocals.wav")[0]
    assert np.array_equal(a, b)


def test_models_info(hub, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run(["models", "info", "org/six"], capsys)
    assert code == 0
    assert "htdemucs" in out and "guitar, piano" in out and "0.25 s" in out and "demucs" in out


def test_pick_file_and_ensemble_avg(hub, song, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path, mix = song
    code, _, err = separate(
        [
            "org/tiny:tiny.yaml,org/six",
        ],
        path,
        tmp_path / "e",
        capsys,
        "--stems",
        "vocals,bass",
    )
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "e" / "song").iterdir()) == ["bass.wav", "vocals.wav"]
    r1 = reference_separate(hub["org/tiny"], mix)
    r6 = reference_separate(hub["org/six"], mix)
    y, _ = sf.read(tmp_path / "e" / "song" / "vocals.wav", dtype="float32")
    assert np.abs(y.T - ((r1[3] + r6[3]) / 2).numpy()).max() <= 1e-4


@pytest.mark.parametrize("method", ["median", "max_spec", "min_spec"])
def test_ensemble_methods_run(hub, song, tmp_path: Path, capsys, method: str) -> None:  # type: ignore[no-untyped-def]
    path, _ = song
    out = tmp_path / method
    code, _, err = separate(
        ["org/tiny", "org/bag", "org/six"],
        path,
        out,
        capsys,
        "--ensemble",
        method,
        "--stems",
        "drums",
    )
    assert code == 0, err
    y, _ = sf.read(out / "song" / "drums.wav", dtype="float32")
    assert y.shape == (26000, 2) and np.isfinite(y).all()


def test_ensemble_missing_stem_is_usage_error(hub, song, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path, _ = song
    code, _, err = separate(
        ["org/six", "org/tiny"], path, tmp_path / "x", capsys, "--stems", "guitar"
    )
    assert code == 2 and "org/tiny" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_mono_48k_input(hub, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    wav = tmp_path / "mono.wav"
    sf.write(wav, (np.random.default_rng(0).standard_normal(30000) * 0.2).astype("float32"), 48000)
    code, _, err = separate(
        ["org/tiny"],
        wav,
        tmp_path / "m",
        capsys,
        "--shifts",
        "1",
        "--residual",
        "--stems",
        "vocals",
    )
    assert code == 0, err
    y, rate = sf.read(tmp_path / "m" / "mono" / "vocals.wav")
    assert rate == 48000 and y.shape == (30000,)
    assert (tmp_path / "m" / "mono" / "no_vocals.wav").is_file()


def test_refusals_exit_2_nothing_written(hub, song, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path, _ = song
    cache = tmp_path / "hf" / "hub"
    st = export_safetensors(
        make_htdemucs(0), tmp_path / "s.safetensors", klass="demucs.demucs.Demucs"
    )
    write_hub_repo(
        cache,
        "org/old",
        {"s.safetensors": st.read_bytes(), "old.yaml": bag_yaml("old", ["s"]).encode()},
    )
    code, _, err = separate(["org/old"], path, tmp_path / "r", capsys)
    assert code == 2 and "demucs.demucs.Demucs" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
    assert (
        not list((tmp_path / "atcache").rglob("config.json"))
        if (tmp_path / "atcache").exists()
        else True
    )


def test_hdemucs_unsupported_option_refused(hub, song, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A v3 option torchaudio's port cannot represent: exit 2, one line, nothing written."""
    path, _ = song
    publish(tmp_path / "hf" / "hub", tmp_path, "org/hd3", "hd3", [make_hdemucs(0, dconv_mode=3)])
    code, _, err = separate(["org/hd3"], path, tmp_path / "r", capsys)
    assert code == 2 and "dconv_mode=3" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("spec", "extra", "mono"),
    [
        (["org/tiny"], ["--shifts", "2", "--residual", "--stems", "vocals"], False),
        (["org/hd"], ["--mixture-consistent"], False),
        (["org/tiny"], ["--shifts", "1", "--stems", "bass"], True),  # a channel group per channel
        (["org/tiny", "org/hd"], ["--ensemble", "max_spec", "--mixture-consistent"], False),
        (["org/tiny", "org/six"], ["--ensemble", "median", "--residual"], False),
    ],
)
def test_streamed_demucs_shifts_and_ensembles_equal_in_memory(  # type: ignore[no-untyped-def]
    hub, song, tmp_path: Path, capsys, monkeypatch, spec: list[str], extra: list[str], mono: bool
) -> None:
    """Issue #17: the demucs scheme (whole-file standardisation from a first pass), --shifts
    (passes side by side) and ensembles (members side by side, spectral methods in windows)
    stream; the stems equal the in-memory ones to float round-off."""
    path, mix = song
    if mono:
        path = tmp_path / "mono.wav"
        sf.write(path, mix[0].numpy(), RATE, subtype="FLOAT")
    code, _, err = separate(spec, path, tmp_path / "mem", capsys, *extra)
    assert code == 0, err
    monkeypatch.setenv("AUDIOTOOL_STREAM_SECONDS", "0.1")
    code, out, err = separate(spec, path, tmp_path / "st", capsys, *extra, "--json")
    assert code == 0, err
    assert json.loads(out)["files"][0]["details"]["streamed"] is True
    names = sorted(p.name for p in (tmp_path / "mem" / path.stem).iterdir())
    assert names == sorted(p.name for p in (tmp_path / "st" / path.stem).iterdir())
    for name in names:
        a, _ = sf.read(tmp_path / "mem" / path.stem / name, dtype="float32")
        b, _ = sf.read(tmp_path / "st" / path.stem / name, dtype="float32")
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, atol=2e-5, rtol=0)

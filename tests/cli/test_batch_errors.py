"""Issue #17 (items 2 and 4): mistakes found before anything runs, clear messages, races.

Every test here failed before the file-batch driver planned and validated all outputs first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiotool.checkpoints import save_pretrained
from audiotool.models.separation import build_model, tiny_config
from tests.cli.test_app import run_main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sep_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = tiny_config()
    return save_pretrained(build_model(cfg), cfg, tmp_path_factory.mktemp("m") / "sep")


def _noise(path: Path, seed: int = 0, rate: int = 16000, seconds: float = 0.3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal((int(rate * seconds), 2))).astype(np.float32), rate)
    return path


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_missing_input_is_named_not_the_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(["upsample", str(tmp_path / "typo.wav"), "-o", "out.wav"], capsys)
    assert code == 1
    assert "typo.wav: no such file" in err and "inputs were given" not in err


@pytest.mark.parametrize(
    "case", ["output_is_input", "two_inputs_one_output", "output_under_a_file", "mp3", "flac32f"]
)
def test_output_mistakes_exit_2_before_anything_runs(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _noise(tmp_path / "in" / "a.wav")
    b = _noise(tmp_path / "in" / "sub" / "a.wav", seed=1)
    out = tmp_path / "out"
    before = a.read_bytes()
    args = {
        "output_is_input": [str(a), "-o", str(a), "--overwrite"],
        "two_inputs_one_output": [str(a), str(b), "-o", str(out)],
        "output_under_a_file": [str(a), "-o", str(a) + "/x.wav"],
        "mp3": [str(a), "-o", str(out / "x.mp3")],
        "flac32f": [str(a), str(b), "-o", str(out), "--format", "flac", "--bit-depth", "32f"],
    }[case]
    code, _, err = run_main(["upsample", *args, "--steps", "1", "--quiet"], capsys)
    assert code == 2, err
    assert err.count("audiotool: error:") == 1
    assert _files(out) == [] and a.read_bytes() == before
    assert "internal error" not in err


def test_unknown_model_and_impossible_cutoff_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _noise(tmp_path / "a.wav")
    code, _, err = run_main(["upsample", str(a), "--model", "doesnotexist"], capsys)
    assert code == 2 and "doesnotexist" in err
    code, _, err = run_main(["upsample", str(a), "--cutoff", "30000", "-o", "o.wav"], capsys)
    assert code == 2 and "--cutoff" in err
    assert not Path("o.wav").exists()


def test_reconstruct_short_clip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = _noise(tmp_path / "short.wav", seconds=600 / 16000)
    out = tmp_path / "rt.wav"
    code, stdout, err = run_main(["reconstruct", str(clip), "-o", str(out), "--json"], capsys)
    assert code == 0, err
    assert sf.info(str(out)).frames == 600
    assert "internal error" not in err
    assert json.loads(stdout)["counts"]["ok"] == 1


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc")
def test_unwritable_outputs_name_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _noise(tmp_path / "a.wav")
    code, _, err = run_main(["embed", str(a), "-o", "/proc/e.npz"], capsys)
    assert code == 2 and "/proc/e.npz" in err and "system error" not in err
    code, _, err = run_main(["upsample", str(a), "-o", "/proc/up.wav"], capsys)
    assert code == 2 and "/proc/up.wav" in err and "disk space" not in err


def test_empty_stems_and_silent_rest_are_refused(
    tmp_path: Path, sep_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _noise(tmp_path / "a.wav")
    out = tmp_path / "sep"
    base = ["separate", str(a), "--model", str(sep_model), "-o", str(out)]
    code, _, err = run_main([*base, "--stems", ""], capsys)
    assert code == 2 and "--stems" in err and "vocals" in err
    code, _, err = run_main([*base, "--residual", "--mixture-consistent"], capsys)
    assert code == 2 and "silence" in err
    assert _files(out) == []


def test_full_band_warning_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = tmp_path / "wide.wav"
    rng = np.random.default_rng(0)
    sf.write(clip, (0.1 * rng.standard_normal(4800)).astype(np.float32), 48000)
    code, _, err = run_main(["upsample", str(clip), "-o", str(tmp_path / "o.wav")], capsys)
    assert code == 0, err
    flat = "".join(err.split())  # rich wraps long lines
    assert "wide.wav:contentalreadyreaches" in flat


def test_glob_with_non_audio_files_skips_them(capsys: pytest.CaptureFixture[str]) -> None:
    items = sorted(str(p) for p in (REPO / "examples").iterdir())
    assert any(i.endswith("README.md") for i in items)
    code, out, err = run_main(["info", *items], capsys)
    assert code == 0, err
    assert "README.md: not an audio file" in err and "speech_16k.flac" in out
    code, out, _ = run_main(["info", *items, "--json"], capsys)
    data = json.loads(out)
    assert data["counts"]["failed"] == 0 and data["counts"]["skipped"] == 1


def test_ctrl_c_prints_the_summary_of_what_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import audiotool.tasks.embed as embed_task

    real = embed_task._embedding  # on the per-file and the packed path
    calls = []

    def interrupt_second(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(embed_task, "_embedding", interrupt_second)
    a, b = _noise(tmp_path / "a.wav"), _noise(tmp_path / "b.wav", seed=1)
    out = tmp_path / "emb"
    code, stdout, err = run_main(["embed", str(a), str(b), "-o", str(out), "--json"], capsys)
    assert code == 130
    assert "interrupted" in err
    data = json.loads(stdout)
    assert data["interrupted"] is True and data["counts"]["ok"] == 1
    assert [p.name for p in _files(out)] == ["a.npz"]  # nothing partial of b


RACER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import audiotool.tasks.separate as sep
    from audiotool.cli.app import main

    real, me, other = sep.separate_tensor, Path(sys.argv[1]), Path(sys.argv[2])

    def separate_then_wait(*args, **kwargs):
        out = real(*args, **kwargs)
        me.touch()  # both runs have checked for existing outputs and separated
        t0 = time.time()
        while not other.exists() and time.time() - t0 < 120:
            time.sleep(0.02)
        return out

    sep.separate_tensor = separate_then_wait
    main(sys.argv[3:])
    """
)


def test_parallel_runs_never_overwrite_each_other(tmp_path: Path, sep_model: Path) -> None:
    songs = [_noise(tmp_path / d / "song.wav", seed=i, rate=44100) for i, d in enumerate("ab")]
    out = tmp_path / "out"
    marks = [tmp_path / "a.ready", tmp_path / "b.ready"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RACER,
                str(marks[i]),
                str(marks[1 - i]),
                "separate",
                str(songs[i]),
                "-o",
                str(out),
                "--model",
                str(sep_model),
                "--mixture-consistent",
                "--bit-depth",
                "32f",
                "--quiet",
            ],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert "appeared" in loser and str(out / "song") in loser
    written = _files(out)
    assert [p.name for p in written] == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    winner = songs[[code for code, _ in results].index(0)]
    total = sum(sf.read(p, dtype="float32")[0] for p in written)
    mix = sf.read(winner, dtype="float32")[0]
    assert np.abs(total - mix).max() < 1e-4  # every stem is the winner's (they sum to its mix)

"""End to end: ``audiotool models convert roformer CKPT --config YAML -o DIR`` then
``audiotool separate --model DIR`` on a real wav, equal to the reference (bs-roformer 0.3.10
forward + python-audio-separator 0.47.1's chunking, see tests/roformer_reference.py); and the
converter's refusals (one line, exit code 2, nothing written)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.cli.test_app import run_main
from tests.roformer_reference import HOP, RATE, build_reference, reference_demix, write_published


@pytest.mark.parametrize(
    ("variant", "stereo", "instruments", "target", "overlap_arg", "num_overlap"),
    [
        ("bs", True, ["vocals", "other"], None, None, 2),
        ("mel", False, ["vocals", "other"], "vocals", "4", 4),  # --overlap 4 = num_overlap 4
    ],
)
def test_convert_then_separate_matches_reference(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    variant: str,
    stereo: bool,
    instruments: list[str],
    target: str | None,
    overlap_arg: str | None,
    num_overlap: int,
) -> None:
    n = 1 if target else len(instruments)
    ref, section = build_reference(variant, stereo=stereo, num_stems=n, seed=5)
    ckpt, yml = write_published(
        tmp_path / "ckpt", "model", ref, section, instruments=instruments, target=target
    )
    model_dir = tmp_path / "converted"
    code, out, err = run_main(
        ["models", "convert", "roformer", str(ckpt), "--config", str(yml), "-o", str(model_dir)],
        capsys,
    )
    assert code == 0, err
    assert out.strip() == str(model_dir)
    assert {p.name for p in model_dir.iterdir()} == {
        "config.json",
        "model.safetensors",
        "README.md",
    }

    channels = 2 if stereo else 1
    rng = np.random.default_rng(3)
    mix = (0.1 * rng.standard_normal((HOP * 40 * 2 + 123, channels))).astype(np.float32)
    song = tmp_path / "song.wav"
    sf.write(song, mix, RATE, subtype="FLOAT")
    args = ["separate", str(song), "-o", str(tmp_path / "sep"), "--model", str(model_dir)]
    args += ["--bit-depth", "32f", "--clip", "none", "--device", "cpu", "--quiet"]
    if overlap_arg:
        args += ["--overlap", overlap_arg]
    code, _, err = run_main(args, capsys)
    assert code == 0, err

    stems = [target] if target else instruments
    want = reference_demix(
        ref, torch.from_numpy(mix.T.copy()), chunk=HOP * 40, num_overlap=num_overlap
    )
    for i, stem in enumerate(stems):
        got, rate = sf.read(tmp_path / "sep" / "song" / f"{stem}.wav", dtype="float32")
        assert rate == RATE
        got_t = torch.from_numpy(got.reshape(len(mix), channels).T.copy())
        assert (got_t - want[i]).abs().max().item() <= 1e-4


def _refused(
    args: list[str], out_dir: Path, capsys: pytest.CaptureFixture[str], message: str
) -> None:
    code, out, err = run_main(args, capsys)
    assert code == 2, err
    assert out == "" and err.count("\n") == 1 and message in err, err
    assert not out_dir.exists()


def test_convert_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref, section = build_reference("bs", stereo=True, num_stems=2)
    ckpt, yml = write_published(tmp_path, "m", ref, section, instruments=["a", "b"], target=None)
    out_dir = tmp_path / "never"
    base = ["models", "convert", "roformer", str(ckpt), "--config", str(yml), "-o", str(out_dir)]

    text = yml.read_text()
    yml.write_text(text.replace("dim: 16", "dim: 24"))  # shapes no longer match
    _refused(base, out_dir, capsys, "wrong shape: band_split.to_features")

    yml.write_text(text.replace("- b\n", "- b\n  - c\n"))  # three instruments, two estimators
    _refused(base, out_dir, capsys, "gives 3 stem(s) but model.num_stems is 2")

    yml.write_text(text)
    good = ckpt.read_bytes()

    class Code:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("never",))

    with open(ckpt, "wb") as fh:
        pickle.dump({"state_dict": Code()}, fh)
    _refused(base, out_dir, capsys, "weights_only=True")

    ckpt.write_bytes(good)
    _refused([*base[:4], "-o", str(out_dir)], out_dir, capsys, "--config is needed")

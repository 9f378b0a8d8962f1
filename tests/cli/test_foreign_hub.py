"""RoFormer and AudioSR checkpoints straight from a (temporary, offline) Hugging Face cache, in
their published layouts: recognised from the repo's files, converted once, cached, equal to the
reference (RoFormer) or to the explicit converter (AudioSR)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.cli.test_app import run_main
from tests.conftest import use_hf_home
from tests.importers.demucs_export import write_hub_repo
from tests.roformer_reference import HOP, RATE, build_reference, reference_demix, write_published


@pytest.fixture
def hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty offline Hub cache (returned) and a converted-model cache under ``tmp_path``."""
    use_hf_home(monkeypatch, tmp_path / "hf", offline=True)
    monkeypatch.setenv("AUDIOTOOL_CACHE", str(tmp_path / "atcache"))
    return tmp_path / "hf" / "hub"


def test_roformer_repo_with_two_checkpoints_by_file(
    hf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refs = {}
    files: dict[str, bytes] = {}
    for name, variant, seed in (("bs_vocals", "bs", 1), ("mel_vocals", "mel", 2)):
        ref, section = build_reference(variant, stereo=True, num_stems=1, seed=seed)
        ckpt, yml = write_published(
            tmp_path / "pub", name, ref, section, instruments=["vocals", "other"], target="vocals"
        )
        files[ckpt.name] = ckpt.read_bytes()
        files[yml.name] = yml.read_bytes()
        refs[name] = ref
    write_hub_repo(hf, "org/roformers", files)
    rng = np.random.default_rng(0)
    mix = (0.1 * rng.standard_normal((HOP * 80 + 77, 2))).astype(np.float32)
    song = tmp_path / "song.wav"
    sf.write(song, mix, RATE, subtype="FLOAT")

    def separate(spec: str, out: Path) -> tuple[int, str]:
        args = ["separate", str(song), "-o", str(out), "--model", spec, "--bit-depth", "32f"]
        code, _, err = run_main([*args, "--clip", "none", "--quiet"], capsys)
        return code, err

    # two checkpoints and no :FILE: one line naming the choices, exit 2, nothing written
    code, err = separate("org/roformers", tmp_path / "none")
    assert code == 2 and "bs_vocals.ckpt" in err and "mel_vocals.ckpt" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "none").exists()

    for name in refs:
        code, err = separate(f"org/roformers:{name}.ckpt", tmp_path / name)
        assert code == 0, err
        got, rate = sf.read(tmp_path / name / "song" / "vocals.wav", dtype="float32")
        want = reference_demix(
            refs[name], torch.from_numpy(mix.T.copy()), chunk=HOP * 40, num_overlap=2
        )[0]
        assert rate == RATE
        assert (torch.from_numpy(got.T.copy()) - want).abs().max().item() <= 1e-4
    converted = list((tmp_path / "atcache").rglob("config.json"))
    assert len(converted) == 2  # one converted copy per checkpoint

    code, out, err = run_main(["models", "info", "org/roformers:mel_vocals.ckpt", "--json"], capsys)
    assert code == 0, err
    assert '"roformer"' in out and "vocals" in out


def test_audiosr_by_alias_from_the_cache(
    hf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from audiotool.hub import load_model, resolve
    from audiotool.importers import audiosr as importer
    from tests.importers.test_audiosr import _reference_checkpoint

    path, _ = _reference_checkpoint(tmp_path)
    write_hub_repo(hf, "haoheliu/audiosr_basic", {"pytorch_model.bin": path.read_bytes()})
    loaded = load_model("audiosr-basic")  # the alias of haoheliu/audiosr_basic
    assert loaded.config.family == "latent_diffusion" and loaded.config.model_channels == 32
    want, _ = importer.convert_audiosr_checkpoint(
        path, config=loaded.config.replace(scale_factor=1.0)
    )
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, want.state_dict()[k]) or k == "scale_factor", k

    # the second resolution reads the converted copy: converting again would fail here
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted twice")

    monkeypatch.setattr(importer, "convert_folder", refuse)
    again = resolve("haoheliu/audiosr_basic")
    assert again.folder == loaded.resolved.folder
    assert (again.folder / "model.safetensors").is_file()

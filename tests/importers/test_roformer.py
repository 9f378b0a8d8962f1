"""RoFormer importer: published layouts (``state_dict`` wrapper, ``model.`` prefix, MSST YAML
with ``!!python/tuple``), strict refusals, and the Hub-folder functions ``detect`` /
``convert_folder``. Reference models: tests/roformer_reference.py (bs-roformer 0.3.10)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import yaml

from audiotool.errors import CheckpointMismatchError, UnsupportedCheckpointError, UsageError
from audiotool.hub import load_model
from audiotool.importers.roformer import convert, convert_folder, detect, import_roformer
from audiotool.models.roformer import build_model
from tests.roformer_reference import HOP, build_reference, write_published


def _edit_yaml(path: Path, **changes: dict[str, object]) -> None:
    data = yaml.load(path.read_text(), Loader=yaml.FullLoader)  # test-written file
    for section, values in changes.items():
        data[section].update(values)
    path.write_text(yaml.dump(data, sort_keys=False))


@pytest.mark.parametrize(
    ("variant", "stereo", "instruments", "target", "wrap", "prefix"),
    [
        ("bs", True, ["vocals", "other"], "vocals", True, "model."),
        ("mel", False, ["drums", "bass", "other"], None, False, ""),
        ("mel", True, ["vocals", "instrumental"], "vocals", True, ""),
    ],
)
def test_convert_published_layouts(
    tmp_path: Path,
    variant: str,
    stereo: bool,
    instruments: list[str],
    target: str | None,
    wrap: bool,
    prefix: str,
) -> None:
    n = 1 if target else len(instruments)
    ref, section = build_reference(variant, stereo=stereo, num_stems=n)
    ckpt, yml = write_published(
        tmp_path,
        "m",
        ref,
        section,
        instruments=instruments,
        target=target,
        wrap=wrap,
        prefix=prefix,
        num_overlap=4,
    )
    cfg, state = convert(ckpt, yml)
    assert cfg.variant == variant and cfg.audio_channels == (2 if stereo else 1)
    assert cfg.stems == ((target,) if target else tuple(instruments))
    assert (cfg.chunk_size, cfg.num_overlap, cfg.sample_rate) == (HOP * 40, 4, 8000)
    model = build_model(cfg)
    model.load_state_dict(state, strict=True)
    x = torch.randn(1, cfg.audio_channels, HOP * 30)
    with torch.no_grad():
        want = ref(x)
        got = torch.stack([model.eval()(x)[s] for s in cfg.stems], dim=1)
    assert (got - (want[:, None] if n == 1 else want)).abs().max() <= 1e-4
    folder = import_roformer(ckpt, yml, tmp_path / "out")
    assert load_model(str(folder), task="separate").config == cfg
    assert "RoFormer" in (folder / "README.md").read_text()


@pytest.fixture
def bs_files(tmp_path: Path) -> tuple[Path, Path]:
    ref, section = build_reference("bs", stereo=True, num_stems=2)
    return write_published(tmp_path, "bs", ref, section, instruments=["a", "b"], target=None)


def test_shape_mismatch_lists_keys(bs_files: tuple[Path, Path]) -> None:
    ckpt, yml = bs_files
    _edit_yaml(yml, model={"dim": 24})
    with pytest.raises(CheckpointMismatchError, match="wrong shape: band_split") as exc:
        convert(ckpt, yml)
    assert exc.value.exit_code == 2 and exc.value.mismatched
    assert "\n" not in str(exc.value)


def test_missing_and_unexpected_keys(bs_files: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, yml = bs_files
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    del state["model.final_norm.gamma"]
    state["model.extra.weight"] = torch.zeros(1)
    torch.save(state, ckpt)
    with pytest.raises(CheckpointMismatchError, match=r"missing: final_norm\.gamma") as exc:
        convert(ckpt, yml)
    assert exc.value.unexpected == ["extra.weight"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"training": {"instruments": ["a", "b", "c"]}}, "3 stem"),
        ({"training": {"target_instrument": "a"}}, "target_instrument 'a' gives 1 stem"),
        ({"model": {"num_stems": 1}}, "model.num_stems is 1"),
        ({"training": {"instruments": ["a", "a"]}}, "twice"),
        ({"audio": {"num_channels": 1}}, "num_channels"),
        ({"model": {"linear_transformer_depth": 1}}, "linear_transformer_depth"),
        ({"model": {"use_hyper_connections": True}}, "not supported"),
    ],
)
def test_yaml_disagreements_refused(
    bs_files: tuple[Path, Path], changes: dict[str, dict[str, object]], message: str
) -> None:
    ckpt, yml = bs_files
    _edit_yaml(yml, **changes)
    with pytest.raises(UnsupportedCheckpointError, match=message) as exc:
        convert(ckpt, yml)
    assert exc.value.exit_code == 2 and "\n" not in str(exc.value)


class _Code:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("never",))


def test_pickle_with_code_refused(bs_files: tuple[Path, Path]) -> None:
    ckpt, yml = bs_files
    with open(ckpt, "wb") as fh:
        pickle.dump({"state_dict": {"x": _Code()}}, fh)
    with pytest.raises(UnsupportedCheckpointError, match="weights_only") as exc:
        convert(ckpt, yml)
    assert exc.value.exit_code == 2


def test_yaml_with_other_python_tags_refused(bs_files: tuple[Path, Path]) -> None:
    ckpt, yml = bs_files
    yml.write_text(yml.read_text() + "evil: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(UnsupportedCheckpointError, match="not a readable YAML"):
        convert(ckpt, yml)


def test_detect_and_convert_folder(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    ref_bs, sec_bs = build_reference("bs", stereo=True, num_stems=1)
    ref_mel, sec_mel = build_reference("mel", stereo=False, num_stems=1)
    write_published(repo, "bs_vocals", ref_bs, sec_bs, instruments=["vocals"], target="vocals")
    write_published(repo, "mel_vocals", ref_mel, sec_mel, instruments=["vocals"], target=None)
    (repo / "README.md").write_text("# models\n")
    files = sorted(p.name for p in repo.iterdir())
    assert detect(repo, files)
    assert not detect(repo, [f for f in files if not f.endswith(".ckpt")])
    assert not detect(repo, [f for f in files if not f.endswith(".yaml")])
    (tmp_path / "other.yaml").write_text("model: {dim: 3}\n")
    assert not detect(tmp_path, ["other.yaml", "x.ckpt"])

    with pytest.raises(UsageError, match=r"2 RoFormer checkpoints.*bs_vocals.ckpt, mel_vocals"):
        convert_folder(repo)
    cfg, _ = convert_folder(repo, file="mel_vocals.ckpt")
    assert cfg.variant == "mel" and cfg.audio_channels == 1
    with pytest.raises(UsageError, match=r"no single checkpoint named 'nope\.ckpt'"):
        convert_folder(repo, file="nope.ckpt")
    # YAML matched by name; a lone YAML goes with any checkpoint; else ambiguity is an error
    (repo / "bs_vocals.ckpt").rename(repo / "weights.ckpt")
    with pytest.raises(UsageError, match=r"bs_vocals\.yaml, mel_vocals\.yaml"):
        convert_folder(repo, file="weights.ckpt")
    (repo / "mel_vocals.yaml").unlink()
    (repo / "mel_vocals.ckpt").unlink()
    cfg, _ = convert_folder(repo)
    assert cfg.variant == "bs" and cfg.stems == ("vocals",)

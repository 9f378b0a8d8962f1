from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from audiotool.checkpoints import count_parameters, save_pretrained
from audiotool.errors import (
    ConfigError,
    ModelLoadError,
    ModelNotFoundError,
    UnsupportedCheckpointError,
    UsageError,
    WeightMismatchError,
)
from audiotool.hub import default_model, load_model, resolve, zoo_entries
from audiotool.models import registry
from tests.conftest import FAKE_SHA, ScaleConfig, use_hf_home


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_local_folder_round_trip(model_folder: Path) -> None:
    loaded = load_model(str(model_folder))
    assert loaded.resolved.source == "local"
    assert isinstance(loaded.config, ScaleConfig) and loaded.config.sample_rate == 16000
    assert not loaded.model.training
    fresh = registry.get_family("test_scale").build(loaded.config)
    assert not _same_weights(fresh, loaded.model)  # weights really came from the file
    again = load_model(str(model_folder / "model.safetensors"))  # a file in the folder works
    assert _same_weights(again.model, loaded.model)


def test_config_json_is_strict(model_folder: Path) -> None:
    cfg = json.loads((model_folder / "config.json").read_text())
    assert cfg["family"] == "test_scale" and cfg["format_version"] == 1
    cfg["hiddn"] = 4
    (model_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="hiddn"):
        load_model(str(model_folder))


def test_unknown_family(model_folder: Path) -> None:
    cfg = json.loads((model_folder / "config.json").read_text())
    cfg["family"] = "mystery.module.Class"
    (model_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"unknown model family 'mystery\.module\.Class'"):
        load_model(str(model_folder))


def test_wrong_type_in_config(model_folder: Path) -> None:
    cfg = json.loads((model_folder / "config.json").read_text())
    cfg["hidden"] = "three"
    (model_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="hidden"):
        load_model(str(model_folder))


def test_missing_and_unexpected_keys_listed(model_folder: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(model_folder / "model.safetensors"))
    del state["out.bias"]
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(model_folder / "model.safetensors"))
    with pytest.raises(WeightMismatchError) as exc:
        load_model(str(model_folder))
    assert exc.value.missing == ["out.bias"]
    assert exc.value.unexpected == ["extra.weight"]
    assert "out.bias" in str(exc.value) and "extra.weight" in str(exc.value)


def test_shape_mismatch_listed(model_folder: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(model_folder / "model.safetensors"))
    state["proj.weight"] = torch.zeros(5, 2)
    save_file(state, str(model_folder / "model.safetensors"))
    with pytest.raises(WeightMismatchError, match=r"proj.weight: checkpoint \(5, 2\)"):
        load_model(str(model_folder))


def test_corrupt_safetensors(model_folder: Path) -> None:
    weights = model_folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 10])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load_model(str(model_folder))
    weights.write_bytes(b"\x00garbage")
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_model(str(model_folder))


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch /tmp/audiotool-pwned",))


def test_pickle_never_loaded(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(ModelLoadError, match="pickle"):
        resolve(str(ckpt))
    folder = tmp_path / "legacy"
    folder.mkdir()
    torch.save({}, folder / "pytorch_model.bin")  # a weights-only pickle, but not AudioSR's
    with pytest.raises(UnsupportedCheckpointError, match="AudioSR"):
        resolve(str(folder))
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(ModelLoadError, match="weights_only"):  # code in a pickle never runs
        resolve(str(folder))


def test_unknown_spec_and_missing_path(empty_zoo: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not a local path"):
        resolve("nosuchmodel")
    with pytest.raises(ModelNotFoundError, match="no such file"):
        resolve("./missing/folder")
    with pytest.raises(ModelNotFoundError, match="not a valid spec"):
        resolve("org/name@bad rev")


def test_hub_cache_offline(hf_cache: Path) -> None:
    loaded = load_model("org/tiny")
    assert loaded.resolved.source == "hub"
    assert loaded.resolved.revision == FAKE_SHA
    assert loaded.model_id == f"org/tiny@{FAKE_SHA}"
    assert loaded.resolved.folder.parent.parent.name == "models--org--tiny"


def test_hub_pinned_revision(hf_cache: Path) -> None:
    by_tag = resolve("org/tiny@v1")
    assert by_tag.revision == "f" * 40
    by_option = resolve("org/tiny", revision="v1")
    assert by_option.folder == by_tag.folder
    by_sha = resolve(f"org/tiny@{FAKE_SHA}")
    assert by_sha.revision == FAKE_SHA
    with pytest.raises(UsageError, match="pins revision"):
        resolve("org/tiny@v1", revision="main")


def test_hub_offline_not_cached(hf_cache: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not in the cache") as exc:
        resolve("org/other")
    assert "audiotool models download org/other" in (exc.value.hint or "")
    with pytest.raises(ModelNotFoundError, match="not in the cache"):
        resolve("org/tiny@v2")


def test_hub_explicit_cache_dir(
    hf_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    moved = tmp_path / "elsewhere"
    shutil.copytree(hf_cache, moved, symlinks=True)
    use_hf_home(monkeypatch, tmp_path / "empty-home", offline=True)
    with pytest.raises(ModelNotFoundError):
        resolve("org/tiny")
    assert resolve("org/tiny", cache_dir=moved).revision == FAKE_SHA


def test_zoo(empty_zoo: Path, model_folder: Path) -> None:
    shutil.copytree(model_folder, empty_zoo / "up-tiny")
    (empty_zoo / "index.json").write_text(
        json.dumps({"defaults": {"upsample": "up-tiny"}, "descriptions": {"up-tiny": "test"}})
    )
    entries = zoo_entries()
    assert [(e.name, e.task, e.default) for e in entries] == [("up-tiny", "upsample", True)]
    assert default_model("upsample") == "up-tiny"
    loaded = load_model(None, task="upsample")
    assert loaded.model_id == "zoo:up-tiny"
    with pytest.raises(ModelNotFoundError, match="no bundled default"):
        default_model("separate")
    with pytest.raises(UsageError, match="not a 'separate' model"):
        load_model("up-tiny", task="separate")
    with pytest.raises(ModelNotFoundError, match="did you mean"):
        resolve("up-tyni")


def test_count_parameters(model_folder: Path) -> None:
    # Linear(2,3) + Linear(3,2) + gain buffer
    assert count_parameters(model_folder / "model.safetensors") == 2 * 3 + 3 + 3 * 2 + 2 + 1


def test_save_pretrained_is_atomic_and_complete(tmp_path: Path, test_family: object) -> None:
    model = registry.get_family("test_scale").build(ScaleConfig())
    out = save_pretrained(model, ScaleConfig(), tmp_path / "m", card="card")
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]


# --------------------------------------------------------------------------- foreign layouts


def test_foreign_local_folder_converted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("demucs")
    import torch

    from audiotool.hub import load_model, resolve
    from tests.importers.demucs_export import bag_yaml, export_safetensors, make_htdemucs

    monkeypatch.setenv("AUDIOTOOL_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "demucs_repo"
    repo.mkdir()
    export_safetensors(make_htdemucs(0), repo / "s1.safetensors")
    export_safetensors(make_htdemucs(1), repo / "s2.safetensors")
    (repo / "one.yaml").write_text(bag_yaml("one", ["s1"]))
    (repo / "two.yaml").write_text(bag_yaml("two", ["s1", "s2"]))
    with pytest.raises(Exception, match="several"):
        resolve(str(repo))
    first = resolve(f"{repo}:two.yaml")
    assert first.layout == "demucs" and first.origin == repo
    assert first.folder.is_relative_to(tmp_path / "cache" / "converted")
    loaded = load_model(f"{repo}:two", task="separate")
    assert loaded.config.bag_weights == ((1.0,) * 4,) * 2
    assert resolve(f"{repo}:two.yaml").folder == first.folder
    torch.save(
        {"klass": object, "args": [], "kwargs": {}, "state": {}}, repo / "legacy.th"
    )  # builtins.object is not admitted
    from audiotool.errors import UnsupportedCheckpointError

    with pytest.raises(UnsupportedCheckpointError, match="object"):
        resolve(str(repo / "legacy.th"))

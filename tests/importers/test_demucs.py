"""demucs importer: the published Hub layout and legacy .th files convert strictly; everything
unsupported is refused with one typed error (exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("demucs")

from audiotool.errors import UnsupportedCheckpointError
from audiotool.importers import demucs as imp
from audiotool.importers.layouts import find_layout, resolve_alias
from tests.importers.demucs_export import (
    bag_yaml,
    export_safetensors,
    make_hdemucs,
    make_htdemucs,
)


def test_names_and_aliases() -> None:
    assert imp.hf_repo_name("htdemucs") == "HTDemucs"
    assert imp.hf_repo_name("htdemucs_ft") == "HTDemucs-ft"
    assert imp.hf_repo_name("mdx_extra_q") == "Demucs-mdx_extra_q"
    assert resolve_alias("htdemucs_6s") == ("adefossez/HTDemucs-6s", "htdemucs_6s.yaml")
    assert resolve_alias("not_a_demucs_name") is None


def test_detect() -> None:
    assert find_layout(Path("."), ["htdemucs.yaml", "955717e8.safetensors", "README.md"])
    assert find_layout(Path("."), ["955717e8-8726e21a.th"])
    assert find_layout(Path("."), ["config.json", "model.ckpt"]) is None


def test_convert_single_and_fraction_segment(tmp_path: Path) -> None:
    ref = make_htdemucs(0)
    export_safetensors(ref, tmp_path / "abcd1234.safetensors")
    (tmp_path / "tiny.yaml").write_text(bag_yaml("tiny", ["abcd1234"]))
    got = imp.convert(tmp_path)
    assert got.config.segment_samples == 11025 and got.config.bag_weights == ()
    assert got.config.stems == ("drums", "bass", "other", "vocals")
    x = torch.randn(1, 2, 11025)
    with torch.no_grad():
        assert torch.allclose(got.model(x)["bass"], ref(x)[:, 1], atol=1e-5)


def _refused(fn, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(UnsupportedCheckpointError) as exc:
        fn(*args, **kwargs)
    assert exc.value.exit_code == 2
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_refuses_unknown_class(tmp_path: Path) -> None:
    export_safetensors(make_htdemucs(0), tmp_path / "s1.safetensors", klass="demucs.demucs.Demucs")
    (tmp_path / "m.yaml").write_text(bag_yaml("m", ["s1"]))
    msg = _refused(imp.convert, tmp_path)
    assert "demucs.demucs.Demucs" in msg and "demucs.hdemucs.HDemucs" in msg


# --------------------------------------------------------------------------- v3 HDemucs


def test_hdemucs_chunk_forward_matches_demucs(tmp_path: Path) -> None:
    """The converted model's forward alone (no chunking) equals demucs' HDemucs forward, for
    any input length (v3 models take any length)."""
    ref = make_hdemucs(3)
    export_safetensors(ref, tmp_path / "abcd1234.safetensors")
    (tmp_path / "tiny.yaml").write_text(bag_yaml("tiny", ["abcd1234"]))
    got = imp.convert(tmp_path)
    assert got.config.family == "hdemucs" and got.config.segment_samples == 11025
    assert got.config.norm_starts == 2 and got.config.bag_weights == ()
    torch.manual_seed(0)
    for length in (11025, 7001, 300):
        x = torch.randn(2, 2, length)
        with torch.no_grad():
            want, out = ref(x), got.model(x)
        for i, stem in enumerate(got.config.stems):
            assert (out[stem] - want[:, i]).abs().max() <= 1e-5


def test_hdemucs_bag_segment_replaces_the_models(tmp_path: Path) -> None:
    """demucs' BagOfModels: a bag segment replaces a v3 model's (longer or shorter) but only
    ever shortens an HT model's."""
    export_safetensors(make_hdemucs(0), tmp_path / "h1.safetensors")
    export_safetensors(make_hdemucs(1), tmp_path / "h2.safetensors")
    (tmp_path / "m.yaml").write_text(bag_yaml("m", ["h1", "h2"], [[1, 1, 0, 1], [0, 1, 1, 1]], 2))
    got = imp.convert(tmp_path)
    assert got.config.segment_samples == 88200
    assert got.config.bag_weights == ((1, 1, 0, 1), (0, 1, 1, 1))
    assert sorted({k.split(".")[1] for k in got.model.state_dict()}) == ["0", "1"]
    export_safetensors(make_htdemucs(0), tmp_path / "t1.safetensors")
    (tmp_path / "m.yaml").write_text(bag_yaml("m", ["t1"], None, 2))
    assert imp.convert(tmp_path).config.segment_samples == 11025


def test_hdemucs_legacy_th(tmp_path: Path) -> None:
    ref = make_hdemucs(4)
    torch.save(_th_package(ref), tmp_path / "abcd-1234.th")
    got = imp.convert(tmp_path, file="abcd-1234.th")
    x = torch.randn(1, 2, 5000)
    with torch.no_grad():
        assert torch.allclose(got.model(x)["other"], ref(x)[:, 2], atol=1e-5)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("dconv_mode", 3),
        ("hybrid_old", True),
        ("hybrid", False),
        ("cac", False),
        ("channels_time", 4),
        ("rewrite", False),
        ("multi_freqs", [0.5, 0.5]),
    ],
)
def test_hdemucs_refuses_what_torchaudio_cannot_represent(
    tmp_path: Path, option: str, value: object
) -> None:
    from demucs.hdemucs import HDemucs

    from tests.importers.demucs_export import tiny_hdemucs_kwargs

    model = HDemucs(**tiny_hdemucs_kwargs(**{option: value}))
    export_safetensors(model, tmp_path / "s1.safetensors")
    (tmp_path / "m.yaml").write_text(bag_yaml("m", ["s1"]))
    msg = _refused(imp.convert, tmp_path)
    assert option in msg and "HDemucs" in msg


def test_hdemucs_refuses_unknown_argument(tmp_path: Path) -> None:
    model = make_hdemucs(0)
    args, kwargs = model._init_args_kwargs
    model._init_args_kwargs = (args, {**kwargs, "t_layers": 5})
    export_safetensors(model, tmp_path / "s1.safetensors")
    (tmp_path / "m.yaml").write_text(bag_yaml("m", ["s1"]))
    assert "unknown HDemucs argument 't_layers'" in _refused(imp.convert, tmp_path)


def test_refuses_bag_mixing_ht_and_hdemucs(tmp_path: Path) -> None:
    export_safetensors(make_htdemucs(0), tmp_path / "s1.safetensors")
    export_safetensors(make_hdemucs(0), tmp_path / "s2.safetensors")
    (tmp_path / "m.yaml").write_text(bag_yaml("m", ["s1", "s2"]))
    msg = _refused(imp.convert, tmp_path)
    assert "mixes demucs classes" in msg and "hdemucs, htdemucs" in msg


def test_refuses_quantized(tmp_path: Path) -> None:
    export_safetensors(make_htdemucs(0), tmp_path / "s1.safetensors", extra={"structure": "{}"})
    (tmp_path / "m.yaml").write_text(bag_yaml("m", ["s1"]))
    msg = _refused(imp.convert, tmp_path)
    assert "quantized" in msg and "htdemucs_ft" in msg


def test_refuses_shape_mismatch_listing_keys(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = export_safetensors(make_htdemucs(0), tmp_path / "s1.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    state = load_file(str(path))
    state["encoder.0.conv.weight"] = torch.zeros(3, 3, 3, 3)
    del state["decoder.0.conv_tr.bias"]
    save_file(state, str(path), metadata=meta)
    (tmp_path / "m.yaml").write_text(bag_yaml("m", ["s1"]))
    msg = _refused(imp.convert, tmp_path)
    assert "encoder.0.conv.weight" in msg and "decoder.0.conv_tr.bias" in msg


def test_refuses_unsupported_option(tmp_path: Path) -> None:
    export_safetensors(make_htdemucs(0, t_emb="scaled"), tmp_path / "s1.safetensors")
    (tmp_path / "m.yaml").write_text(bag_yaml("m", ["s1"]))
    assert "t_emb" in _refused(imp.convert, tmp_path)


def _th_package(model: torch.nn.Module) -> dict[str, object]:
    args, kwargs = model._init_args_kwargs
    return {"klass": type(model), "args": args, "kwargs": kwargs, "state": model.state_dict()}


def test_legacy_th_roundtrip(tmp_path: Path) -> None:
    ref = make_htdemucs(5)
    torch.save(_th_package(ref), tmp_path / "abcd-1234.th")
    got = imp.convert(tmp_path, file="abcd-1234.th")
    x = torch.randn(1, 2, 11025)
    with torch.no_grad():
        assert torch.allclose(got.model(x)["vocals"], ref(x)[:, 3], atol=1e-5)


class Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_legacy_th_refuses_unexpected_global(tmp_path: Path) -> None:
    pkg = _th_package(make_htdemucs(0))
    pkg["training_args"] = Evil()
    torch.save(pkg, tmp_path / "bad.th")
    msg = _refused(imp.convert, tmp_path, file="bad.th")
    assert "system" in msg


def test_bag_yaml_weights_checked(tmp_path: Path) -> None:
    export_safetensors(make_htdemucs(0), tmp_path / "s1.safetensors")
    export_safetensors(make_htdemucs(1), tmp_path / "s2.safetensors")
    (tmp_path / "m.yaml").write_text(bag_yaml("m", ["s1", "s2"], [[1.0, 1.0], [1.0, 1.0]]))
    assert "weights" in _refused(imp.convert, tmp_path)
    (tmp_path / "m.yaml").write_text(
        json.dumps({"models": ["s1", "s2"], "weights": [[1, 1, 0, 1], [1, 1, 0, 1]]})
    )
    assert "other" in _refused(imp.convert, tmp_path)

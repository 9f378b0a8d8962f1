"""HF transformers wav2vec2 / HuBERT import, with tiny random configs (no transformers needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from audiotool.errors import WeightMismatchError
from audiotool.importers.hf_audio import import_hf_encoder, rae_config_from_hf
from audiotool.models.rae import build_model

HF_CONFIG = {
    "feat_extract_norm": "group",
    "conv_dim": [16, 16, 16],
    "conv_kernel": [10, 3, 3],
    "conv_stride": [5, 2, 2],
    "conv_bias": False,
    "hidden_size": 32,
    "num_conv_pos_embeddings": 8,
    "num_conv_pos_embedding_groups": 4,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "do_stable_layer_norm": False,
}
TINY_DECODER = {
    "decoder_dim": 32,
    "decoder_depth": 1,
    "decoder_heads": 2,
    "griffinlim_iters": 2,
    "hop": 20,
}


def to_hf_names(
    state: dict[str, torch.Tensor], *, old_weight_norm: bool
) -> dict[str, torch.Tensor]:
    """The inverse of the importer's mapping, written independently for the test."""
    out = {}
    for k, v in state.items():
        if k.startswith("encoder.feature_projection."):
            k = k[len("encoder.") :]
        elif k.startswith("encoder.transformer."):
            k = "encoder." + k[len("encoder.transformer.") :]
        if old_weight_norm:
            k = k.replace(".parametrizations.weight.original0", ".weight_g")
            k = k.replace(".parametrizations.weight.original1", ".weight_v")
        out[k] = v.clone()
    out["masked_spec_embed"] = torch.zeros(32)
    return out


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
@pytest.mark.parametrize("old_weight_norm", [False, True])
def test_import_matches_original(tmp_path: Path, kind: str, old_weight_norm: bool) -> None:
    torch.manual_seed(0)
    cfg = rae_config_from_hf(HF_CONFIG, kind, **TINY_DECODER)  # type: ignore[arg-type]
    original = build_model(cfg).eval()
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIG))
    save_file(
        to_hf_names(original.encoder.state_dict(), old_weight_norm=old_weight_norm),
        str(tmp_path / "model.safetensors"),
    )
    torch.manual_seed(1)  # a different random init, overwritten by the import
    imported, cfg2 = import_hf_encoder(tmp_path, kind, **TINY_DECODER)  # type: ignore[arg-type]
    assert cfg2.encoder == kind and cfg2.w2v_embed_dim == 32
    x = torch.randn(1, 4000)
    with torch.no_grad():
        assert torch.allclose(imported.encode_raw(x), original.encode_raw(x), atol=1e-6)


def test_strict_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = rae_config_from_hf(HF_CONFIG, "wav2vec2", **TINY_DECODER)
    state = to_hf_names(build_model(cfg).encoder.state_dict(), old_weight_norm=False)
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIG))
    broken = dict(state)
    del broken["encoder.layer_norm.weight"]
    broken["lm_head.weight"] = torch.zeros(3, 32)
    save_file(broken, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightMismatchError) as exc:
        import_hf_encoder(tmp_path, "wav2vec2", **TINY_DECODER)
    assert "encoder.transformer.layer_norm.weight" in exc.value.missing
    assert "lm_head.weight" in exc.value.unexpected


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_wrapped_checkpoint_heads_are_skipped(tmp_path: Path, kind: str) -> None:
    """``*ForPreTraining`` / ``*ForCTC`` checkpoints: the base model under ``<kind>.`` is
    imported strictly, the heads beside it are skipped."""
    torch.manual_seed(0)
    cfg = rae_config_from_hf(HF_CONFIG, kind, **TINY_DECODER)  # type: ignore[arg-type]
    original = build_model(cfg).eval()
    base = to_hf_names(original.encoder.state_dict(), old_weight_norm=True)
    state = {f"{kind}.{k}": v for k, v in base.items()}
    state["quantizer.codevectors"] = torch.zeros(1, 8, 16)
    state["project_q.weight"] = torch.zeros(16, 16)
    state["lm_head.weight"] = torch.zeros(5, 32)
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIG))
    save_file(state, str(tmp_path / "model.safetensors"))
    imported, _ = import_hf_encoder(tmp_path, kind, **TINY_DECODER)  # type: ignore[arg-type]
    x = torch.randn(1, 4000)
    with torch.no_grad():
        assert torch.allclose(imported.encode_raw(x), original.encode_raw(x), atol=1e-6)
    # the base model stays strict inside the wrapper
    del state[f"{kind}.encoder.layer_norm.bias"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightMismatchError) as exc:
        import_hf_encoder(tmp_path, kind, **TINY_DECODER)  # type: ignore[arg-type]
    assert exc.value.missing == ["encoder.transformer.layer_norm.bias"]

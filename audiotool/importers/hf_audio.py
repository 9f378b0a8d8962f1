"""Import Hugging Face ``transformers`` wav2vec 2.0 / HuBERT checkpoints as RAE encoders.

A transformers ``Wav2Vec2Model`` / ``HubertModel`` folder holds ``config.json`` and
``model.safetensors``. Its keys map onto torchaudio's ``wav2vec2_model`` (the same layout
torchaudio's own ``import_huggingface_model`` relies on, done here on the state dict, without
transformers):

- ``feature_extractor.*`` -> ``feature_extractor.*``
- ``feature_projection.*`` -> ``encoder.feature_projection.*``
- ``encoder.*`` -> ``encoder.transformer.*``
- weight-norm ``weight_g`` / ``weight_v`` -> ``parametrizations.weight.original0`` / ``original1``

``masked_spec_embed`` (used only for pre-training) is ignored. A checkpoint that wraps the base
model (``Wav2Vec2ForPreTraining`` / ``Wav2Vec2ForCTC`` / ``HubertForCTC``: keys under
``wav2vec2.`` / ``hubert.``) has its heads outside the wrapper (``quantizer``, ``project_q``,
``project_hid``, ``lm_head``, ...) skipped and logged; every key of the base model must match.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import torch

from audiotool.errors import ConfigError, ModelLoadError, WeightMismatchError
from audiotool.models.rae import AudioRAE, RAEConfig, build_model

log = logging.getLogger(__name__)

IGNORED = ("masked_spec_embed",)
#: prefixes of a CTC / task head wrapped around the base model
WRAPPER_PREFIXES = ("wav2vec2.", "hubert.")


def rae_config_from_hf(
    hf: dict[str, Any], kind: Literal["wav2vec2", "hubert"], **overrides: Any
) -> RAEConfig:
    """The RAE config whose encoder matches a transformers ``config.json``."""
    try:
        layers = tuple(
            (int(d), int(k), int(s))
            for d, k, s in zip(hf["conv_dim"], hf["conv_kernel"], hf["conv_stride"], strict=True)
        )
        fields = dict(
            encoder=kind,
            w2v_extractor_mode=f"{hf['feat_extract_norm']}_norm",
            w2v_conv_layers=layers,
            w2v_conv_bias=bool(hf.get("conv_bias", False)),
            w2v_embed_dim=int(hf["hidden_size"]),
            w2v_pos_conv_kernel=int(hf["num_conv_pos_embeddings"]),
            w2v_pos_conv_groups=int(hf["num_conv_pos_embedding_groups"]),
            w2v_num_layers=int(hf["num_hidden_layers"]),
            w2v_num_heads=int(hf["num_attention_heads"]),
            w2v_ff_dim=int(hf["intermediate_size"]),
            w2v_layer_norm_first=bool(hf.get("do_stable_layer_norm", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"not a wav2vec2/HuBERT transformers config: missing {exc}") from exc
    fields.update(overrides)
    return RAEConfig.from_dict(fields, source="transformers config.json")


def map_hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers key names -> torchaudio ``wav2vec2_model`` key names.

    Keys that fit neither layout come back as ``"unexpected:<key>"`` (reported by the loader).
    """
    out = {}
    wrapper = next((p for p in WRAPPER_PREFIXES if any(k.startswith(p) for k in state)), None)
    heads = sorted(k for k in state if wrapper is not None and not k.startswith(wrapper))
    if heads:
        log.info("skipping %d head tensors outside %r: %s", len(heads), wrapper, ", ".join(heads))
    for key, value in state.items():
        if wrapper is not None:
            if not key.startswith(wrapper):
                continue
            key = key[len(wrapper) :]
        if key in IGNORED:
            continue
        if key.startswith("feature_projection."):
            key = "encoder." + key
        elif key.startswith("encoder."):
            key = "encoder.transformer." + key[len("encoder.") :]
        elif not key.startswith("feature_extractor."):
            out["unexpected:" + key] = value
            continue
        key = key.replace(".weight_g", ".parametrizations.weight.original0")
        key = key.replace(".weight_v", ".parametrizations.weight.original1")
        out[key] = value
    return out


def load_hf_encoder(model: AudioRAE, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load a transformers state dict into ``model.encoder`` strictly."""
    mapped = map_hf_state(state)
    expected = model.encoder.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(k.removeprefix("unexpected:") for k in set(mapped) - set(expected))
    reshaped = sorted(
        k for k in set(mapped) & set(expected) if tuple(mapped[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or reshaped:
        parts = [
            f"{label}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", reshaped),
            )
            if keys
        ]
        raise WeightMismatchError(
            f"{source}: " + "; ".join(parts),
            missing=missing,
            unexpected=unexpected,
            mismatched=reshaped,
        )
    model.encoder.load_state_dict(mapped, strict=True)


def import_hf_encoder(
    folder: Path, kind: Literal["wav2vec2", "hubert"], **overrides: Any
) -> tuple[AudioRAE, RAEConfig]:
    """Build an RAE whose frozen encoder is the transformers checkpoint in ``folder``.

    The decoder is freshly initialised: train it (``audiotool train reconstruct``).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise ModelLoadError(
            f"{folder}: needs config.json and model.safetensors "
            "(a transformers Wav2Vec2Model / HubertModel folder)"
        )
    hf = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg = rae_config_from_hf(hf, kind, **overrides)
    model = build_model(cfg)
    load_hf_encoder(model, load_file(str(weights)), source=str(weights))
    return model.eval(), cfg

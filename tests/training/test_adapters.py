from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from audiotool.errors import ConfigError, UsageError, WeightMismatchError
from audiotool.hub import build_model, save_pretrained
from audiotool.models.audio_branch import PRESETS as BRANCH_PRESETS
from audiotool.models.rae import PRESETS as RAE_PRESETS
from audiotool.training.adapters import load_encoder_from
from audiotool.training.loop import train
from audiotool.training.recipe import recipe_from_dict
from tests.training.toy import ToyAdapter, toy_recipe

TINY_BRANCH = dict(
    branch_d_model=32,
    branch_num_layers=1,
    branch_num_heads=2,
    branch_ffn_dim=64,
    branch_subsampling_channels=8,
)


def _tiny_embedder(tmp_path: Path, **changes: int) -> Path:
    cfg = dataclasses.replace(BRANCH_PRESETS["tiny"](), **changes)
    torch.manual_seed(3)
    model = build_model(cfg)
    return save_pretrained(model, cfg, tmp_path / "embedder")


def _branch_rae() -> torch.nn.Module:
    cfg = dataclasses.replace(RAE_PRESETS["tiny"](), encoder="audio_branch", **TINY_BRANCH)
    return build_model(cfg)


def test_encoder_from_copies_the_embedder_weights(tmp_path: Path) -> None:
    folder = _tiny_embedder(tmp_path, conv_kernel=31)
    rae = _branch_rae()
    before = {k: v.clone() for k, v in rae.encoder.state_dict().items()}
    load_encoder_from(rae, str(folder))
    after = rae.encoder.state_dict()
    saved = load_file(str(folder / "model.safetensors"))
    assert set(after) == set(saved)
    assert all(torch.equal(after[k], saved[k]) for k in saved)
    assert any(not torch.equal(before[k], after[k]) for k in saved)
    # still frozen
    assert not any(p.requires_grad for p in rae.encoder.parameters())


def test_encoder_from_refuses_other_sizes_and_encoders(tmp_path: Path) -> None:
    folder = _tiny_embedder(tmp_path, d_model=48, conv_kernel=31)
    with pytest.raises(WeightMismatchError, match="wrong shape"):
        load_encoder_from(_branch_rae(), str(folder))
    vit_rae = build_model(RAE_PRESETS["tiny"]())
    with pytest.raises(UsageError, match="audio_branch"):
        load_encoder_from(vit_rae, str(folder))


def test_recipe_notes_go_into_the_card(tmp_path: Path, test_family: object) -> None:
    base = toy_recipe(steps=2, val_every=1, ckpt_every=1, log_every=1)
    recipe = dataclasses.replace(base, notes="Identity first stage, on purpose.")
    train(
        recipe, ToyAdapter(), build=build_model, out_dir=tmp_path / "m", device=torch.device("cpu")
    )
    card = (tmp_path / "m" / "README.md").read_text()
    assert "## Design" in card and "Identity first stage, on purpose." in card
    with pytest.raises(ConfigError, match="notes"):
        recipe_from_dict(
            {"task": "upsample", "model": {"family": "test_scale", "preset": "tiny"}, "notes": [1]}
        )

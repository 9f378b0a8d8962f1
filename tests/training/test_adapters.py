from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from audiotool.checkpoints import build_model, save_pretrained
from audiotool.errors import ConfigError, UsageError, WeightMismatchError
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


def _clip_data(root: Path) -> Path:
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        for i in range(2):
            x = 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t) + 0.01 * rng.standard_normal(16000)
            sf.write(root / split / f"c{i}.wav", x.astype(np.float32), 16000)
    return root


def test_codec_trains_end_to_end_and_refuses_encoder_from(tmp_path: Path) -> None:
    from audiotool.hub import load_model
    from audiotool.training.adapters import make_adapter

    data = _clip_data(tmp_path / "data")
    spec = {
        "task": "reconstruct",
        "model": {"family": "codec", "preset": "tiny"},
        "data": {"clip_seconds": 0.25, "extra": {"gain_range": [0.5, 1.0]}},
        "train": {"steps": 3, "batch_size": 2, "val_every": 3, "val_batches": 1, "log_every": 1},
    }
    recipe = recipe_from_dict(spec)
    out = tmp_path / "codec"
    adapter = make_adapter(recipe, data)
    train(recipe, adapter, build=build_model, out_dir=out, device=torch.device("cpu"))
    model = load_model(str(out)).model
    assert model.frame_samples == 128
    import json

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and log[-1]["val_loss"] > 0
    init = build_model(recipe.model_config())
    # a crop scaled by the random gain stays within [0.5, 1] x the clip's peak
    x = adapter._batch(model, ("train", 7, 4))
    assert x.shape == (4, 3968) and float(x.abs().max()) <= 0.32
    spec["data"]["extra"] = {"encoder_from": "embed-small"}
    with pytest.raises(UsageError, match="encoder_from"):
        make_adapter(recipe_from_dict(spec), data).prepare(init)


def test_upsample_adapter_uses_the_model_rate_and_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 24 kHz model with hop 300 (80 mel frames/s, not AudioSR's 48 kHz / 480) trains on
    24 kHz crops whose target mel has one frame per 300 samples."""
    import numpy as np
    import soundfile as sf

    from audiotool.training.adapters import make_adapter
    from audiotool.training.clips import ClipIndex

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        x = 0.1 * rng.standard_normal(2 * 24000).astype(np.float32)
        sf.write(tmp_path / split / "a.wav", x, 24000)
    spec = {
        "task": "upsample",
        "model": {
            "family": "latent_diffusion",
            "preset": "tiny",
            "overrides": {"sample_rate": 24000, "hop": 300},
        },
        "data": {"clip_seconds": 0.8, "extra": {"context_seconds": 1.0}},
    }
    recipe = recipe_from_dict(spec)
    adapter = make_adapter(recipe, tmp_path)
    assert adapter.best_metric == "loss" and not adapter.higher_is_better
    model = build_model(recipe.model_config())
    assert model.mel.sample_rate == 24000 and model.mel.hop_length == 300
    assert adapter.rates == [8000, 12000, 16000]  # the defaults below the model's rate

    crops: list[tuple[int, int]] = []
    real_crop = ClipIndex.random_crop

    def spy(self: ClipIndex, gen: torch.Generator, length: int, rate: int, **kw: object) -> object:
        crops.append((length, rate))
        return real_crop(self, gen, length, rate, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ClipIndex, "random_crop", spy)
    clip = adapter._clip_samples(model)
    assert clip == 64 * 300  # int(0.8 s x 80 frames/s) frames of 300 samples: 0.8 s at 24 kHz
    data = adapter._materialise(model, ("train", 5, 2))
    assert crops == [(24000, 24000)] * 2  # context_seconds x 24 kHz, read at 24 kHz
    assert data["target_mel"].shape[:2] == (2, 64) and data["cond_mel"].shape[:2] == (2, 64)
    assert data["context_mel"].shape[1] == 24000 // 300
    loss, _ = adapter.loss(
        model, adapter.train_batch(0, 0, 2, torch.Generator()), torch.Generator()
    )
    assert torch.isfinite(loss)

    spec["data"]["extra"] = {"input_rates": [16000, 32000]}  # type: ignore[index]
    with pytest.raises(ConfigError, match="sample_rate"):
        make_adapter(recipe_from_dict(spec), tmp_path)


def test_separate_data_must_be_at_the_model_rate(tmp_path: Path) -> None:
    import numpy as np
    import soundfile as sf

    from audiotool.training.adapters import make_adapter

    for split in ("train", "val"):
        song = tmp_path / split / "s0"
        song.mkdir(parents=True)
        for stem in ("mixture", "vocals", "drums", "bass", "other"):
            sf.write(song / f"{stem}.wav", np.zeros((2205, 2), np.float32), 22050)
    spec = {"task": "separate", "model": {"family": "bandsplit", "preset": "tiny"}}
    with pytest.raises(ConfigError, match="22050 Hz, the model at 44100 Hz"):
        make_adapter(recipe_from_dict(spec), tmp_path)
    spec["model"]["overrides"] = {"sample_rate": 22050}  # type: ignore[index]
    assert make_adapter(recipe_from_dict(spec), tmp_path).best_metric == "si_sdr"


def test_upsample_level_bound_in_training(tmp_path: Path) -> None:
    """The recipe option adds the inference-time ceiling to the batches and the loss; the
    ceiling of a white-noise condition matches the true high band (flat extrapolation)."""
    import numpy as np
    import soundfile as sf

    from audiotool.dsp import lowpass
    from audiotool.training.adapters import level_bound_target, make_adapter
    from audiotool.training.recipe import load_recipe

    shipped = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "upsample-tiny.yaml")
    assert float(shipped.data.extra["level_bound_weight"]) > 0  # the bundled recipe turns it on

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        sf.write(tmp_path / split / "a.wav", 0.1 * rng.standard_normal(48000), 48000)
    spec = {
        "task": "upsample",
        "model": {"family": "latent_diffusion", "preset": "tiny"},
        "data": {
            "clip_seconds": 0.64,
            "extra": {"context_seconds": 1.0, "input_rates": [16000], "level_bound_weight": 0.1},
        },
    }
    recipe = recipe_from_dict(spec)
    adapter = make_adapter(recipe, tmp_path)
    model = build_model(recipe.model_config())
    data = adapter._materialise(model, ("train", 5, 2))
    assert data["bound_energy"].shape == (2, 64) and data["bound_mask"].shape == (2, 256)
    loss, parts = adapter.loss(model, ("train", 5, 2), torch.Generator().manual_seed(0))
    assert set(parts) == {"mse", "level_bound"} and torch.isfinite(loss)
    expected = parts["mse"] + 0.1 * parts["level_bound"]
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)
    spec["data"]["extra"]["level_bound_weight"] = -1  # type: ignore[index]
    with pytest.raises(ConfigError, match="level_bound_weight"):
        make_adapter(recipe_from_dict(spec), tmp_path)

    noise = torch.from_numpy(0.1 * rng.standard_normal((1, 48000))).float()
    energy, mask = level_bound_target(model, lowpass(noise, 48000, 7600), 7600, f_min=20.0)
    truth = (torch.matmul(model.mel.basis, model.mel.stft_magnitude(noise)) ** 2)[0]
    true_energy = (truth * mask[:, None]).sum(dim=0)
    ratio_db = 10 * torch.log10(energy[0] / true_energy)
    assert abs(float(ratio_db.median())) < 3.0, ratio_db


def test_upsample_init_from_starts_from_a_trained_model(tmp_path: Path) -> None:
    import numpy as np
    import soundfile as sf

    from audiotool.training.adapters import make_adapter

    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        sf.write(tmp_path / split / "a.wav", np.zeros(48000), 48000)
    spec = {
        "task": "upsample",
        "model": {"family": "latent_diffusion", "preset": "tiny"},
        "data": {"clip_seconds": 0.64, "extra": {}},
    }
    config = recipe_from_dict(spec).model_config()
    torch.manual_seed(1)
    source = save_pretrained(build_model(config), config, tmp_path / "source")
    spec["data"]["extra"] = {"init_from": str(source)}  # type: ignore[index]
    adapter = make_adapter(recipe_from_dict(spec), tmp_path)
    torch.manual_seed(2)
    fresh = build_model(config)
    adapter.prepare(fresh)
    saved = load_file(str(source / "model.safetensors"))
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in saved.items())


def test_card_data_counts_songs_not_stem_files(tmp_path: Path) -> None:
    from audiotool.training.adapters import _card_data

    files = [
        {"file": f"{split}/song_{i}/{stem}.wav", "split": split, "duration": 10.0}
        for split, n in (("train", 2), ("val", 1))
        for i in range(n)
        for stem in ("mixture", "vocals", "drums", "bass", "other")
    ]
    manifest = {"kind": "separate", "seed": 0, "split_unit": "song seed", "files": files}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    line = _card_data(tmp_path)
    assert "2 train / 1 val songs, 0.01 h train" in line

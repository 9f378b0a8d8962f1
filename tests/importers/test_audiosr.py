from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from audiotool.errors import ModelLoadError, WeightMismatchError
from audiotool.importers.audiosr import convert_audiosr_checkpoint, map_audiosr_state
from audiotool.models.latent_diffusion import build_model
from tests.models.test_latent_diffusion import reduced_audiosr


def _reference_checkpoint(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A checkpoint laid out like AudioSR's pytorch_model.bin, for a reduced architecture."""
    torch.manual_seed(3)
    ours = build_model(reduced_audiosr()).state_dict()
    state = {k: v.clone() for k, v in ours.items()}
    state["scale_factor"] = torch.tensor(0.3342)
    state["logvar"] = torch.zeros(1000)
    state["clap.model.logit_scale_a"] = torch.tensor(1.0)
    state["model_ema.decay"] = torch.tensor(0.999)
    state["model_ema.num_updates"] = torch.tensor(7, dtype=torch.int32)
    for k, v in list(ours.items()):  # the conditioning VAE's decoder + vocoder, never used
        if k.startswith("first_stage_model.decoder.conv_in"):
            state[k.replace("first_stage_model.", "cond_stage_models.0.vae.")] = v.clone()
        if k.startswith("first_stage_model.vocoder.conv_post"):
            state[k.replace("first_stage_model.", "cond_stage_models.0.vae.")] = v.clone()
    path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": state, "epoch": 3}, path)
    return path, state


def test_converts_strictly_and_exactly(tmp_path: Path) -> None:
    path, state = _reference_checkpoint(tmp_path)
    model, cfg = convert_audiosr_checkpoint(path, config=reduced_audiosr())
    assert cfg.scale_factor == pytest.approx(0.3342)
    out = model.state_dict()
    for k, v in out.items():
        if k == "scale_factor":
            assert float(v) == pytest.approx(0.3342)
            continue
        assert torch.equal(v, state[k]), k


def test_global_encoder_import_keeps_output(tmp_path: Path) -> None:
    path, _ = _reference_checkpoint(tmp_path)
    plain, _ = convert_audiosr_checkpoint(path, config=reduced_audiosr(False))
    glob, cfg = convert_audiosr_checkpoint(path, config=reduced_audiosr(True))
    assert cfg.use_global_encoder
    x, cond, t = torch.randn(1, 16, 16, 8), torch.randn(1, 16, 16, 8), torch.tensor([250])
    with torch.no_grad():
        ctx = glob.encode_global(torch.randn(1, 100, 256))
        assert torch.equal(plain(x, t, cond), glob(x, t, cond, ctx))


def test_missing_key_is_listed(tmp_path: Path) -> None:
    path, state = _reference_checkpoint(tmp_path)
    del state["model.diffusion_model.out.2.bias"]
    torch.save({"state_dict": state}, path)
    with pytest.raises(WeightMismatchError, match=r"missing: model\.diffusion_model\.out\.2\.bias"):
        convert_audiosr_checkpoint(path, config=reduced_audiosr())


def test_unexpected_key_is_listed(tmp_path: Path) -> None:
    path, state = _reference_checkpoint(tmp_path)
    state["cond_stage_models.1.something"] = torch.zeros(3)
    torch.save({"state_dict": state}, path)
    with pytest.raises(WeightMismatchError) as exc:
        convert_audiosr_checkpoint(path, config=reduced_audiosr())
    assert exc.value.unexpected == ["cond_stage_models.1.something"]


def test_mapping_rejects_wrong_shapes() -> None:
    model = build_model(reduced_audiosr())
    state = dict(model.state_dict())
    state["model.diffusion_model.out.2.bias"] = torch.zeros(3)
    with pytest.raises(WeightMismatchError, match="wrong shape"):
        map_audiosr_state(state, model)


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("this must never run",))


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.bin"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": {"x": _Evil()}}, fh)
    with pytest.raises(ModelLoadError, match="weights_only"):
        convert_audiosr_checkpoint(path, config=reduced_audiosr())


def test_no_state_dict_entry(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    torch.save({"model": {}}, path)
    with pytest.raises(ModelLoadError, match="state_dict"):
        convert_audiosr_checkpoint(path, config=reduced_audiosr())


def test_folder_import_reads_widths_and_matches_the_file_import(tmp_path: Path) -> None:
    from audiotool.importers.audiosr import convert_folder, detect

    _, state = _reference_checkpoint(tmp_path)
    assert detect(tmp_path, ["pytorch_model.bin", "README.md"])
    assert not detect(tmp_path, ["pytorch_model.bin", "config.json"])  # a transformers repo
    cfg, converted = convert_folder(tmp_path)
    ref = reduced_audiosr()
    assert (cfg.vae_ch, cfg.model_channels, cfg.hifigan_channels) == (
        ref.vae_ch,
        ref.model_channels,
        ref.hifigan_channels,
    )
    model = build_model(cfg)
    model.load_state_dict(converted, strict=True)
    for k, v in model.state_dict().items():
        if k != "scale_factor":
            assert torch.equal(v, state[k]), k


def test_folder_import_refuses_a_foreign_pickle(tmp_path: Path) -> None:
    from audiotool.importers.audiosr import convert_folder

    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightMismatchError, match="not an AudioSR checkpoint"):
        convert_folder(tmp_path)

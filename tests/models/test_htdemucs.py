"""htdemucs family: demucs 4.1 state-dict keys load strictly; the chunk forward equals demucs'."""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("demucs")

from audiotool.engine.segments import DemucsPlan, run_segments
from audiotool.importers.demucs import _model_config
from audiotool.models.htdemucs import HTDemucs, HTDemucsBag, build_model
from tests.importers.demucs_export import STEMS6, make_htdemucs, tiny_kwargs


def _ours(ref: torch.nn.Module) -> torch.nn.Module:
    args, kwargs = ref._init_args_kwargs
    cfg = _model_config("demucs.htdemucs.HTDemucs", list(args), dict(kwargs), "test")
    model = build_model(cfg).eval()
    model.load_state_dict(ref.state_dict(), strict=True)
    return model


@pytest.mark.parametrize("sources", [None, STEMS6])
def test_chunk_forward_equals_demucs(sources: list[str] | None) -> None:
    ref = make_htdemucs(0, **({"sources": sources} if sources else {}))
    ours = _ours(ref)
    assert set(ours.state_dict()) == set(ref.state_dict())
    x = torch.randn(2, 2, ref.valid_length(1000))
    with torch.no_grad():
        want = ref(x)
        got = ours(x)
        short_want, short_got = ref(x[..., :5000]), ours(x[..., :5000])
    assert list(got) == list(ref.sources)
    for i, s in enumerate(ref.sources):
        assert torch.allclose(got[s], want[:, i], atol=1e-5)
        assert torch.allclose(short_got[s], short_want[:, i], atol=1e-5)


def test_batch_equals_one_by_one() -> None:
    ours = _ours(make_htdemucs(3))
    x = torch.randn(3, 2, 11025)
    with torch.no_grad():
        batch = ours(x)["vocals"]
        single = torch.cat([ours(x[i : i + 1])["vocals"] for i in range(3)])
    assert torch.allclose(batch, single, atol=1e-5)


def test_bag_combines_with_per_stem_weights() -> None:
    m1, m2 = _ours(make_htdemucs(1)), _ours(make_htdemucs(2))
    cfg = dataclasses.replace(
        m1_cfg := _model_config("demucs.htdemucs.HTDemucs", [], tiny_kwargs(), "t"),
        bag_weights=((1.0, 1.0, 0.0, 2.0), (0.0, 1.0, 1.0, 1.0)),
    )
    assert m1_cfg.segment_samples == 11025
    bag = HTDemucsBag(cfg).eval()
    bag.models[0].load_state_dict(m1.state_dict())
    bag.models[1].load_state_dict(m2.state_dict())
    x = torch.randn(1, 2, 11025)
    with torch.no_grad():
        y1, y2, yb = m1(x), m2(x), bag(x)
    assert torch.allclose(yb["drums"], y1["drums"], atol=1e-6)
    assert torch.allclose(yb["other"], y2["other"], atol=1e-6)
    assert torch.allclose(yb["bass"], (y1["bass"] + y2["bass"]) / 2, atol=1e-6)
    assert torch.allclose(yb["vocals"], (2 * y1["vocals"] + y2["vocals"]) / 3, atol=1e-6)


@pytest.mark.parametrize("length", [500, 11025, 30001])
def test_demucs_plan_equals_apply_model(length: int) -> None:
    from demucs.apply import apply_model

    ref = make_htdemucs(4)
    ours = _ours(ref)
    assert isinstance(ours, HTDemucs)
    mix = torch.randn(2, length)
    with torch.no_grad():
        want = apply_model(ref, mix[None], shifts=0, split=True, overlap=0.25)[0]
    got = run_segments(ours, mix, DemucsPlan(length, 11025, 0.25), batch_size=3)
    for i, s in enumerate(ref.sources):
        assert (got[s] - want[i]).abs().max() <= 1e-5

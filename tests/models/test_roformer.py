"""RoFormer family: parity with the reference forward (bs-roformer 0.3.10, identical to
python-audio-separator 0.47.1's modules; see tests/roformer_reference.py for why), and the
reference's chunked inference (python-audio-separator 0.47.1's demix)."""

from __future__ import annotations

import pytest
import torch

from audiotool.checkpoints import load_state_strict
from audiotool.engine.segments import RoformerPlan, run_segments
from audiotool.errors import ConfigError, EngineError
from audiotool.models.registry import get_family
from audiotool.models.roformer import RoformerConfig, build_model, tiny_config
from tests.roformer_reference import HOP, RATE, build_reference, reference_demix

CASES = [  # variant, stereo, stems
    ("bs", True, 1),
    ("bs", False, 3),
    ("mel", True, 2),
    ("mel", False, 1),
]


def ours_for(variant: str, stereo: bool, n: int, chunk: int = HOP * 40, overlap: int = 2):  # type: ignore[no-untyped-def]
    ref, section = build_reference(variant, stereo=stereo, num_stems=n)
    cfg = RoformerConfig(
        variant=variant,  # type: ignore[arg-type]
        sample_rate=RATE,
        stems=tuple(f"s{i}" for i in range(n)),
        audio_channels=2 if stereo else 1,
        dim=16,
        depth=2,
        heads=2,
        dim_head=8,
        freqs_per_bands=section.get("freqs_per_bands", (4, 4, 8, 17)),
        num_bands=section.get("num_bands", 6),
        stft_n_fft=64,
        stft_hop_length=HOP,
        stft_win_length=64,
        chunk_size=chunk,
        num_overlap=overlap,
    )
    model = build_model(cfg)
    load_state_strict(model, ref.state_dict(), source="reference")
    return ref, model.eval(), cfg


def stacked(out: dict[str, torch.Tensor], stems: tuple[str, ...]) -> torch.Tensor:
    return torch.stack([out[s] for s in stems], dim=1)  # (B, S, C, T)


def test_registered() -> None:
    assert get_family("roformer").task == "separate"
    assert get_family("roformer").config_cls is RoformerConfig
    cfg = tiny_config("mel")
    assert RoformerConfig.from_dict(cfg.to_json_dict()) == cfg


@pytest.mark.parametrize(("variant", "stereo", "n"), CASES)
def test_forward_matches_reference(variant: str, stereo: bool, n: int) -> None:
    ref, model, cfg = ours_for(variant, stereo, n)
    torch.manual_seed(1)
    x = 0.5 * torch.randn(2, 2 if stereo else 1, HOP * 37 + 5)  # not a whole number of hops
    with torch.no_grad():
        want = ref(x)
        got = stacked(model(x), cfg.stems)
    if n == 1:
        want = want[:, None]
    t = want.shape[-1]
    assert t == HOP * 37  # the reference's iSTFT stops at the last whole hop
    assert got.shape == (2, n, x.shape[1], x.shape[-1])
    assert (got[..., :t] - want).abs().max().item() <= 1e-4
    assert got[..., t:].abs().max().item() == 0.0  # ... and so does ours, padded with zeros


def test_batch_equals_one_by_one() -> None:
    _, model, cfg = ours_for("mel", True, 2)
    x = torch.randn(3, 2, HOP * 20)
    with torch.no_grad():
        whole = stacked(model(x), cfg.stems)
        single = torch.cat([stacked(model(x[i : i + 1]), cfg.stems) for i in range(3)])
    assert torch.allclose(whole, single, atol=1e-5)


def test_bad_layouts_refused() -> None:
    with pytest.raises(ConfigError, match="summing to 33"):
        build_model(tiny_config().replace(freqs_per_bands=(4, 4)))
    with pytest.raises(ConfigError, match="channels"):
        build_model(tiny_config().replace(audio_channels=3))


@pytest.mark.parametrize(
    ("length", "chunk", "step", "starts"),
    [
        (100, 40, 20, [0, 20, 40, 60]),  # 60 + 40 == 100: the tail chunk is already planned
        (101, 40, 20, [0, 20, 40, 60, 61]),
        (30, 40, 20, [0]),  # shorter than a chunk: one short segment
        (40, 40, 13, [0]),
        (95, 40, 40, [0, 40, 55]),
    ],
)
def test_plan_schedule(length: int, chunk: int, step: int, starts: list[int]) -> None:
    plan = RoformerPlan(length, chunk=chunk, step=step)
    assert plan.starts == starts and plan.n_segments == len(starts)
    assert plan.segment == min(chunk, length)
    with pytest.raises(EngineError):
        RoformerPlan(length, chunk=chunk, step=chunk + 1)


@pytest.mark.parametrize(
    ("variant", "stereo", "n", "length", "overlap"),
    [
        ("bs", True, 2, HOP * 40 * 3 + 77, 2),  # several chunks and an end-aligned tail
        ("mel", False, 1, HOP * 40 * 2 + 5, 3),  # step not dividing the chunk
        ("bs", False, 1, HOP * 40, 4),  # exactly one chunk
        ("mel", True, 1, HOP * 25 + 7, 2),  # shorter than a chunk (partial last hop: zeros)
    ],
)
def test_chunked_matches_reference_demix(
    variant: str, stereo: bool, n: int, length: int, overlap: int
) -> None:
    chunk = HOP * 40
    ref, model, cfg = ours_for(variant, stereo, n, chunk=chunk, overlap=overlap)
    torch.manual_seed(2)
    mix = 0.5 * torch.randn(2 if stereo else 1, length)
    want = reference_demix(ref, mix, chunk=chunk, num_overlap=overlap)
    plan = RoformerPlan(length, chunk=chunk, step=chunk // overlap)
    got = run_segments(model, mix, plan, batch_size=3)
    assert (torch.stack([got[s] for s in cfg.stems]) - want).abs().max().item() <= 1e-4

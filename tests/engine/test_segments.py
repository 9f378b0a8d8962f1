"""The generic weighted-segment runner: identity models give the input back, weights matter."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor

from audiotool.engine.segments import run_segments
from audiotool.errors import EngineError


@dataclasses.dataclass
class _Plan:
    """Zero-padded segments every ``hop`` samples, triangular weights (a demucs-like scheme)."""

    length: int
    segment: int
    hop: int

    @property
    def n_segments(self) -> int:
        return -(-self.length // self.hop)

    def segment_input(self, audio: Tensor, i: int) -> Tensor:
        start = i * self.hop
        part = audio[:, start : start + self.segment]
        return torch.nn.functional.pad(part, (0, self.segment - part.shape[-1]))

    def placement(self, i: int, device: torch.device) -> tuple[int, Tensor]:
        half = self.segment // 2
        w = torch.cat([torch.arange(1, half + 1), torch.arange(self.segment - half, 0, -1)])
        return i * self.hop, (w / w.max()).float().to(device)


@pytest.mark.parametrize(
    ("length", "segment", "hop", "batch"), [(1000, 128, 96, 1), (77, 128, 32, 3)]
)
def test_identity_model_gives_the_input_back(
    length: int, segment: int, hop: int, batch: int
) -> None:
    x = torch.randn(2, length)
    out = run_segments(
        lambda b: {"a": b, "b": 2 * b}, x, _Plan(length, segment, hop), batch_size=batch
    )
    assert torch.allclose(out["a"], x, atol=1e-6)
    assert torch.allclose(out["b"], 2 * x, atol=1e-5)


def test_equals_the_explicit_weighted_sum() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 300)
    plan = _Plan(300, 64, 48)

    def model(b: Tensor) -> Tensor:  # position-dependent: each segment's output differs
        return b * torch.linspace(0.5, 1.5, b.shape[-1])

    out = run_segments(model, x, plan, batch_size=2)["output"]
    num, den = torch.zeros(1, 300), torch.zeros(300)
    for i in range(plan.n_segments):
        pos, w = plan.placement(i, torch.device("cpu"))
        y = model(plan.segment_input(x, i)[None])[0]
        n = min(plan.segment, 300 - pos)
        num[:, pos : pos + n] += y[:, :n] * w[:n]
        den[pos : pos + n] += w[:n]
    assert torch.allclose(out, num / den, atol=1e-6)


def test_samples_without_weight_are_an_error() -> None:
    plan = _Plan(300, 64, 100)  # hop > segment: gaps
    with pytest.raises(EngineError, match="without weight"):
        run_segments(lambda b: b, torch.randn(1, 300), plan)


def test_demucs_plan_unpadded_last_segment() -> None:
    """v3 scheme: the last segment is only the remaining samples (no padding) and batches mix
    input lengths; an identity model gives the input back."""
    from audiotool.engine.segments import DemucsPlan

    plan = DemucsPlan(1000, 300, 0.25, pad_last=False)
    x = torch.randn(2, 1000)
    lengths = [plan.segment_input(x, i).shape[-1] for i in range(plan.n_segments)]
    assert lengths == [300, 300, 300, 300, 100]
    assert torch.equal(plan.segment_input(x, 4), x[:, 900:])
    seen: list[int] = []

    def identity(batch: Tensor) -> Tensor:
        seen.append(int(batch.shape[-1]))
        return batch

    out = run_segments(identity, x, plan, batch_size=3)["output"]
    assert seen == [300, 300, 100]
    assert torch.allclose(out, x, atol=1e-6)
    padded = DemucsPlan(1000, 300, 0.25)
    assert padded.segment_input(x, 4).shape[-1] == 300

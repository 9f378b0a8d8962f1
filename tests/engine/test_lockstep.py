"""Streamed runs side by side: pull adapter, equal-length blocks, windowed operations."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch

from audiotool.engine.lockstep import Windowed, lockstep, pulled
from audiotool.errors import EngineError
from audiotool.tasks.separate_ensemble import combine_stems


def _producer(x: torch.Tensor, sizes: list[int]) -> Callable[[Callable[..., None]], None]:
    def produce(sink: Callable[..., None]) -> None:
        at = 0
        for n in sizes:
            sink({"a": x[:, at : at + n]})
            at += n

    return produce


def test_pulled_streams_in_lockstep_give_the_whole_signals() -> None:
    x = torch.randn(2, 1000, generator=torch.Generator().manual_seed(0))
    streams = [
        pulled(_producer(x, [100] * 10)),
        pulled(_producer(2 * x, [333, 1, 400, 266])),
        pulled(_producer(3 * x, [1000])),
    ]
    steps = list(lockstep(streams))
    for k in range(3):
        got = torch.cat([step[k]["a"] for step in steps], dim=-1)
        assert torch.equal(got, (k + 1) * x)
    assert all(len({int(b["a"].shape[-1]) for b in step}) == 1 for step in steps)


def test_pulled_raises_the_producers_error_and_stops_when_closed() -> None:
    def bad(sink: Callable[..., None]) -> None:
        sink({"a": torch.zeros(1, 3)})
        raise ValueError("boom")

    it = pulled(bad)
    assert next(it)["a"].shape == (1, 3)
    with pytest.raises(ValueError, match="boom"):
        next(it)
    before = threading.active_count()
    endless = pulled(_producer(torch.zeros(1, 10**6), [10] * 10**5))
    next(endless)
    endless.close()  # the producer's thread ends at its next block
    assert threading.active_count() <= before


def test_lockstep_refuses_streams_of_different_lengths() -> None:
    x = torch.zeros(1, 100)
    with pytest.raises(EngineError, match="different lengths"):
        list(lockstep([pulled(_producer(x, [100])), pulled(_producer(x, [60]))]))


@pytest.mark.parametrize("method", ["max_spec", "min_spec"])
def test_windowed_spectral_combination_equals_the_whole_signal(method: str) -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 30000, generator=g), torch.randn(2, 30000, generator=g)
    whole = combine_stems([a, b], method)
    win = Windowed(lambda w: {"y": combine_stems([w["a"], w["b"]], method)}, 30000, 4096, align=512)
    parts = []
    for lo in range(0, 30000, 2999):
        out = win.push({"a": a[:, lo : lo + 2999], "b": b[:, lo : lo + 2999]})
        if out:
            parts.append(out["y"])
    got = torch.cat(parts, dim=-1)
    assert got.shape == whole.shape
    torch.testing.assert_close(got, whole, atol=1e-5, rtol=0)

"""Packing chunks of several signals into one forward: equal to each signal alone."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from audiotool.engine.overlap_add import OverlapAddProcessor
from audiotool.engine.packing import pack_key, run_packed
from audiotool.errors import EngineError


class RowWise:
    """A chunk model whose rows do not interact: a per-row gain from the query, a smoothing
    that reaches across the chunk; counts its forwards and their batch sizes."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, x: Tensor, query: Tensor) -> dict[str, Tensor]:
        self.batches.append(int(x.shape[0]))
        assert query.shape[0] == x.shape[0]
        smooth = torch.nn.functional.avg_pool1d(x, 5, stride=1, padding=2)
        gain = query.sum(-1)[:, None, None]
        return {"a": smooth * gain, "b": x - smooth}


@pytest.mark.parametrize("batch_size", [1, 3, 4, 16])
def test_packed_equals_each_signal_alone(batch_size: int) -> None:
    gen = torch.Generator().manual_seed(0)
    proc = OverlapAddProcessor(64, 32, 1)
    lengths = [10, 64, 100, 30, 200, 64]
    signals = [torch.randn(2, n, generator=gen) for n in lengths]
    queries = [torch.randn(1, 3, generator=gen) for _ in lengths]
    alone = [
        proc.process(RowWise(), x, batch_size, query=q)
        for x, q in zip(signals, queries, strict=True)
    ]
    model = RowWise()
    with torch.inference_mode():
        jobs = [proc.job(x, query=q) for x, q in zip(signals, queries, strict=True)]
        run_packed(model, jobs, batch_size)
        packed = [j.result() for j in jobs]
    for a, p in zip(alone, packed, strict=True):
        assert set(a) == set(p)
        for k in a:
            assert torch.equal(a[k], p[k])  # every chunk carries its own signal's query
    total = sum(j.n_chunks for j in jobs)
    assert sum(model.batches) == total
    assert len(model.batches) == -(-total // batch_size)  # full forwards across signals


def test_one_job_is_the_processor_itself() -> None:
    x = torch.randn(1, 300, generator=torch.Generator().manual_seed(1))
    q = torch.ones(1, 2)
    proc = OverlapAddProcessor(64, 48, 1)
    alone = RowWise()
    ref = proc.process(alone, x, 4, query=q)
    model = RowWise()
    with torch.inference_mode():
        job = proc.job(x, query=q)
        run_packed(model, [job], 4)
        out = job.result()
    assert model.batches == alone.batches
    assert all(torch.equal(ref[k], out[k]) for k in ref)


def test_streamed_jobs_pack_too() -> None:
    from audiotool.stream import tensor_span

    gen = torch.Generator().manual_seed(2)
    proc = OverlapAddProcessor(32, 16, 1)
    signals = [torch.randn(1, n, generator=gen) for n in (20, 32, 90)]
    q = torch.ones(1, 1)
    ref = [proc.process(RowWise(), x, 1, query=q)["a"] for x in signals]
    got: list[list[Tensor]] = [[] for _ in signals]
    with torch.inference_mode():
        jobs = [
            proc.stream_job(
                tensor_span(x), x.shape[-1], lambda b, i=i: got[i].append(b["a"]), query=q
            )
            for i, x in enumerate(signals)
        ]
        run_packed(RowWise(), jobs, 5)
    for r, parts in zip(ref, got, strict=True):
        assert torch.allclose(torch.cat(parts, -1), r, atol=1e-6)


def test_signals_of_other_shapes_do_not_share_a_forward() -> None:
    proc = OverlapAddProcessor(64, 32, 1)
    q = torch.ones(1, 2)
    mono = proc.job(torch.randn(1, 50), query=q)
    stereo = proc.job(torch.randn(2, 50), query=q)
    other_query = proc.job(torch.randn(1, 50), query=torch.ones(1, 3))
    assert pack_key(mono) != pack_key(stereo)
    assert pack_key(mono) != pack_key(other_query)
    assert pack_key(mono) == pack_key(proc.job(torch.randn(1, 90), query=torch.zeros(1, 2)))
    with pytest.raises(EngineError), torch.inference_mode():
        run_packed(RowWise(), [mono, stereo], 4)


def test_out_of_memory_halves_the_packed_batch() -> None:
    gen = torch.Generator().manual_seed(3)
    proc = OverlapAddProcessor(16, 8, 1)
    signals = [torch.randn(1, 16, generator=gen) for _ in range(5)]
    q = torch.ones(1, 1)
    ref = [proc.process(RowWise(), x, 1, query=q) for x in signals]
    inner = RowWise()

    def small_device(x: Tensor, query: Tensor) -> dict[str, Tensor]:
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return inner(x, query)

    with torch.inference_mode():
        jobs = [proc.job(x, query=q) for x in signals]
        run_packed(small_device, jobs, 8)
        out = [j.result() for j in jobs]
    assert max(inner.batches) == 2
    assert all(torch.equal(r["a"], o["a"]) for r, o in zip(ref, out, strict=True))

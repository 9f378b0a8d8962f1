from __future__ import annotations

import random

import pytest
import torch
from torch import Tensor

from audiotool.engine.overlap_add import (
    OverlapAddProcessor,
    fold_chunks,
    plan_chunks,
    taper_window,
    unfold_chunks,
)
from audiotool.errors import DeviceOutOfMemoryError, EngineError


def identity(x: Tensor) -> Tensor:
    return x.clone()


@pytest.mark.parametrize("channels", [1, 2])
def test_identity_reconstructs_random_lengths_and_hops(channels: int) -> None:
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    pairs = [(8, 8), (8, 4), (8, 3), (8, 1), (10, 7), (16, 5), (7, 2), (1, 1), (12, 6)]
    for chunk, hop in pairs:
        for length in [1, 2, chunk - 1, chunk, chunk + 1, rng.randint(1, 200), 257]:
            length = max(1, length)
            x = torch.randn(channels, length, generator=gen)
            proc = OverlapAddProcessor(chunk, hop, 1)
            y = proc.process(identity, x, batch_size=rng.randint(1, 5))["output"]
            assert y.shape == x.shape, (chunk, hop, length)
            assert float((y - x).abs().max()) < 1e-5, (chunk, hop, length)


def test_seconds_and_rate() -> None:
    proc = OverlapAddProcessor(0.5, 0.25, 16000)
    assert (proc.chunk, proc.hop) == (8000, 4000)
    with pytest.raises(EngineError):
        OverlapAddProcessor(0.5, 0.75, 16000)


def test_batch_consistency() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(2, 2, 9, padding=4)
    x = torch.randn(2, 3000)
    proc = OverlapAddProcessor(400, 150, 1)
    outs = [proc.process(conv, x, batch_size=b)["output"] for b in (1, 2, 3, 7, 64)]
    for y in outs[1:]:
        assert torch.allclose(y, outs[0], atol=1e-6)


def test_multi_stem_and_kwargs() -> None:
    seen: list[Tensor] = []

    def model(x: Tensor, *, query: Tensor, gain: float) -> dict[str, Tensor]:
        seen.append(query)
        return {"a": x * gain, "b": x * query[:, :1, None]}

    x = torch.randn(2, 500)
    proc = OverlapAddProcessor(64, 32, 1)
    out = proc.process(model, x, 4, query=torch.tensor([[3.0, 1.0]]), gain=2.0)
    assert set(out) == {"a", "b"}
    assert torch.allclose(out["a"], 2 * x, atol=1e-5)
    assert torch.allclose(out["b"], 3 * x, atol=1e-5)
    n = plan_chunks(500, 64, 32).n_chunks
    # mini-batches of 4 chunks (the last one smaller), each with the (1, D) query expanded to it
    assert [q.shape for q in seen] == [(min(4, n - i), 2) for i in range(0, n, 4)]


def test_multi_query_loop() -> None:
    def model(x: Tensor, *, query: Tensor) -> Tensor:
        return x * query.view(-1, 1, 1)

    x = torch.randn(1, 300)
    proc = OverlapAddProcessor(50, 20, 1)
    queries = torch.tensor([[0.5], [2.0], [-1.0]])
    outs = [proc.process(model, x, 3, query=q[None])["output"] for q in queries]
    for q, y in zip(queries, outs, strict=True):
        assert torch.allclose(y, x * q, atol=1e-5)


def test_other_output_rate_downsampled_frames() -> None:
    # "embedding" model: one frame per 10 samples (mean pooling), channels -> 3 features
    def frames(x: Tensor) -> Tensor:
        pooled = x.unfold(-1, 10, 10).mean(-1)  # (b, C, L/10)
        return pooled.repeat(1, 3, 1)

    x = torch.arange(1000.0).unsqueeze(0)
    proc = OverlapAddProcessor(200, 100, 1)
    y = proc.process(frames, x, 2)["output"]
    assert y.shape == (3, 100)
    expected = x.unfold(-1, 10, 10).mean(-1)
    assert torch.allclose(y[0], expected[0], atol=1e-3)


def test_other_output_rate_upsampled() -> None:
    def up(x: Tensor) -> Tensor:
        return x.repeat_interleave(3, dim=-1)

    x = torch.randn(2, 401)
    y = OverlapAddProcessor(40, 20, 1).process(up, x, 3)["output"]
    assert y.shape == (2, 1203)
    assert torch.allclose(y, x.repeat_interleave(3, dim=-1), atol=1e-5)


def test_incompatible_output_rate_is_clear_error() -> None:
    def frames(x: Tensor) -> Tensor:
        return x[..., ::7]

    with pytest.raises(EngineError, match="whole output samples"):
        OverlapAddProcessor(70, 30, 1).process(frames, torch.randn(1, 500), 2)


def test_reflect_padding_gives_real_context() -> None:
    # a model that reports the mean of its chunk: with zero padding the edges would drop
    # (1020 samples leave 30 samples of slack in the last chunk; with hop | chunk the padding
    # stays on the hop grid, so it all goes to the end)
    x = torch.ones(1, 1020)

    def mean_model(c: Tensor) -> Tensor:
        return c.mean(-1, keepdim=True).expand_as(c).contiguous()

    y = OverlapAddProcessor(100, 50, 1).process(mean_model, x, 4)["output"]
    assert torch.allclose(y, x, atol=1e-6)
    z = OverlapAddProcessor(100, 50, 1, pad_mode="constant").process(mean_model, x, 4)["output"]
    assert float(z[0, -1]) < 0.9  # zeros pull the edge down — what reflect avoids


@pytest.mark.parametrize(
    ("length", "chunk", "hop", "context"),
    [
        (1000, 100, 50, 0),
        (1020, 100, 50, 0),
        (7_938_000, 343_980, 257_985, 0),
        (5, 100, 50, 0),
        (1000, 100, 40, 10),
        (333, 64, 16, 8),
    ],
)
def test_no_more_chunks_than_a_plain_loop(length: int, chunk: int, hop: int, context: int) -> None:
    """Edge padding uses the last chunk's slack: as many chunks as a demucs-style loop whose
    chunks keep `context` samples of margin at both file ends."""
    plan = plan_chunks(length, chunk, hop, context)
    plain, start = 1, -context  # a plain loop: chunks every hop until one reaches the end
    while start + chunk < length + context:
        start += hop
        plain += 1
    assert plan.n_chunks == plain
    assert plan.pad_left >= context and plan.pad_right >= context
    assert plan.pad_left + length + plan.pad_right == (plan.n_chunks - 1) * hop + chunk


def test_bf16_accumulates_in_float32() -> None:
    x = torch.randn(2, 2000)
    y = OverlapAddProcessor(256, 100, 1).process(identity, x, 4, dtype=torch.bfloat16)["output"]
    assert y.dtype == torch.float32
    assert float((y - x).abs().max()) < 1e-5  # identity is exact even under autocast


def test_progress_callback() -> None:
    calls: list[tuple[int, int]] = []
    OverlapAddProcessor(10, 5, 1).process(
        identity, torch.randn(1, 100), 3, progress=lambda d, t: calls.append((d, t))
    )
    total = calls[-1][1]
    assert calls[-1][0] == total and [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert total == plan_chunks(100, 10, 5).n_chunks


def test_oom_backoff_does_not_recompute() -> None:
    processed: list[int] = []

    def model(x: Tensor) -> Tensor:
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        processed.append(x.shape[0])
        return x.clone()

    x = torch.randn(1, 5000)
    proc = OverlapAddProcessor(100, 50, 1)
    y = proc.process(model, x, 8)["output"]
    assert torch.allclose(y, x, atol=1e-5)
    assert sum(processed) == plan_chunks(5000, 100, 50).n_chunks  # each chunk exactly once


def test_oom_at_batch_one_is_typed_error() -> None:
    def model(x: Tensor) -> Tensor:
        raise RuntimeError("MPS backend out of memory")

    with pytest.raises(DeviceOutOfMemoryError, match="chunk-seconds"):
        OverlapAddProcessor(10, 5, 1).process(model, torch.randn(1, 50), 4)


def test_other_errors_propagate() -> None:
    def model(x: Tensor) -> Tensor:
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        OverlapAddProcessor(10, 5, 1).process(model, torch.randn(1, 50), 4)


def test_window_properties() -> None:
    w = taper_window(10, 5)
    assert float(w.min()) > 0
    # two overlapped tapers sum to one
    assert torch.allclose(w[:5] + w[5:], torch.ones(5))  # tail of one chunk + head of next
    assert torch.equal(taper_window(6, 0), torch.ones(6))


def test_unfold_is_a_view_and_fold_inverts_it() -> None:
    x = torch.randn(2, 103)
    plan = plan_chunks(103, 20, 10)
    chunks = unfold_chunks(x, plan, "constant")
    assert chunks.shape == (2, plan.n_chunks, 20)
    ones = torch.ones(20)
    folded = fold_chunks(chunks.permute(1, 0, 2), 10, ones)
    counts = fold_chunks(torch.ones(plan.n_chunks, 1, 20), 10, ones)
    rebuilt = (folded / counts)[:, plan.pad_left : plan.pad_left + 103]
    assert torch.allclose(rebuilt, x)


def test_context_margins_make_chunked_equal_whole_for_bounded_models() -> None:
    from audiotool.models.separation import build_model, tiny_config

    torch.manual_seed(0)
    model = build_model(tiny_config().replace(time_model="conv")).eval()
    r = model.receptive_field_samples
    assert r is not None
    x = torch.randn(2, 12800)
    with torch.no_grad():
        whole = model(x[None])
    # chunk, hop and context on the STFT hop grid (64); context >= receptive field
    proc = OverlapAddProcessor(64 * 60, 64 * 20, 1, context_seconds=64 * 14)
    assert proc.context >= r
    out = proc.process(model, x, 3)
    inner = slice(r, -r)  # the file edges see reflect padding instead of the STFT's own
    for stem in out:
        assert torch.allclose(out[stem][:, inner], whole[stem][0][:, inner], atol=1e-5), stem
    plain = OverlapAddProcessor(64 * 60, 64 * 20, 1).process(model, x, 3)
    assert not torch.allclose(plain["vocals"][:, inner], whole["vocals"][0][:, inner], atol=1e-5)


def test_context_identity_any_length() -> None:
    for length in (1, 50, 333, 1000):
        x = torch.randn(1, length)
        y = OverlapAddProcessor(40, 10, 1, context_seconds=8).process(identity, x, 2)["output"]
        assert torch.allclose(y, x, atol=1e-5)
    with pytest.raises(EngineError, match="context"):
        OverlapAddProcessor(40, 30, 1, context_seconds=8)


@pytest.mark.parametrize(
    ("length", "chunk", "hop"), [(1000, 100, 50), (1237, 128, 40), (77, 64, 64)]
)
def test_process_equals_the_unfold_fold_formulation(length: int, chunk: int, hop: int) -> None:
    """The in-place accumulation is the seed's unfold -> model -> F.fold / summed window."""
    torch.manual_seed(0)
    x = torch.randn(2, length)

    def model(c: Tensor) -> Tensor:  # chunk-dependent, so chunk boundaries matter
        return c * c.mean(-1, keepdim=True) + c.flip(-1)

    got = OverlapAddProcessor(chunk, hop, 1).process(model, x, 3)["output"]
    plan = plan_chunks(length, chunk, hop)
    chunks = unfold_chunks(x, plan, "reflect").permute(1, 0, 2)  # (N, C, L)
    window = taper_window(chunk, min(chunk - hop, chunk // 2))
    num = fold_chunks(model(chunks), hop, window)
    den = fold_chunks(torch.ones(plan.n_chunks, 1, chunk), hop, window)
    want = (num / den)[:, plan.pad_left : plan.pad_left + length]
    assert torch.allclose(got, want, atol=1e-5)


def test_frame_chunking_snaps_to_frames_and_shrinks_for_short_signals() -> None:
    from audiotool.engine.overlap_add import frame_chunking

    # 320-sample frames at 16 kHz (20 ms): 5.13 s -> 5.12 s, hop 2.57 -> 2.56 (whole frames)
    chunk, hop = frame_chunking(160000, 16000, 320, 5.13, 2.57)
    assert (round(chunk, 6), round(hop, 6)) == (5.12, 2.56)
    # a hop longer than the chunk is cut to the chunk; at least one frame each
    assert frame_chunking(160000, 16000, 320, 1.0, 3.0) == pytest.approx((1.0, 1.0))
    assert frame_chunking(160000, 16000, 320, 0.0, 0.0) == pytest.approx((0.02, 0.02))
    # a 4.01 s signal fits one 5.12 s chunk: one chunk of 4.02 s (whole frames), not 5.12 s
    assert frame_chunking(64160, 16000, 320, 5.12, 2.56) == pytest.approx((4.02, 4.02))

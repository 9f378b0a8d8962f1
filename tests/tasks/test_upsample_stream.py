"""`upsample` of long files in a stream (issue #17): the streamed path writes what the in-memory
path writes, and never holds a signal of the file's length.

Tolerance: the streamed path does the same float operations on the same values (blockwise
low-pass with a 100-period margin, per-span seeds, the same crossfade weights and order), so
the outputs are equal to float round-off: 1e-5 absolute on float32 files (they came out
bit-identical when this was written).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

import audiotool.tasks.upsample_stream as us
from audiotool.cli.app import app
from audiotool.engine.chunking import crossfade_stitch, crossfade_weights, plan_spans
from audiotool.engine.stitching import BlockCache, LazyStitch, span_weight

runner = CliRunner()
# one torch thread: the CPU kernels' rounding depends on the thread count, and Griffin-Lim's
# phase retrieval turns that rounding into a different (equally valid) phase of the generated
# band (measured: kept band equal to -118 dB, generated band -9 dB apart for 1 vs 2 threads);
# with the same thread count the two paths are bit-identical
FAST = ["--steps", "1", "--chunk-seconds", "1.28", "--overlap-seconds", "0.16", "--threads", "1"]
RAW = ["--bit-depth", "32f", "--clip", "none", "-q", "--json"]


def _voice(path: Path, seconds: float, rate: int, gains: tuple[float, ...]) -> Path:
    """Harmonics with a slow envelope and a little noise, one scaled copy per channel."""
    t = np.arange(int(seconds * rate)) / rate
    x = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 20)) * 0.3
    x = x * (0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
    x = x + 0.01 * np.random.default_rng(0).standard_normal(len(t))
    sf.write(str(path), np.stack([g * x for g in gains], 1).astype(np.float32), rate, "FLOAT")
    return path


def _upsample(src: Path, out: Path, extra: list[str]) -> dict[str, Any]:
    r = runner.invoke(app, ["upsample", str(src), "-o", str(out), *FAST, *RAW, *extra])
    assert r.exit_code == 0, r.output
    report = r.output[r.output.index("{") :]  # after a warning on stderr, if any
    details: dict[str, Any] = json.loads(report)["files"][0]["details"]
    return details


@pytest.mark.parametrize(
    ("gains", "extra"),
    [
        ((1.0, 0.5, 1.0), []),  # 3 channels, two identical; no limiting
        ((3.0,), ["--seed", "3"]),  # loud: the limiter's look-ahead crosses block edges
    ],
)
def test_streamed_upsample_equals_in_memory(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gains: tuple[float, ...],
    extra: list[str],
) -> None:
    src = _voice(tmp_path / "x.wav", 6.0, 8000, gains)
    # small blocks: every stage crosses several block edges on a short file
    monkeypatch.setattr(us, "WAVE_BLOCK", 1 << 15)
    monkeypatch.setattr(us, "MEL_BLOCK", 96)
    monkeypatch.setattr(us, "STAT_FRAMES", 40)
    for where in ("upsample", "_upsample_plan"):  # a pooled global context
        monkeypatch.setattr(f"audiotool.tasks.{where}.MAX_CONTEXT_FRAMES", 250)
    mem = _upsample(src, tmp_path / "mem.wav", extra)
    monkeypatch.setenv("AUDIOTOOL_STREAM_SECONDS", "1")
    st = _upsample(src, tmp_path / "st.wav", extra)
    assert st.pop("streamed") is True and "streamed" not in mem
    assert st == mem  # cutoff, chunks, limiter depth
    a, ra = sf.read(str(tmp_path / "mem.wav"), dtype="float32", always_2d=True)
    b, rb = sf.read(str(tmp_path / "st.wav"), dtype="float32", always_2d=True)
    assert ra == rb == 48000 and a.shape == b.shape == (288000, len(gains))
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
    if len(gains) == 3:
        np.testing.assert_array_equal(b[:, 0], b[:, 2])  # identical channels stay identical
    if extra:
        assert mem["limited_db"] < 0  # the limiter did work


def test_streamed_upsample_holds_no_whole_file_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 40 s 8 kHz file (1.92 M samples at 48 kHz) in blocks of 32768: no stage ever sees a
    signal longer than a block plus its margins, and the output arrives in many writes."""
    src = _voice(tmp_path / "long.wav", 40.0, 8000, (1.0,))
    t48 = 40 * 48000
    monkeypatch.setattr(us, "WAVE_BLOCK", 1 << 15)
    monkeypatch.setattr(us, "MEL_BLOCK", 128)
    monkeypatch.setattr(us, "STAT_FRAMES", 64)
    seen: dict[str, int] = {}

    def spy(name: str, fn: Callable[..., Any], length: Callable[..., int]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            seen[name] = max(seen.get(name, 0), length(*args, **kwargs))
            return fn(*args, **kwargs)

        return wrapped

    import audiotool.dsp as dsp
    import audiotool.stream as stream
    from audiotool.features import AudioSRMel
    from audiotool.models.latent_diffusion import LatentDiffusion

    n = lambda x, *a, **k: int(x.shape[-1])  # noqa: E731
    monkeypatch.setattr(dsp, "lowpass", spy("lowpass", dsp.lowpass, n))
    monkeypatch.setattr(dsp, "split_bands", spy("split", dsp.split_bands, n))
    monkeypatch.setattr(
        LatentDiffusion, "vocode", spy("vocode", LatentDiffusion.vocode, lambda s, m: m.shape[1])
    )
    monkeypatch.setattr(
        AudioSRMel, "forward", spy("mel", AudioSRMel.forward, lambda s, w: w.shape[-1])
    )
    monkeypatch.setattr(
        stream.AudioSource, "read", spy("read", stream.AudioSource.read, lambda s, lo, hi: hi - lo)
    )
    writes: list[int] = []
    write = stream.AudioSink.write

    def counted(self: stream.AudioSink, block: torch.Tensor) -> None:
        writes.append(int(block.shape[-1]))
        write(self, block)

    monkeypatch.setattr(stream.AudioSink, "write", counted)
    monkeypatch.setenv("AUDIOTOOL_STREAM_SECONDS", "10")
    details = _upsample(src, tmp_path / "o.wav", [])
    assert details["streamed"] and details["generated"]
    assert sf.info(str(tmp_path / "o.wav")).frames == t48
    bound = (1 << 15) + 2 * 8192  # a block and its margins
    assert 0 < seen["lowpass"] <= bound and 0 < seen["split"] <= bound
    assert seen["mel"] <= 128 * 480 + 4 * 480  # one block of frames + the mel's context
    assert seen["vocode"] <= 128  # mel frames: one chunk
    # the input (8 kHz) in its channel pass's blocks at most; the 48 kHz side file in blocks
    assert seen["read"] <= stream.BLOCK < 40 * 8000
    assert len(writes) >= 40 and max(writes) <= 1 << 15


def test_lazy_stitch_equals_crossfade_stitch() -> None:
    spans = plan_spans(1000, 128, 40)
    ys = [
        torch.randn(2, s.length, generator=torch.Generator().manual_seed(i))
        for i, s in enumerate(spans)
    ]
    whole = crossfade_stitch(ys, spans, 1000, dim=1)
    weights = crossfade_weights(spans)
    for i in range(len(spans)):
        assert torch.equal(span_weight(spans, i), weights[i])
    calls: list[list[int]] = []

    def compute(idx: list[int]) -> list[torch.Tensor]:
        calls.append(idx)
        return [ys[i] for i in idx]

    lazy = LazyStitch(spans, 1000, compute, dim=1, group=3)
    got = torch.cat([lazy(lo, min(1000, lo + 70)) for lo in range(0, 1000, 70)], dim=1)
    assert torch.equal(got, whole)
    assert lazy.computed == len(spans) and all(len(c) <= 3 for c in calls)
    assert len(lazy._cache) <= 4  # spans behind the reader are dropped


def test_block_cache_computes_each_block_once() -> None:
    x = torch.arange(100.0)[None]
    blocks: list[tuple[int, int]] = []

    def fn(lo: int, hi: int) -> torch.Tensor:
        blocks.append((lo, hi))
        return x[:, lo:hi] * 2

    cache = BlockCache(fn, 100, 16, keep=2)
    for lo in range(0, 95, 5):
        assert torch.equal(cache(lo, lo + 5), x[:, lo : lo + 5] * 2)
    assert torch.equal(cache(90, 100), x[:, 90:] * 2)
    assert blocks == [(k, min(k + 16, 100)) for k in range(0, 100, 16)]


@pytest.mark.parametrize("extra", [[], ["--sr", "44100"], ["--sr", "44100", "--cutoff", "3000"]])
def test_streamed_upsample_resampling_only_and_output_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str]
) -> None:
    """A full-band 48 kHz input has nothing to generate (resampled only); ``--sr`` and
    ``--cutoff`` take the same paths streamed and in memory."""
    rng = np.random.default_rng(1)
    src = tmp_path / "full.wav"
    sf.write(str(src), (0.1 * rng.standard_normal((4 * 48000, 2))).astype(np.float32), 48000)
    monkeypatch.setattr(us, "WAVE_BLOCK", 1 << 15)
    mem = _upsample(src, tmp_path / "mem.wav", extra)
    monkeypatch.setenv("AUDIOTOOL_STREAM_SECONDS", "1")
    st = _upsample(src, tmp_path / "st.wav", extra)
    assert st.pop("streamed") is True and st == mem
    assert mem["generated"] is ("--cutoff" in extra)
    a, ra = sf.read(str(tmp_path / "mem.wav"), dtype="float32")
    b, rb = sf.read(str(tmp_path / "st.wav"), dtype="float32")
    assert ra == rb and a.shape == b.shape == (4 * ra, 2)
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)

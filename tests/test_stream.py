"""Long files stream (issue #17): block reads, span / stream resampling, streamed engines and
tasks equal to the in-memory path, and memory that does not grow with the duration."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from audiotool.audio import resample
from audiotool.cli.app import app
from audiotool.engine.overlap_add import OverlapAddProcessor
from audiotool.engine.segments import DemucsPlan, RoformerPlan, run_segments, stream_segments
from audiotool.stream import AudioSource, Resampled, StreamResampler, tensor_span

runner = CliRunner()


@pytest.mark.parametrize("rates", [(8000, 44100), (44100, 16000), (48000, 44100), (8000, 8000)])
def test_span_and_stream_resampling_equal_whole_file(rates: tuple[int, int]) -> None:
    orig, new = rates
    x = torch.randn(2, 30001, generator=torch.Generator().manual_seed(0))
    full = resample(x, orig, new)
    span = Resampled(tensor_span(x), x.shape[-1], orig, new)
    assert span.length == full.shape[-1]
    for lo, hi in [(0, 500), (123, span.length // 2), (span.length - 700, span.length)]:
        torch.testing.assert_close(span(lo, hi), full[:, lo:hi], atol=1e-6, rtol=0)
    stream = StreamResampler(x.shape[-1], orig, new)
    got = torch.cat([stream.push(x[:, lo : lo + 4999]) for lo in range(0, x.shape[-1], 4999)], -1)
    torch.testing.assert_close(got, full, atol=1e-6, rtol=0)


def _model(b: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"a": torch.tanh(3 * b) + b.roll(1, -1), "half": 2 * b[..., ::2]}


@pytest.mark.parametrize(("length", "hop", "context"), [(10001, 0.3, 0.1), (700, 0.5, 0.0)])
def test_overlap_add_stream_equals_process(length: int, hop: float, context: float) -> None:
    x = torch.randn(2, length, generator=torch.Generator().manual_seed(1))
    proc = OverlapAddProcessor(1.0, hop, 1000, context_seconds=context)
    ref = proc.process(_model, x, 3)
    parts: dict[str, list[torch.Tensor]] = {}
    proc.stream(
        _model,
        tensor_span(x),
        length,
        lambda d: [parts.setdefault(k, []).append(v) for k, v in d.items()],
        3,
    )
    for key, want in ref.items():
        torch.testing.assert_close(torch.cat(parts[key], -1), want, atol=1e-6, rtol=0)


def _collect(parts: list[torch.Tensor]) -> Callable[[dict[str, torch.Tensor]], None]:
    return lambda d: parts.append(d["a"])


def test_segment_schemes_stream_equal_run_segments() -> None:
    x = torch.randn(2, 12345, generator=torch.Generator().manual_seed(2))
    model = lambda b: {"a": torch.tanh(3 * b)}  # noqa: E731
    for plan in (
        DemucsPlan(12345, 1000, 0.25),
        DemucsPlan(12345, 1000, 0.9),
        RoformerPlan(12345, chunk=800, step=200),
    ):
        ref = run_segments(model, x, plan, batch_size=3)["a"]
        parts: list[torch.Tensor] = []
        stream_segments(model, tensor_span(x), plan, _collect(parts), batch_size=3)
        torch.testing.assert_close(torch.cat(parts, -1), ref, atol=1e-6, rtol=0)


def _mix(path: Path, seconds: float, rate: int = 8000, channels: int = 2) -> Path:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t)[:, None] + 0.05 * rng.standard_normal((t.size, channels))
    sf.write(str(path), x.astype(np.float32), rate, subtype="PCM_16")
    return path


@pytest.mark.parametrize(
    ("command", "extra", "outputs"),
    [
        ("separate", ["--stems", "vocals", "--residual"], ["x/vocals.wav", "x/no_vocals.wav"]),
        # test-time shifts: the passes stream side by side (issue #17)
        ("separate", ["--stems", "bass", "--shifts", "2", "--mixture-consistent"], ["x/bass.wav"]),
        ("reconstruct", [], ["x_reconstruct.wav"]),
    ],
)
def test_streamed_commands_equal_in_memory(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    extra: list[str],
    outputs: list[str],
) -> None:
    src = _mix(tmp_path / "x.wav", 7.0)
    mem = runner.invoke(app, [command, str(src), "-o", str(tmp_path / "mem"), "-q", *extra])
    assert mem.exit_code == 0, mem.output
    monkeypatch.setenv("AUDIOTOOL_STREAM_SECONDS", "0")
    st = runner.invoke(app, [command, str(src), "-o", str(tmp_path / "st"), "-q", *extra])
    assert st.exit_code == 0, st.output
    for name in outputs:
        a, ra = sf.read(str(tmp_path / "mem" / name))
        b, rb = sf.read(str(tmp_path / "st" / name))
        assert ra == rb == 8000 and a.shape == b.shape == (56000, 2)
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_streamed_info_and_embed_equal_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _mix(tmp_path / "x.wav", 7.0)
    a = runner.invoke(app, ["info", str(src), "--json"])
    emb_a = runner.invoke(app, ["embed", str(src), "-o", str(tmp_path / "a.npz"), "-q"])
    monkeypatch.setenv("AUDIOTOOL_STREAM_SECONDS", "0")
    b = runner.invoke(app, ["info", str(src), "--json"])
    emb_b = runner.invoke(app, ["embed", str(src), "-o", str(tmp_path / "b.npz"), "-q"])
    assert a.exit_code == b.exit_code == emb_a.exit_code == emb_b.exit_code == 0
    details = [json.loads(r.output)["files"][0]["details"] for r in (a, b)]
    assert details[0] == details[1]
    ea, eb = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    np.testing.assert_allclose(ea["segments"], eb["segments"], atol=1e-5)


def test_source_reads_blocks_and_rejects_nan(tmp_path: Path) -> None:
    data = np.zeros((1000, 1), np.float32)
    data[700] = np.nan
    sf.write(str(tmp_path / "n.wav"), data, 8000, subtype="FLOAT")
    with AudioSource(tmp_path / "n.wav") as src:
        assert src.read(-5, 10).shape == (1, 15)
        with pytest.raises(Exception, match="NaN"):
            src.read(600, 800)


def _peak_rss_mib(argv: list[str]) -> float:
    code = (
        "import resource, subprocess, sys\n"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1]) / 1024


def test_info_memory_does_not_grow_with_duration(tmp_path: Path) -> None:
    """A 40-minute 8 kHz stereo file (77 MB of float32 samples, a whole-file float64 STFT
    several times that) is described within 60 MiB of a 10-second one."""
    rate, long = 8000, tmp_path / "long.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(long), "w", rate, 2, "PCM_16") as fh:
        for _ in range(40):
            fh.write((0.01 * rng.standard_normal((60 * rate, 2))).astype(np.float32))
    short = _mix(tmp_path / "short.wav", 10.0)
    cmd = [sys.executable, "-m", "audiotool", "info"]
    small = _peak_rss_mib([*cmd, str(short)])
    big = _peak_rss_mib([*cmd, str(long)])
    assert big < small + 60, (small, big)

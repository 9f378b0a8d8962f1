"""`info`: header facts, levels and effective bandwidth of audio files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiotool.paths import ExpandedInputs
from audiotool.progress import Progress
from audiotool.tasks._batch import (
    BatchReport,
    OutputOptions,
    ProcessFn,
    Produced,
    ScaleOptions,
    Streaming,
    WorkItem,
    run_files,
)

if TYPE_CHECKING:
    from audiotool.audio import AudioData
    from audiotool.stream import AudioSource


def describe_file(path: Path) -> dict[str, Any]:
    """Rate, channels, frames, duration, format, subtype, peak / RMS (dBFS) and bandwidth (Hz).

    The bandwidth is :func:`audiotool.dsp.estimate_cutoff` over all channels: the highest
    frequency with real content. A value well below the Nyquist frequency (``rate / 2``) means
    the file was band-limited (low-rate source, lossy codec) and upsampling can restore it.
    """
    from audiotool.audio import read_audio

    return describe_audio(read_audio(path))


def describe_audio(audio: AudioData) -> dict[str, Any]:
    """:func:`describe_file` of audio already read."""
    from audiotool.audio import peak, rms, to_db
    from audiotool.dsp import estimate_cutoff

    x = audio.samples
    return {
        "sample_rate": audio.sample_rate,
        "channels": audio.channels,
        "frames": audio.frames,
        "duration": round(audio.duration, 6),
        "format": audio.format,
        "subtype": audio.subtype,
        "peak_dbfs": round(to_db(peak(x)), 2),
        "rms_dbfs": round(to_db(rms(x)), 2),
        "bandwidth_hz": round(float(estimate_cutoff(x, audio.sample_rate)), 1),
        "nyquist_hz": audio.sample_rate / 2,
    }


def describe_source(source: AudioSource) -> dict[str, Any]:
    """:func:`describe_audio` of a file read in blocks (peak, RMS and the spectrum of the
    bandwidth estimate in one streaming pass each; memory bounded by the block)."""
    from audiotool.audio import to_db
    from audiotool.dsp import estimate_cutoff_from_spectrum
    from audiotool.stream import levels, long_term_spectrum

    top, level = levels(source.blocks())
    freqs, power = long_term_spectrum(source.read, source.frames, source.sample_rate)
    return {
        "sample_rate": source.sample_rate,
        "channels": source.channels,
        "frames": source.frames,
        "duration": round(source.duration, 6),
        "format": source.format,
        "subtype": source.subtype,
        "peak_dbfs": round(to_db(top), 2),
        "rms_dbfs": round(to_db(level), 2),
        "bandwidth_hz": round(estimate_cutoff_from_spectrum(freqs, power, source.sample_rate), 1),
        "nyquist_hz": source.sample_rate / 2,
    }


def start_info(progress: Progress | None) -> ProcessFn:
    """The process function of :func:`info_batch` (no model to load; long files stream)."""
    return Streaming(_describe, _describe_stream)


def _describe_stream(item: WorkItem, source: AudioSource) -> Produced:
    return Produced(details=describe_source(source))


def _describe(item: WorkItem, audio: AudioData) -> Produced:
    return Produced(details=describe_audio(audio))


def info_batch(
    inputs: ExpandedInputs,
    *,
    fail_fast: bool = False,
    progress: Progress | None = None,
    scale: ScaleOptions | None = None,
) -> BatchReport:
    """:func:`describe_file` over a batch; unreadable files are reported, not fatal."""
    return run_files(
        "info",
        inputs,
        targets_for=None,
        start=start_info,
        output=OutputOptions(fail_fast=fail_fast),
        progress=progress,
        scale=scale,
    )

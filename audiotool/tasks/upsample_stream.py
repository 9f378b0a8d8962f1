"""`upsample` of a long file in a stream: memory bounded by the chunk, not the duration.

The same pipeline as :func:`audiotool.tasks.upsample.upsample_tensor`, with every whole-file
step replaced by a blockwise one that gives the same values:

1. distinct channels (a pass comparing the channels block by block), cutoff from the long-term
   spectrum accumulated block by block (:func:`audiotool.stream.long_term_spectrum`);
2. the input at 48 kHz is read on demand (:class:`audiotool.stream.Resampled`); the
   conditioning low-pass runs on blocks with a margin of 100 periods of the cutoff on both
   sides (the zero-phase IIR filter's response has decayed below 1e-15 there);
3. the conditioning mel is computed per block of frames from the low-passed wave (with the
   mel's reflect padding at the file's edges only); the global encoder's input, the mel
   averaged over time to at most ``MAX_CONTEXT_FRAMES`` frames, is pooled block by block;
4. VAE encoding, diffusion (:class:`audiotool.engine.diffusion.ChunkSampler`: the same spans
   and per-span seeds as :func:`~audiotool.engine.diffusion.sample_chunked`), decoding and
   vocoding are :class:`audiotool.engine.stitching.LazyStitch` readers chained together: the
   wave is read block by block, each reader computing the chunks it needs (diffusion a few
   spans at a time) and dropping those behind it. The 48 kHz wave goes to a float32 side file
   (``.TMP.wave.f32.tmp`` beside the output's temporary file);
5. the band split's whole-file statistics (the level match of the generated band and the
   reference's long-term spectrum, :class:`audiotool.dsp.BandStats`) are summed over the STFT
   frames of the input and of the side file; the split then runs on blocks with a 4096-sample
   margin, resampled to the output rate (:class:`audiotool.stream.StreamResampler`), the
   look-ahead limiter runs on blocks with twice its window as margin, and finished blocks are
   written (:class:`audiotool.stream.AudioSink`).

The output equals the in-memory path's up to float round-off (the low-pass's block edges
differ from the whole-file filter at ~1e-9, which Griffin-Lim's phase retrieval may enlarge;
see ``tests/tasks/test_upsample_stream.py`` for the tolerance).
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from audiotool.errors import UsageError
from audiotool.progress import NullProgress, Progress

if TYPE_CHECKING:
    from audiotool.models.latent_diffusion import LatentDiffusion, LatentDiffusionConfig
    from audiotool.stream import AudioSource, Resampled, Span
    from audiotool.tasks._items import OutputOptions
    from audiotool.tasks.common import Runtime
    from audiotool.tasks.upsample import UpsampleOptions

log = logging.getLogger(__name__)

#: mel frames per block of the conditioning mel
MEL_BLOCK = 1024
#: samples per block of the 48 kHz low-pass, of the band split, and of the side file's reads
WAVE_BLOCK = 1 << 18
#: STFT frames per block of the band statistics
STAT_FRAMES = 512
#: margin of a band-split block (a multiple of the split's hop, at least n_fft / 2 + hop)
SPLIT_MARGIN = 4096
#: the suffix of the 48 kHz side file (after the output's temporary file name)
WAVE_SUFFIX = ".wave.f32.tmp"


def wave_side_file(tmp: Path) -> Path:
    """The float32 side file of ``tmp`` holding the vocoded 48 kHz wave."""
    from audiotool.paths import side_file

    return side_file(tmp, WAVE_SUFFIX)


def unique_channels(source: AudioSource) -> tuple[list[int], list[int]]:
    """:func:`audiotool.tasks.upsample._unique_channels` of a file read in blocks."""
    c = source.channels
    same = [[True] * c for _ in range(c)]
    for _, x in source.blocks():
        for i in range(c):
            for j in range(i):
                if same[i][j] and not torch.equal(x[i], x[j]):
                    same[i][j] = False
    unique: list[int] = []
    inverse: list[int] = []
    for i in range(c):
        for k, u in enumerate(unique):
            if same[i][u]:
                inverse.append(k)
                break
        else:
            unique.append(i)
            inverse.append(len(unique) - 1)
    return unique, inverse


def lowpass_margin(rate: int, cutoff: float) -> int:
    """Samples on each side of a low-pass block: 100 periods of the cutoff (at least 4096)."""
    return max(4096, int(math.ceil(100 * rate / max(cutoff, 1.0))))


def blockwise_lowpass(read: Span, length: int, rate: int, cutoff: float) -> Span:
    """:func:`audiotool.dsp.lowpass` of a signal of ``length`` read through ``read``, for the
    block ``[lo, hi)``, from the block and :func:`lowpass_margin` on each side (the whole
    signal's edges where the block reaches them)."""
    from audiotool.dsp import lowpass

    margin = lowpass_margin(rate, cutoff)

    def block(lo: int, hi: int) -> Tensor:
        a, b = max(0, lo - margin), min(length, hi + margin)
        return lowpass(read(a, b), rate, cutoff)[:, lo - a : hi - a]

    return block


def _mapped(read: Span, idx: Tensor) -> Tensor:
    """``signal[:, idx]`` from one read of ``[idx.min(), idx.max() + 1)``."""
    lo, hi = int(idx.min()), int(idx.max()) + 1
    return read(lo, hi).index_select(-1, (idx - lo).to(torch.long))


def reflect_index(lo: int, hi: int, length: int) -> Tensor:
    """Indices ``[lo, hi)`` reflected into ``[0, length)`` at both ends (edge sample not
    repeated, as ``F.pad(mode="reflect")`` and ``_mirror_pad`` pad)."""
    period = max(1, 2 * length - 2)
    i = torch.arange(lo, hi) % period
    return torch.where(i < length, i, period - i)


def stream_upsample(
    model: LatentDiffusion,
    config: LatentDiffusionConfig,
    source: AudioSource,
    tmp: Path,
    final: Path,
    *,
    options: UpsampleOptions,
    runtime: Runtime,
    output: OutputOptions,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Upsample ``source`` into ``tmp`` (final name ``final``) block by block; see the module
    docstring. Returns the details :func:`~audiotool.tasks.upsample.start_upsampler` reports.
    """
    from audiotool.audio import fit_length
    from audiotool.dsp import estimate_cutoff_from_spectrum
    from audiotool.stream import (
        Resampled,
        long_term_spectrum,
        mapped_span,
        zero_outside,
    )
    from audiotool.tasks._upsample_plan import FULL_BAND_FRACTION

    progress = progress or NullProgress()
    sr, length, rate = source.sample_rate, source.frames, config.sample_rate
    out_rate = options.output_rate
    out_len = int(round(length * out_rate / sr))
    nyquist = rate / 2
    unique, inverse = unique_channels(source)
    x48 = Resampled(mapped_span(source.read, lambda x: x[unique]), length, sr, rate)
    if options.cutoff is not None:
        if not 0 < options.cutoff < nyquist:
            raise UsageError(f"--cutoff must be between 0 and {nyquist:g} Hz, got {options.cutoff}")
        cutoff = float(options.cutoff)
    else:
        freqs, power = long_term_spectrum(source.read, length, sr)
        cutoff = min(estimate_cutoff_from_spectrum(freqs, power, sr), sr / 2)
    details: dict[str, Any] = {
        "input_rate": sr,
        "output_rate": out_rate,
        "channels": source.channels,
        "duration": round(source.duration, 3),
        "cutoff_hz": round(cutoff, 1),
        "streamed": True,
    }
    sink = output.sink(tmp, out_rate, source.channels, name=final)
    try:
        if cutoff >= FULL_BAND_FRACTION * nyquist or cutoff <= 0:
            log.warning(
                "content already reaches %.0f Hz: nothing to generate, resampling only", cutoff
            )
            out = Resampled(zero_outside(x48, x48.length), x48.length, rate, out_rate)
            for lo in range(0, out_len, WAVE_BLOCK):
                hi = min(out_len, lo + WAVE_BLOCK)
                block = out(lo, min(hi, out.length)) if lo < out.length else None
                y = fit_length(block, hi - lo) if block is not None else None
                if y is None:
                    y = torch.zeros(len(unique), hi - lo)
                sink.write(y[inverse])
            details.update(generated=False, chunks=0, limited_db=0.0)
        else:
            side = wave_side_file(tmp)
            try:
                chunks = _generate(
                    model,
                    config,
                    x48,
                    cutoff,
                    len(unique),
                    side,
                    options=options,
                    runtime=runtime,
                    progress=progress,
                )
                limit_db = _finish(x48, side, cutoff, rate, out_len, sink, inverse, options=options)
            finally:
                with contextlib.suppress(OSError):
                    side.unlink()
            details.update(generated=True, chunks=chunks, limited_db=round(limit_db, 2))
        sink.close()
    finally:
        sink.discard()
    return details


def _generate(
    model: LatentDiffusion,
    config: LatentDiffusionConfig,
    x48: Resampled,
    cutoff: float,
    items: int,
    side: Path,
    *,
    options: UpsampleOptions,
    runtime: Runtime,
    progress: Progress,
) -> int:
    """Steps 2-4: write the vocoded wave ``(items, t48)`` to ``side``; returns the number of
    diffusion chunks (all items)."""
    import soundfile as sf

    from audiotool.dsp import mel_bin_for_frequency, replace_low_mel_bins
    from audiotool.engine.chunking import Span, plan_spans
    from audiotool.engine.cuda_graphs import use_cuda_graphs
    from audiotool.engine.diffusion import ChunkSampler
    from audiotool.engine.stitching import BlockCache, LazyStitch
    from audiotool.progress import chunk_progress
    from audiotool.tasks._upsample_plan import (
        EDGE_FRAMES,
        MAX_CONTEXT_FRAMES,
        StepBar,
        sampling_plan,
    )

    plan = sampling_plan(config, options)
    rate, hop = config.sample_rate, config.hop
    t48 = x48.length
    fps = rate // hop
    multiple, factor = model.frame_multiple, model.latent_factor
    frames = math.ceil(math.ceil(t48 / hop) / multiple) * multiple
    padded_len = frames * hop
    cond_wave = BlockCache(blockwise_lowpass(x48, t48, rate, cutoff), t48, WAVE_BLOCK, keep=4)

    def padded(lo: int, hi: int) -> Tensor:
        """The conditioning wave mirror-padded to ``padded_len``, reflect-extended beyond."""
        outer = reflect_index(lo, hi, padded_len)
        inner = torch.where(outer < t48, outer, 2 * (t48 - 1) - outer)
        return _mapped(cond_wave, inner)

    ext = -(-((config.n_fft - hop) // 2) // hop)  # frames of context for the mel's padding

    def mel_block(n0: int, n1: int) -> Tensor:
        with torch.inference_mode():
            wave = padded((n0 - ext) * hop, (n1 + ext) * hop).to(runtime.device)
            return model.mel(wave)[:, ext : ext + n1 - n0]  # (C, n, M)

    group = max(1, runtime.batch_size)
    mel = BlockCache(mel_block, frames, MEL_BLOCK, keep=group + 8, dim=1)
    chunk_frames = max(multiple, int(round(plan.chunk_s * fps)) // multiple * multiple)
    overlap_frames = int(round(plan.overlap_s * fps)) // factor * factor
    lat_chunk, lat_overlap = chunk_frames // factor, overlap_frames // factor
    lat_len = frames // factor

    with torch.inference_mode():
        context: dict[str, Tensor] = {}
        if options.global_context and config.use_global_encoder:
            context = model.encode_global(_context_mel(mel, frames, MAX_CONTEXT_FRAMES))

        enc_spans = plan_spans(frames, chunk_frames, overlap_frames)
        cond_lat = LazyStitch(
            [Span(s.start // factor, s.end // factor) for s in enc_spans],
            lat_len,
            lambda idx: [
                model.encode_condition(mel(enc_spans[i].start, enc_spans[i].end)) for i in idx
            ],
            dim=2,
        )
        sampler = ChunkSampler(
            model.denoise,
            items,
            lat_len,
            chunk=lat_chunk,
            overlap=lat_overlap,
            out_channels=model.latent_channels,
            settings=plan.settings(
                uncond_latent=model.uncond_value, parameterization=config.parameterization
            ),
            context=context,
            generator=torch.Generator().manual_seed(runtime.seed),
            batch_size=runtime.batch_size,
            time_multiple=model.unet.time_multiple,
            step_callback=StepBar(progress, plan.steps),
            autocast_dtype=runtime.dtype,
            cuda_graphs=use_cuda_graphs(options.cuda_graphs, runtime.device),
            device=runtime.device,
        )
        total = len(sampler.spans) * items
        chunks_cb = chunk_progress(progress)
        done = [0]

        def sample(idx: list[int]) -> list[Tensor]:
            before = done[0]

            def report(i: int, _n: int) -> None:
                if chunks_cb is not None:
                    chunks_cb(before + i, total)

            out = sampler.sample(idx, lambda s: cond_lat(s.start, s.end), progress=report)
            done[0] += len(idx) * items
            return out

        latent = LazyStitch(sampler.spans, lat_len, sample, dim=2, group=group)
        dec_spans = _map_spans(lat_len, lat_chunk, lat_overlap)
        decoded = LazyStitch(
            [Span(s.start * factor, s.end * factor) for s in dec_spans],
            frames,
            lambda idx: [
                model.decode(latent(dec_spans[i].start, dec_spans[i].end))
                .unsqueeze(1)
                .narrow(2, 0, dec_spans[i].length * factor)
                for i in idx
            ],
            dim=2,
        )
        cut_bin = mel_bin_for_frequency(
            cutoff, n_mels=config.n_mels, sample_rate=rate, f_min=config.f_min
        )

        def final_mel(lo: int, hi: int) -> Tensor:
            return replace_low_mel_bins(
                decoded(lo, hi)[:, 0], mel(lo, hi), cut_bin, transition_bins=4
            )

        edge = min(EDGE_FRAMES, frames - 1)
        voc_len = frames + 2 * edge

        def voc_input(lo: int, hi: int) -> Tensor:
            idx = reflect_index(lo - edge, hi - edge, frames)
            lo_m, hi_m = int(idx.min()), int(idx.max()) + 1
            return final_mel(lo_m, hi_m).index_select(1, (idx - lo_m).to(runtime.device))

        voc_spans = _map_spans(voc_len, chunk_frames, overlap_frames)
        wave = LazyStitch(
            [Span(s.start * hop, s.end * hop) for s in voc_spans],
            voc_len * hop,
            lambda idx: [
                model.vocode(voc_input(voc_spans[i].start, voc_spans[i].end)).narrow(
                    1, 0, voc_spans[i].length * hop
                )
                for i in idx
            ],
            dim=1,
        )
        block = (chunk_frames - overlap_frames) * hop
        with sf.SoundFile(str(side), "w", rate, items, "FLOAT", format="RF64") as fh:
            for lo in range(0, t48, block):
                hi = min(t48, lo + block)
                y = wave(lo + edge * hop, hi + edge * hop)
                fh.write(y.float().cpu().numpy().T)
    progress.end("steps")
    return total


def _map_spans(length: int, chunk: int, overlap: int) -> list[Any]:
    """The spans of :func:`audiotool.tasks.upsample._chunked_map` (one span when it fits)."""
    from audiotool.engine.chunking import Span, plan_spans

    return [Span(0, length)] if length <= chunk else plan_spans(length, chunk, overlap)


def _context_mel(mel: Any, frames: int, max_frames: int) -> Tensor:
    """The global encoder's input: the conditioning mel ``(C, N, M)``, averaged over time in
    windows of ``ceil(N / max_frames)`` frames when longer, pooled block by block."""
    if frames <= max_frames:
        return mel(0, frames)
    factor = math.ceil(frames / max_frames)
    step = factor * max(1, MEL_BLOCK // factor)
    parts = []
    for lo in range(0, frames, step):
        m = mel(lo, min(frames, lo + step))
        parts.append(
            torch.nn.functional.avg_pool1d(m.transpose(1, 2), factor, ceil_mode=True).transpose(
                1, 2
            )
        )
    return torch.cat(parts, dim=1)


def _finish(
    x48: Resampled,
    side: Path,
    cutoff: float,
    rate: int,
    out_len: int,
    sink: Any,
    inverse: list[int],
    *,
    options: UpsampleOptions,
) -> float:
    """Step 5: band split, resampling, limiter and writing; returns the limiter's depth (dB)."""
    from audiotool.audio import fit_length
    from audiotool.dsp import default_transition_hz, split_bands
    from audiotool.stream import AudioSource, StreamResampler

    t48 = x48.length
    out_rate = options.output_rate
    transition = options.transition_hz
    if transition is None:
        transition = default_transition_hz(cutoff)
    with AudioSource(side) as gen_file:
        stats = _band_stats(x48, gen_file.read, t48, rate, cutoff, transition)
        back_k = StreamResampler(t48, rate, out_rate)
        back_g = StreamResampler(t48, rate, out_rate)
        limiter = _Limiter(out_len, out_rate, options.ceiling)
        emitted = 0
        for lo in range(0, t48, WAVE_BLOCK):
            hi = min(t48, lo + WAVE_BLOCK)
            a, b = max(0, lo - SPLIT_MARGIN), min(t48, hi + SPLIT_MARGIN)
            kept, gen = split_bands(
                gen_file.read(a, b),
                x48(a, b),
                rate,
                cutoff,
                transition_hz=transition,
                bound_level=options.bound_level,
                stats=stats,
            )
            last = hi >= t48
            k = back_k.push(kept[:, lo - a : hi - a], final=last).float().cpu()
            g = back_g.push(gen[:, lo - a : hi - a], final=last).float().cpu()
            n = max(0, min(int(k.shape[-1]), out_len - emitted))
            k, g = k[:, :n], g[:, :n]
            emitted += n
            if last and emitted < out_len:
                k, g = fit_length(k, n + out_len - emitted), fit_length(g, n + out_len - emitted)
                emitted = out_len
            out = limiter.push(k, g)
            if out.shape[-1]:
                sink.write(out[inverse])
    return 20 * math.log10(max(limiter.low, 1e-6)) if limiter.low < 1.0 else 0.0


def _band_stats(
    ref: Span, gen: Span, length: int, rate: int, cutoff: float, transition: float
) -> Any:
    """:class:`audiotool.dsp.BandStats` of :func:`audiotool.dsp.split_bands` (defaults
    ``n_fft=2048``, ``hop=512``) summed over the STFT frames of the two signals in blocks."""
    from audiotool.dsp import BandStats, band_stats

    n_fft, hop = 2048, 512
    n_frames = 1 + length // hop
    window = torch.hann_window(n_fft)
    freqs = torch.arange(n_fft // 2 + 1) * rate / n_fft
    band = (freqs >= cutoff - transition) & (freqs < cutoff)
    sums: dict[str, Tensor] = {}
    for f0 in range(0, n_frames, STAT_FRAMES):
        f1 = min(n_frames, f0 + STAT_FRAMES)
        idx = reflect_index(f0 * hop - n_fft // 2, (f1 - 1) * hop + n_fft // 2, length)
        specs = {}
        for name, read in (("ref", ref), ("gen", gen)):
            x = _mapped(read, idx).float()
            specs[name] = torch.stft(
                x, n_fft, hop, window=window.to(x.device), center=False, return_complex=True
            )
        r_mag, g_mag = specs["ref"].abs(), specs["gen"].abs()
        parts = {
            "num": r_mag[:, band].double().sum(dim=(1, 2)),
            "den": g_mag[:, band].double().sum(dim=(1, 2)),
            "power": r_mag.pow(2).double().sum(dim=2),
        }
        for k, v in parts.items():
            sums[k] = v if k not in sums else sums[k] + v
    stats = band_stats(sums["num"], sums["den"], sums["power"], n_frames)
    if not bool(band.any()):
        stats = BandStats(gain=torch.ones_like(stats.gain), long_term=stats.long_term)
    return stats


class _Limiter:
    """:func:`audiotool.dsp.limit_generated` of a signal of ``length`` arriving in blocks:
    each block is limited with twice the limiter's window of context on both sides (its
    sliding minimum and its smoothing each reach one window), so the gains are the
    whole-signal ones. ``ceiling=None``: the plain sum."""

    def __init__(self, length: int, rate: int, ceiling: float | None, window_s: float = 0.004):
        self.length, self.rate, self.ceiling, self.window_s = length, rate, ceiling, window_s
        self.margin = 2 * max(1, int(round(window_s * rate)))
        self.k: Tensor | None = None
        self.g: Tensor | None = None
        self.start = self.end = self.done = 0
        self.low = 1.0

    def push(self, k: Tensor, g: Tensor) -> Tensor:
        """Append ``kept`` / ``generated`` ``(C, n)``; returns the finished output ``(C, n')``."""
        from audiotool.dsp import limit_generated

        if self.ceiling is None:
            self.done += int(k.shape[-1])
            return k + g
        self.k = k if self.k is None else torch.cat([self.k, k], dim=-1)
        self.g = g if self.g is None else torch.cat([self.g, g], dim=-1)
        self.end += int(k.shape[-1])
        ready = self.length if self.end >= self.length else self.end - self.margin
        if ready <= self.done:
            return k[:, :0]
        w0 = max(self.start, self.done - self.margin)
        out, gain = limit_generated(
            self.k[:, w0 - self.start :],
            self.g[:, w0 - self.start :],
            self.rate,
            ceiling=self.ceiling,
            window_s=self.window_s,
        )
        res = out[:, self.done - w0 : ready - w0]
        part = gain[self.done - w0 : ready - w0]
        if part.numel():
            self.low = min(self.low, float(part.min()))
        keep = max(self.start, ready - self.margin)
        self.k = self.k[:, keep - self.start :].clone()
        self.g = self.g[:, keep - self.start :].clone()
        self.start, self.done = keep, ready
        return res

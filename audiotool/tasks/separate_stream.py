"""`separate` of a long file in a stream: memory bounded by the chunk, not the duration.

The same separation as :func:`audiotool.tasks.separate.separate_tensor`, with every whole-file
step replaced by a blockwise one (:func:`stream_separation`):

1. the mixture is read at the model rate on demand (:class:`audiotool.stream.Resampled`);
2. every pass of the in-memory path (each test-time shift, each channel group) is its own
   engine stream: overlap-add (:meth:`~audiotool.engine.overlap_add.OverlapAddProcessor.stream`)
   or the RoFormer / demucs segment schemes (:func:`~audiotool.engine.segments.stream_segments`).
   The passes run side by side (:func:`~audiotool.engine.lockstep.pulled`,
   :func:`~audiotool.engine.lockstep.lockstep`) and are summed in the same order; demucs-scheme
   models standardise each channel group by its mean / deviation from a first pass over the
   file (float64 sums);
3. the stems are made mixture-consistent block by block if asked and resampled back to the
   file's rate (:class:`audiotool.stream.StreamResampler`); an ensemble's members run side by
   side and their stems combine in windows (:class:`~audiotool.engine.lockstep.Windowed`, with
   the STFT's context for the spectral methods);
4. the residual is taken against the input's block, and finished blocks are written
   (:class:`audiotool.stream.AudioSink`).

The stems equal the in-memory path's to float precision (``tests/test_stream.py``,
``tests/cli/test_separate_demucs.py``); memory is bounded by the chunk times the passes run
side by side (shifts, channel groups, ensemble members).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from audiotool.progress import Progress, chunk_progress
from audiotool.tasks._separate_plan import (
    MAX_SHIFT_SECONDS,
    SEGMENT_FAMILIES,
    chunk_plan,
    model_stems,
    residual_name,
    segment_chunking,
)
from audiotool.tasks.separate_demucs import demucs_scheme, demucs_segment
from audiotool.tasks.separate_ensemble import EnsembleConfig, combine_stems

if TYPE_CHECKING:
    from torch import nn

    from audiotool.engine.lockstep import Windowed
    from audiotool.stream import AudioSource, Resampled
    from audiotool.tasks._batch import OutputOptions
    from audiotool.tasks.common import Runtime
    from audiotool.tasks.separate import SeparateOptions


def streamable(config: Any, options: SeparateOptions) -> bool:
    """Whether long files of ``config``'s model separate in a stream (:func:`stream_separation`):
    every scheme (overlap-add, RoFormer, demucs), with ``--shifts``, and ensembles of them.
    Only models whose query is the whole mixture's embedding read the whole file (the caller
    checks that)."""
    return True


def stream_separation(
    model: nn.Module,
    config: Any,
    source: AudioSource,
    outputs: Mapping[str, tuple[Path, Path]],
    *,
    chosen: Sequence[str],
    options: SeparateOptions,
    runtime: Runtime,
    output: OutputOptions,
    progress: Progress | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """:func:`~audiotool.tasks.separate.separate_tensor` of a file read in blocks, the stems written
    as they are finished.

    The stems arrive at the file's rate from :func:`_file_stems` (every scheme, shifts,
    ensembles), the residual is taken against the input's block, and the blocks are written
    (:class:`audiotool.stream.AudioSink`). Equal to the in-memory path to float precision;
    memory bounded by the chunk (times the passes combined: shifts, channel groups, members).

    Args:
        source: the input.
        outputs: ``{name: (temporary path, final path)}`` for the chosen stems (+ residual).
        chosen: the stems written.
    """
    length, sr = source.frames, source.sample_rate
    sinks = {
        n: output.sink(tmp, sr, source.channels, name=final) for n, (tmp, final) in outputs.items()
    }
    at = 0
    try:
        blocks = _file_stems(
            model,
            config,
            source,
            options=options,
            runtime=runtime,
            progress=_ProgressSum(chunk_progress(progress)),
            model_kwargs=model_kwargs,
        )
        for block in blocks:
            ready = {s: block[s].float().cpu() for s in chosen}
            hi = at + int(ready[chosen[0]].shape[-1])
            if options.residual:
                ready[residual_name(chosen)] = source.read(at, hi) - sum(ready.values())
            for name, part in ready.items():
                sinks[name].write(part)
            at = hi
        if at != length:
            raise AssertionError(f"streamed separation ended at {at} of {length}")
        for s in sinks.values():
            s.close()
    finally:
        for s in sinks.values():
            s.discard()


class _ProgressSum:
    """One chunk bar for several engine runs side by side: each run's ``(done, total)``
    callback (:meth:`part`) adds to the sum."""

    def __init__(self, callback: Callable[[int, int], None]) -> None:
        self.callback = callback
        self.parts: dict[int, tuple[int, int]] = {}
        self.lock = threading.Lock()

    def part(self) -> Callable[[int, int], None]:
        key = len(self.parts)
        self.parts[key] = (0, 0)

        def update(done: int, total: int) -> None:
            with self.lock:
                self.parts[key] = (done, total)
                d = sum(p[0] for p in self.parts.values())
                t = sum(p[1] for p in self.parts.values())
                self.callback(d, t)

        return update


def _file_stems(
    model: Any,
    config: Any,
    source: AudioSource,
    *,
    options: SeparateOptions,
    runtime: Runtime,
    progress: _ProgressSum,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Generator[dict[str, Tensor], None, None]:
    """Every stem of ``config`` at the file's rate, ``{stem: (C, n)}`` blocks in order: for an
    ensemble the members' stems combined
    (:func:`~audiotool.tasks.separate_ensemble.combine_stems` in windows, see
    :class:`~audiotool.engine.lockstep.Windowed`), otherwise :func:`_model_stems` resampled
    back; made mixture-consistent when asked, as
    :func:`~audiotool.tasks.separate.separate_tensor` does."""
    from audiotool.stream import Resampled, StreamResampler

    length, sr = source.frames, source.sample_rate
    if isinstance(config, EnsembleConfig):
        from audiotool.engine.lockstep import Windowed, lockstep

        members = [
            _file_stems(
                m.model,
                m.config,
                source,
                options=dataclasses.replace(options, mixture_consistent=False),
                runtime=runtime,
                progress=progress,
            )
            for m in config.members
        ]
        k = len(members)

        def combine(window: dict[str, Tensor]) -> dict[str, Tensor]:
            return {
                s: combine_stems([window[f"{i}:{s}"] for i in range(k)], config.method)
                for s in config.stems
            }

        spectral = config.method in ("max_spec", "min_spec")
        # the STFT of combine_stems: 2048-point frames every 512: 4096 samples of context
        windows = Windowed(combine, length, 4096 if spectral else 0, align=512 if spectral else 1)
        try:
            yield from _ensemble_blocks(lockstep(members), windows, source, config, options)
        finally:
            for it in members:
                it.close()
        return
    rate = int(config.sample_rate)
    stems = model_stems(config)
    mix = Resampled(source.read, length, sr, rate)
    back = {s: StreamResampler(mix.length, rate, sr) for s in stems}
    at = {"model": 0, "file": 0}
    for blocks in _model_stems(
        model,
        config,
        mix,
        options=options,
        runtime=runtime,
        progress=progress,
        model_kwargs=model_kwargs,
    ):
        n = int(blocks[stems[0]].shape[-1])
        if options.mixture_consistent:
            x = mix(at["model"], at["model"] + n).to(blocks[stems[0]].device)
            excess = (x - sum(blocks[s] for s in stems)) / len(stems)
            blocks = {s: blocks[s] + excess for s in stems}
        at["model"] += n
        final = at["model"] >= mix.length
        ready = {s: back[s].push(blocks[s], final=final).float().cpu() for s in stems}
        lo = at["file"]
        hi = min(length, lo + int(ready[stems[0]].shape[-1]))
        at["file"] = hi
        if hi > lo:
            yield {s: v[:, : hi - lo] for s, v in ready.items()}
    if at["file"] < length:  # the model rate rounds the length up: never short, but check
        raise AssertionError(f"streamed separation ended at {at['file']} of {length}")


def _ensemble_blocks(
    parts_in_step: Iterator[list[dict[str, Tensor]]],
    windows: Windowed,
    source: AudioSource,
    config: EnsembleConfig,
    options: SeparateOptions,
) -> Iterator[dict[str, Tensor]]:
    """The members' stems (side by side) combined in windows, mixture-consistent if asked."""
    at = 0
    for parts in parts_in_step:
        merged = {f"{i}:{s}": p[s] for i, p in enumerate(parts) for s in config.stems}
        out = windows.push(merged)
        if not out:
            continue
        n = int(out[config.stems[0]].shape[-1])
        if options.mixture_consistent:
            mix = source.read(at, at + n)
            excess = (mix - sum(out.values())) / len(out)
            out = {s: v + excess for s, v in out.items()}
        at += n
        yield out


def _model_stems(
    model: Any,
    config: Any,
    mix: Resampled,
    *,
    options: SeparateOptions,
    runtime: Runtime,
    progress: _ProgressSum,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Generator[dict[str, Tensor], None, None]:
    """Every stem of one model at the model rate, ``{stem: (C, n)}`` blocks in order, before
    mixture consistency: the passes of :func:`~audiotool.tasks.separate.separate_tensor` (or
    :func:`~audiotool.tasks.separate_demucs.separate_demucs`) — shifted copies, channel groups —
    streamed side by side (:func:`~audiotool.engine.lockstep.pulled`,
    :func:`~audiotool.engine.lockstep.lockstep`) and summed in the same order."""
    from audiotool.engine.lockstep import lockstep, pulled
    from audiotool.engine.overlap_add import OverlapAddProcessor, _as_dict
    from audiotool.stream import zero_outside

    rate, length = int(config.sample_rate), mix.length
    model_channels = int(getattr(config, "audio_channels", 2))
    c_in = int(mix(0, 1).shape[0])
    stems = model_stems(config)
    kwargs = dict(model_kwargs or {})
    gen = torch.Generator().manual_seed(runtime.seed)
    if demucs_scheme(config):
        yield from _demucs_stems(
            model, config, mix, options=options, runtime=runtime, progress=progress
        )
        return

    def per_channel(batch: Tensor, **kw: Any) -> dict[str, Tensor]:
        outs = [
            _as_dict(model(batch[:, c : c + 1].expand(-1, model_channels, -1), **kw), len(batch))
            for c in range(c_in)
        ]
        return {s: torch.cat([o[s].mean(1, keepdim=True) for o in outs], 1) for s in stems}

    net: Callable[..., Any] = model if c_in == model_channels else per_channel
    offsets = [0] + [
        int(torch.randint(0, int(MAX_SHIFT_SECONDS * rate), (1,), generator=gen))
        for _ in range(options.shifts)
    ]

    signal = zero_outside(mix, length)

    def run(offset: int) -> Callable[[Callable[[dict[str, Tensor]], None]], None]:
        def read(lo: int, hi: int) -> Tensor:
            return signal(lo - offset, hi - offset)  # zeros: the shift's lead

        report = progress.part()

        def produce(sink: Callable[[dict[str, Tensor]], None]) -> None:
            crop = _after_lead(offset, stems, sink)  # drop the shift's lead

            if getattr(config, "family", "") in SEGMENT_FAMILIES:
                from audiotool.engine.segments import RoformerPlan, stream_segments

                chunk_n, step_n = segment_chunking(config, options)
                stream_segments(
                    net,
                    read,
                    RoformerPlan(length + offset, chunk=chunk_n, step=step_n),
                    crop,
                    batch_size=runtime.batch_size,
                    device=runtime.device,
                    dtype=runtime.dtype,
                    progress=report,
                    **kwargs,
                )
            else:
                chunk, hop = chunk_plan(config, options)
                OverlapAddProcessor(chunk, hop, rate).stream(
                    net,
                    read,
                    length + offset,
                    crop,
                    runtime.batch_size,
                    runtime.device,
                    dtype=runtime.dtype,
                    progress=report,
                    **kwargs,
                )

        return produce

    streams = [pulled(run(offset)) for offset in offsets]
    try:
        for parts in lockstep(streams):
            if len(parts) == 1:
                yield parts[0]
                continue
            # never yield inside the context: the consumer would run in inference mode, and an
            # abandoned generator would restore the grad mode at some later garbage collection
            with torch.inference_mode():
                total = {s: torch.zeros_like(parts[0][s]) for s in stems}
                for p in parts:
                    total = {s: total[s] + p[s].to(total[s].device) for s in stems}
                mean = {s: v / len(parts) for s, v in total.items()}
            yield mean
    finally:
        for it in streams:
            it.close()


def _after_lead(
    lead: int, stems: Sequence[str], sink: Callable[[dict[str, Tensor]], None]
) -> Callable[[dict[str, Tensor]], None]:
    """``sink`` fed a stream of ``{stem: (C, n)}`` blocks without its first ``lead`` samples
    (the zeros a shifted pass was read with); blocks wholly inside the lead are dropped."""
    at = 0

    def crop(blocks: dict[str, Tensor]) -> None:
        nonlocal at
        n = int(blocks[stems[0]].shape[-1])
        a = max(0, lead - at)
        at += n
        if a < n:
            sink({s: blocks[s][:, a:] for s in stems})

    return crop


def _demucs_stems(
    model: Any,
    config: Any,
    mix: Resampled,
    *,
    options: SeparateOptions,
    runtime: Runtime,
    progress: _ProgressSum,
) -> Generator[dict[str, Tensor], None, None]:
    """:func:`~audiotool.tasks.separate_demucs.separate_demucs` at the model rate in blocks: each
    channel group standardised by its mean / deviation from a first pass over the file
    (float64 sums), every (group, shifted pass) streamed with
    :class:`~audiotool.engine.segments.DemucsPlan` side by side."""
    from audiotool.engine.lockstep import lockstep, pulled
    from audiotool.engine.segments import DemucsPlan, stream_segments
    from audiotool.stream import BLOCK, mapped_span, zero_outside

    rate, length = int(config.sample_rate), mix.length
    overlap, segment, cap = demucs_segment(config, options)
    c_in = int(mix(0, 1).shape[0])
    model_channels = int(config.audio_channels)
    per_channel = c_in != model_channels
    groups = list(range(c_in)) if per_channel else [None]
    # the mean / deviation of each group's channel mean (demucs' Separator), one pass
    sums = torch.zeros(len(groups), 2, dtype=torch.float64)
    for lo in range(0, length, BLOCK):
        x = mix(lo, min(length, lo + BLOCK)).double()
        refs = x if per_channel else x.mean(0, keepdim=True)
        sums[:, 0] += refs.sum(-1)
        sums[:, 1] += refs.pow(2).sum(-1)
    mean = sums[:, 0] / length
    var = (sums[:, 1] - length * mean.pow(2)) / max(1, length - 1)
    std = var.clamp(min=0).sqrt()
    stats = [(float(m), float(s) + 1e-8) for m, s in zip(mean, std, strict=True)]
    max_shift = int(0.5 * rate)
    gen = torch.Generator().manual_seed(runtime.seed)
    shifts = [
        int(torch.randint(0, max_shift + 1, (1,), generator=gen)) for _ in range(options.shifts)
    ]
    passes: list[int | None] = list(shifts) if shifts else [None]
    stems = model_stems(config)

    def run(gi: int, g: int | None, shift: int | None) -> Callable[..., None]:
        lead = 0 if shift is None else max_shift - shift
        m, sd = stats[gi]
        report = progress.part()

        def standardised(x: Tensor) -> Tensor:
            x = x if g is None else x[g : g + 1].expand(model_channels, -1)
            return (x - m) / sd

        signal = zero_outside(mapped_span(mix, standardised), length)  # zeros around it

        def read(lo: int, hi: int) -> Tensor:
            return signal(lo - lead, hi - lead)  # zeros: the shift's lead

        def produce(sink: Callable[[dict[str, Tensor]], None]) -> None:
            def restored(blocks: dict[str, Tensor]) -> None:
                out = {s: blocks[s] * sd + m for s in stems}
                sink({s: v.mean(0, keepdim=True) if per_channel else v for s, v in out.items()})

            crop = _after_lead(lead, stems, restored)

            stream_segments(
                model,
                read,
                DemucsPlan(length + lead, segment, overlap, pad_last=cap is not None),
                crop,
                batch_size=runtime.batch_size,
                device=runtime.device,
                dtype=runtime.dtype,
                progress=report,
            )

        return produce

    runs = [(gi, g, shift) for gi, g in enumerate(groups) for shift in passes]
    streams = [pulled(run(*r)) for r in runs]
    try:
        for parts in lockstep(streams):
            with torch.inference_mode():
                out: dict[str, Tensor] = {}
                for s in stems:
                    rows = []
                    for gi in range(len(groups)):
                        acc: Tensor | None = None
                        for k, (gj, _, _) in enumerate(runs):
                            if gj == gi:
                                y = parts[k][s]
                                acc = y if acc is None else acc + y
                        assert acc is not None
                        rows.append(acc)
                    total = torch.cat(rows, 0) if per_channel else rows[0]
                    out[s] = total / len(shifts) if len(shifts) > 1 else total
            yield out  # outside inference_mode (see above)
    finally:
        for it in streams:
            it.close()

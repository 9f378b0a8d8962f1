"""Weighted segment inference: the chunking schemes of foreign separators, as pure plans.

Legend: ``C`` channels, ``T`` samples, ``N`` segments, ``L`` samples per model input, ``S``
stems.

:class:`~audiotool.engine.overlap_add.OverlapAddProcessor` is audiotool's own scheme (flat-top
window normalised by its sum, reflected edges). Checkpoints trained elsewhere were validated
with their authors' scheme — demucs' triangular weights with zero-padded context, the
Hamming-weighted, end-aligned chunks of python-audio-separator's RoFormer demix — and matching their
published numbers means cutting and weighting exactly as they do. A :class:`SegmentPlan` says
where each segment comes from and how much each of its output samples weighs; one runner,
:func:`run_segments`, batches the segments through the model (out-of-memory back-off included)
and returns ``sum_i w_i(t) y_i(t) / sum_i w_i(t)``.

A plan is a small object (no tensor of all segments is ever built), so memory beyond the input
and output buffers does not grow with the length of the file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor

from audiotool.engine.batching import ProgressFn, map_batches
from audiotool.engine.overlap_add import _as_dict, _expand_kwargs
from audiotool.errors import EngineError

SegmentModel = Callable[..., Tensor | Mapping[str, Tensor]]


class SegmentPlan(Protocol):
    """How a ``(C, T)`` signal is cut into model inputs and how the outputs are put back.

    Attributes:
        length: ``T``, the length of the signal and of every output.
        segment: ``L``, the length of every model input (and output).
        n_segments: ``N``.
    """

    length: int
    segment: int
    n_segments: int

    def segment_input(self, audio: Tensor, i: int) -> Tensor:
        """Model input ``i``, ``(C, l)`` with ``l <= L`` (``L`` unless the scheme feeds a
        shorter last segment), cut from ``audio`` ``(C, T)`` (padded as the scheme pads)."""
        ...

    def segment_range(self, i: int) -> tuple[int, int]:
        """The input of segment ``i`` as a range ``[lo, hi)`` of the signal, zeros outside
        ``[0, T)`` (what :meth:`segment_input` cuts, for a reader of the signal)."""
        ...

    def placement(self, i: int, device: torch.device) -> tuple[int, Tensor]:
        """Where output ``i`` goes: ``(start, weight)``; sample ``j`` of the segment's output
        lands at ``start + j`` (positions outside ``[0, T)`` are dropped) with weight
        ``weight[j]`` (``(L,)``, zero for samples the scheme discards)."""
        ...


def run_segments(
    model: SegmentModel,
    audio: Tensor,
    plan: SegmentPlan,
    *,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: ProgressFn | None = None,
    **model_kwargs: Any,
) -> dict[str, Tensor]:
    """Run ``model`` over the segments of ``audio`` ``(C, T)`` and combine them by weight.

    ``model`` gets ``(b, C, l)`` mini-batches (plus ``model_kwargs``, moved to the device, a
    leading dimension of 1 expanded to ``b``) and returns ``(b, C', l)`` or
    ``{key: (b, C', l)}``; consecutive segments of one input length ``l`` share a batch. Under
    ``dtype`` (bf16/fp16) the model runs under autocast; weights
    and sums stay float32.

    Returns:
        ``{key: (C', T)}`` float32 on ``audio``'s device.

    Raises:
        EngineError: for a bad shape, or an output sample no segment gives weight to.
    """
    if audio.dim() != 2:
        raise EngineError(f"audio must be (C, T), got shape {tuple(audio.shape)}")
    if int(audio.shape[-1]) != plan.length:
        raise EngineError(f"the plan is for {plan.length} samples, got {audio.shape[-1]}")
    home = audio.device
    dev = torch.device(device) if device is not None else home
    signal = audio.to(dev)
    outputs: dict[str, Tensor] = {}  # filled block by block in order: no list, no final cat
    filled = {"n": 0}

    def sink(blocks: dict[str, Tensor]) -> None:
        n = 0
        for key, block in blocks.items():
            if key not in outputs:  # a normal tensor (callers may update it in place)
                with torch.inference_mode(False):
                    outputs[key] = torch.empty(int(block.shape[0]), plan.length, device=home)
            n = int(block.shape[-1])
            outputs[key][:, filled["n"] : filled["n"] + n] = block
        filled["n"] += n

    _run(
        model,
        lambda i: plan.segment_input(signal, i),
        plan,
        sink,
        dev,
        batch_size=batch_size,
        dtype=dtype,
        progress=progress,
        model_kwargs=model_kwargs,
    )
    if filled["n"] != plan.length:  # internal invariant of _run: every sample handed over once
        raise AssertionError(f"segments covered {filled['n']} of {plan.length} samples")
    return outputs


def stream_segments(
    model: SegmentModel,
    read: Callable[[int, int], Tensor],
    plan: SegmentPlan,
    sink: Callable[[dict[str, Tensor]], None],
    *,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: ProgressFn | None = None,
    **model_kwargs: Any,
) -> None:
    """:func:`run_segments` over a signal read through ``read`` (samples ``[lo, hi)``, zeros
    outside the signal, see :mod:`audiotool.stream`), the outputs handed to ``sink`` as
    consecutive finished blocks ``{key: (C', n)}`` (everything before the next segment's
    placement is final). Memory is bounded by the segment and the batch."""
    dev = torch.device(device) if device is not None else torch.device("cpu")

    def segment(i: int) -> Tensor:
        lo, hi = plan.segment_range(i)
        return read(lo, hi).to(dev)

    _run(
        model,
        segment,
        plan,
        sink,
        dev,
        batch_size=batch_size,
        dtype=dtype,
        progress=progress,
        model_kwargs=model_kwargs,
    )


def _run(
    model: SegmentModel,
    segment_input: Callable[[int], Tensor],
    plan: SegmentPlan,
    sink: Callable[[dict[str, Tensor]], None],
    dev: torch.device,
    *,
    batch_size: int,
    dtype: torch.dtype | None,
    progress: ProgressFn | None,
    model_kwargs: Mapping[str, Any],
) -> None:
    """The segments through the model, weighted sums kept for the unfinished part only;
    finished samples (before the next segment's placement) divided and handed to ``sink``."""
    length, seg = plan.length, plan.segment
    buffers: dict[str, Tensor] = {}
    state = {"origin": 0}  # signal coordinate of buffers[...][:, 0] and total_weight[0]
    weights = [torch.zeros(0, device=dev)]

    with torch.inference_mode():
        moved = {k: v.to(dev) if isinstance(v, Tensor) else v for k, v in model_kwargs.items()}

        def call(batch: Tensor) -> dict[str, Tensor]:
            """Model outputs for ``batch`` ``(b, C, l)``, zero-padded on the right to ``L``."""
            kwargs = _expand_kwargs(moved, int(batch.shape[0]))
            if dtype is not None:
                with torch.autocast(device_type=dev.type, dtype=dtype):
                    out = _as_dict(model(batch, **kwargs), int(batch.shape[0]))
            else:
                out = _as_dict(model(batch, **kwargs), int(batch.shape[0]))
            n = int(batch.shape[-1])
            for key, y in out.items():
                if y.shape[-1] != n:
                    raise EngineError(
                        f"model output '{key}' has {y.shape[-1]} samples per {n}-sample "
                        "segment; this scheme needs outputs as long as the inputs"
                    )
            if n == seg:
                return out
            return {k: torch.nn.functional.pad(y, (0, seg - n)) for k, y in out.items()}

        def run(start: int, stop: int) -> dict[str, Tensor]:
            inputs = [segment_input(i) for i in range(start, stop)]
            parts: list[dict[str, Tensor]] = []
            lo = 0
            while lo < len(inputs):  # runs of one input length
                hi = lo + 1
                while hi < len(inputs) and inputs[hi].shape[-1] == inputs[lo].shape[-1]:
                    hi += 1
                parts.append(call(torch.stack(inputs[lo:hi])))
                lo = hi
            if len(parts) == 1:
                return parts[0]
            return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

        def grow(x: Tensor, size: int) -> Tensor:
            if size <= x.shape[-1]:
                return x
            return torch.cat([x, x.new_zeros(*x.shape[:-1], size - x.shape[-1])], dim=-1)

        def add(start: int, stop: int, outputs: dict[str, Tensor]) -> None:
            origin = state["origin"]
            for i in range(start, stop):
                pos, weight = plan.placement(i, dev)
                lo, hi = max(pos, 0), min(pos + seg, length)
                if lo >= hi:
                    continue
                w = weight[lo - pos : hi - pos]
                weights[0] = grow(weights[0], hi - origin)
                weights[0][lo - origin : hi - origin] += w
                for key, y in outputs.items():
                    if key not in buffers:
                        buffers[key] = torch.zeros(int(y.shape[1]), 0, device=dev)
                    buffers[key] = grow(buffers[key], hi - origin)
                    buffers[key][:, lo - origin : hi - origin].addcmul_(
                        y[i - start, :, lo - pos : hi - pos].float(), w
                    )
            # placements grow with i, except possibly the last one (demucs centres it)
            final = (
                length
                if stop >= plan.n_segments
                else min(plan.placement(stop, dev)[0], plan.placement(plan.n_segments - 1, dev)[0])
            )
            final = min(max(final, origin), length)
            if final <= origin:
                return
            total = grow(weights[0], final - origin)[: final - origin]
            if bool((total <= 0).any()):
                raise EngineError("the segment plan leaves samples without weight")
            done = {}
            for key in list(buffers):
                buf = grow(buffers[key], final - origin)
                done[key] = buf[:, : final - origin] / total
                buffers[key] = buf[:, final - origin :].clone()
            weights[0] = grow(weights[0], final - origin)[final - origin :].clone()
            state["origin"] = final
            sink(done)

        map_batches(run, plan.n_segments, batch_size, on_done=add, progress=progress)


class DemucsPlan:
    """demucs' ``apply_model(..., split=True, overlap, transition_power=1, shifts=0)`` cutting.

    Segments of ``segment`` samples start every ``stride = int((1 - overlap) * segment)``
    samples from 0 while the start is inside the signal. A segment that runs past the end
    keeps only ``n = T - offset`` samples of output. With ``pad_last`` (v4 ``HTDemucs``, whose
    ``valid_length`` is its training length) its input is still ``segment`` samples, centred
    on the kept ones: it starts ``(segment - n) // 2`` samples early (real signal where there
    is some, zeros before 0 and after ``T``). Without (v3 ``HDemucs``, which has no
    ``valid_length``) the input is just those ``n`` samples. Each kept output sample is
    weighted by a triangle ``[1, 2, ..., segment // 2, segment - segment // 2, ..., 1] / max``
    indexed from the first kept sample (Défossez et al., demucs ``apply.py``).
    """

    def __init__(self, length: int, segment: int, overlap: float, *, pad_last: bool = True) -> None:
        if segment <= 0 or length <= 0:
            raise EngineError(f"need a positive length and segment, got {length}, {segment}")
        if not 0.0 <= overlap < 1.0:
            raise EngineError(f"overlap must be in [0, 1), got {overlap}")
        self.length, self.segment, self.pad_last = length, segment, pad_last
        self.stride = int((1 - overlap) * segment)
        if self.stride <= 0:
            raise EngineError(f"overlap {overlap} leaves no stride for {segment}-sample segments")
        self.n_segments = len(range(0, length, self.stride))
        half = segment // 2
        tri = torch.cat([torch.arange(1, half + 1), torch.arange(segment - half, 0, -1)])
        self._tri = tri / tri.max()

    def _span(self, i: int) -> tuple[int, int, int]:
        """(input start, kept samples, first kept sample of the output) of segment ``i``."""
        offset = i * self.stride
        kept = min(self.length - offset, self.segment)
        lead = (self.segment - kept) // 2 if self.pad_last else 0
        return offset - lead, kept, lead

    def segment_range(self, i: int) -> tuple[int, int]:
        start, kept, _ = self._span(i)
        return (start, start + kept) if not self.pad_last else (start, start + self.segment)

    def segment_input(self, audio: Tensor, i: int) -> Tensor:
        start, kept, _ = self._span(i)
        if not self.pad_last:
            return audio[:, start : start + kept]
        lo, hi = max(start, 0), min(start + self.segment, self.length)
        return torch.nn.functional.pad(audio[:, lo:hi], (lo - start, start + self.segment - hi))

    def placement(self, i: int, device: torch.device) -> tuple[int, Tensor]:
        start, kept, lead = self._span(i)
        weight = torch.zeros(self.segment, device=device)
        weight[lead : lead + kept] = self._tri[:kept].to(device)
        return start, weight


class RoformerPlan:
    """The RoFormer chunking of python-audio-separator 0.47.1 (``MDXCSeparator.demix``).

    Chunks of ``chunk`` samples start every ``step`` samples (``step = chunk // num_overlap``
    there) while they end before the signal does; the last chunk is aligned to the end of the
    signal (``T - chunk``, unless that start is already planned). Nothing is padded: a signal
    shorter than a chunk is one segment of its own length. Every output is weighted by a
    symmetric Hamming window of ``chunk`` samples (its first ``L`` values for a short signal)
    and the sum divided by the summed weights.

    Unlike MSST's scheme (reflect-padded borders, fade-in/out window) the borders are not
    padded: the Hamming window never reaches zero (0.08 at its ends), so every sample keeps
    some weight.

    Args:
        length: ``T`` (at least 1).
        chunk: samples per chunk (the model's ``chunk_size``).
        step: samples between chunk starts, ``1 <= step <= chunk``.
    """

    def __init__(self, length: int, *, chunk: int, step: int) -> None:
        if length < 1:
            raise EngineError(f"cannot cut {length} samples into segments")
        if chunk < 1 or not 1 <= step <= chunk:
            raise EngineError(f"need chunk >= 1 and 1 <= step <= chunk, got {chunk} and {step}")
        self.length, self.chunk, self.step = length, chunk, step
        self.segment = min(chunk, length)
        starts: list[int] = []
        for offset in range(0, length, step):
            if offset + chunk >= length:
                tail = max(length - chunk, 0)
                if not starts or starts[-1] != tail:
                    starts.append(tail)
                break
            starts.append(offset)
        self.starts = starts
        self.n_segments = len(starts)
        window = torch.hamming_window(chunk, periodic=False, dtype=torch.float64)
        self._window = window[: self.segment].float()
        self._on: dict[torch.device, Tensor] = {}

    def segment_range(self, i: int) -> tuple[int, int]:
        return self.starts[i], self.starts[i] + self.segment

    def segment_input(self, audio: Tensor, i: int) -> Tensor:
        start = self.starts[i]
        return audio[:, start : start + self.segment]

    def placement(self, i: int, device: torch.device) -> tuple[int, Tensor]:
        if device not in self._on:
            self._on[device] = self._window.to(device)
        return self.starts[i], self._on[device]

"""Span planning and crossfade stitching for chunked generation (pure functions).

Used by chunked diffusion, where each chunk is *generated* (not just filtered), so neighbouring
chunks disagree slightly and are blended over their overlap with complementary fades.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from audiotool.errors import EngineError


@dataclasses.dataclass(frozen=True)
class Span:
    """``[start, end)`` on the chunked axis."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def plan_spans(length: int, chunk: int, overlap: int) -> list[Span]:
    """Spans of ``chunk`` covering ``[0, length)`` with at least ``overlap`` shared.

    All spans have length ``chunk`` when ``length >= chunk`` (the last is shifted back to end at
    ``length``, so it may overlap its neighbour by more); a shorter input gives one span.
    """
    if chunk < 1 or not 0 <= overlap < chunk:
        raise EngineError(f"need chunk >= 1 and 0 <= overlap < chunk, got {chunk}, {overlap}")
    if length <= chunk:
        return [Span(0, length)]
    hop = chunk - overlap
    n = math.ceil((length - chunk) / hop) + 1
    starts = [min(i * hop, length - chunk) for i in range(n)]
    return [Span(s, s + chunk) for s in starts]


def _fade(n: int, kind: str, device: torch.device) -> Tensor:
    """Rising fade of ``n`` samples, half-sample shifted so it is never exactly 0 or 1."""
    pos = (torch.arange(n, dtype=torch.float64, device=device) + 0.5) / n
    ramp = 0.5 * (1 - torch.cos(math.pi * pos)) if kind == "hann" else pos
    return ramp.float()


def crossfade_weights(
    spans: Sequence[Span],
    *,
    fade: Literal["hann", "linear"] = "hann",
    device: torch.device | None = None,
) -> list[Tensor]:
    """Per-span weights: 1 inside, complementary fades over each overlap with a neighbour."""
    dev = device or torch.device("cpu")
    weights = [torch.ones(s.length, device=dev) for s in spans]
    for i in range(len(spans) - 1):
        a, b = spans[i], spans[i + 1]
        ov = a.end - b.start
        if ov <= 0:
            continue
        up = _fade(ov, fade, dev)
        weights[i][a.length - ov :] *= 1 - up
        weights[i + 1][:ov] *= up
    return weights


def crossfade_stitch(
    chunks: Sequence[Tensor] | Tensor,
    spans: Sequence[Span],
    length: int,
    *,
    dim: int = -1,
    fade: Literal["hann", "linear"] = "hann",
) -> Tensor:
    """Blend chunk outputs placed at ``spans`` along ``dim`` into one tensor of ``length``.

    Weights are normalised by their sum at every position, so identical chunk contents are
    reconstructed exactly whatever the overlaps.
    """
    items = list(chunks.unbind(0)) if isinstance(chunks, Tensor) else list(chunks)
    if len(items) != len(spans):
        raise EngineError(f"{len(items)} chunks for {len(spans)} spans")
    first = items[0].movedim(dim, -1)
    out = first.new_zeros(*first.shape[:-1], length, dtype=torch.float32)
    total = torch.zeros(length, device=first.device)
    for y, s, w in zip(
        items, spans, crossfade_weights(spans, fade=fade, device=first.device), strict=True
    ):
        y = y.movedim(dim, -1).float()
        if y.shape[-1] != s.length:
            raise EngineError(f"chunk of length {y.shape[-1]} for a span of {s.length}")
        out[..., s.start : s.end] += y * w
        total[s.start : s.end] += w
    if bool((total <= 0).any()):
        raise EngineError("the spans do not cover the whole length")
    return (out / total).movedim(-1, dim)

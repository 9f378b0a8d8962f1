"""Lazy, cached views of chunked computations, for files that do not fit in memory.

Legend: the chunked axis is ``dim`` of every tensor; positions are samples, mel frames or
latent frames, whatever the computation's axis is.

- :class:`LazyStitch`: ``crossfade_stitch([fn(span) for span in spans], spans, length)`` read
  region by region: a region's value is computed from the spans that cover it only (their
  outputs computed on demand, in groups, and dropped once the reader has moved past them), with
  the same weights and the same order of float operations as
  :func:`audiotool.engine.chunking.crossfade_stitch`, so the values are identical.
- :class:`BlockCache`: a region reader over a function computed in fixed, aligned blocks (the
  last few kept), so that overlapping or repeated reads compute each block once.

Both assume that reads mostly move forwards (a region read again after it was dropped is
recomputed: the same values, more time).
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from audiotool.engine.chunking import Span, _fade
from audiotool.errors import EngineError

#: region ``[lo, hi)`` of a chunked signal along the reader's axis
Region = Callable[[int, int], Tensor]


def span_weight(
    spans: Sequence[Span],
    i: int,
    *,
    fade: Literal["hann", "linear"] = "hann",
    device: torch.device | None = None,
) -> Tensor:
    """``crossfade_weights(spans)[i]`` computed from span ``i`` and its two neighbours only."""
    dev = device or torch.device("cpu")
    s = spans[i]
    w = torch.ones(s.length, device=dev)
    if i > 0:
        ov = spans[i - 1].end - s.start
        if ov > 0:
            w[:ov] *= _fade(ov, fade, dev)
    if i + 1 < len(spans):
        ov = s.end - spans[i + 1].start
        if ov > 0:
            w[s.length - ov :] *= 1 - _fade(ov, fade, dev)
    return w


class LazyStitch:
    """Regions of the crossfade-stitched outputs of a chunked computation.

    Args:
        spans: the chunks on the output axis (sorted, as :func:`plan_spans` makes them).
        length: the stitched length.
        compute: span indices -> their outputs (each ``span.length`` long along ``dim``);
            called with up to ``group`` consecutive indices at a time (e.g. one batch).
        dim: the chunked axis of the outputs.
        group: spans computed together when one is missing.
        fade: the crossfade shape.

    Attributes:
        computed: how many span outputs were computed (a span read again after it was
            dropped counts twice).
    """

    def __init__(
        self,
        spans: Sequence[Span],
        length: int,
        compute: Callable[[list[int]], list[Tensor]],
        *,
        dim: int = -1,
        group: int = 1,
        fade: Literal["hann", "linear"] = "hann",
    ) -> None:
        if not spans:
            raise EngineError("no spans to stitch")
        self.spans, self.length, self.compute = list(spans), int(length), compute
        self.dim, self.group, self.fade = dim, max(1, int(group)), fade
        self._starts = [s.start for s in self.spans]
        self._ends = [s.end for s in self.spans]
        self._cache: dict[int, Tensor] = {}
        self.computed = 0

    def _outputs(self, first: int, last: int) -> list[Tensor]:
        """Outputs of spans ``first..last`` (inclusive), computing the missing ones in groups."""
        for i in range(first, last + 1):
            if i not in self._cache:
                todo = [j for j in range(i, min(len(self.spans), i + self.group))]
                todo = [j for j in todo if j not in self._cache]
                for j, y in zip(todo, self.compute(todo), strict=True):
                    if y.shape[self.dim] != self.spans[j].length:
                        raise EngineError(
                            f"chunk of length {y.shape[self.dim]} for a span of "
                            f"{self.spans[j].length}"
                        )
                    self._cache[j] = y
                self.computed += len(todo)
        return [self._cache[i] for i in range(first, last + 1)]

    def __call__(self, lo: int, hi: int) -> Tensor:
        """The stitched values at ``[lo, hi)`` (``0 <= lo < hi <= length``), float32."""
        if not 0 <= lo < hi <= self.length:
            raise EngineError(f"region [{lo}, {hi}) outside [0, {self.length})")
        first = bisect.bisect_right(self._ends, lo)  # the first span ending after lo
        last = bisect.bisect_left(self._starts, hi) - 1  # the last span starting before hi
        # spans that end at or before lo are behind the reader: drop them
        for i in [i for i in self._cache if self._ends[i] <= lo]:
            del self._cache[i]
        outs = self._outputs(first, last)
        ref = outs[0].movedim(self.dim, -1)
        out = ref.new_zeros(*ref.shape[:-1], hi - lo, dtype=torch.float32)
        total = torch.zeros(hi - lo, device=ref.device)
        for i, y in zip(range(first, last + 1), outs, strict=True):
            s = self.spans[i]
            a, b = max(lo, s.start), min(hi, s.end)
            if a >= b:
                continue
            w = span_weight(self.spans, i, fade=self.fade, device=ref.device)
            piece = y.movedim(self.dim, -1).float()[..., a - s.start : b - s.start]
            out[..., a - lo : b - lo] += piece * w[a - s.start : b - s.start]
            total[a - lo : b - lo] += w[a - s.start : b - s.start]
        if bool((total <= 0).any()):
            raise EngineError("the spans do not cover the whole length")
        return (out / total).movedim(-1, self.dim)


class BlockCache:
    """Region reader over ``block_fn`` computed in aligned blocks of ``block`` positions.

    Args:
        block_fn: ``(lo, hi) -> values`` along ``dim``; called with block-aligned regions only
            (``lo = k * block``, ``hi = min(lo + block, length)``).
        length: positions in all.
        block: the block size.
        keep: blocks kept (least recently used dropped first).
        dim: the axis.
    """

    def __init__(
        self, block_fn: Region, length: int, block: int, *, keep: int = 8, dim: int = -1
    ) -> None:
        self.block_fn, self.length, self.block = block_fn, int(length), int(block)
        self.keep, self.dim = max(1, keep), dim
        self._cache: OrderedDict[int, Tensor] = OrderedDict()
        self.computed = 0

    def _block(self, k: int) -> Tensor:
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        lo = k * self.block
        y = self.block_fn(lo, min(lo + self.block, self.length))
        self.computed += 1
        self._cache[k] = y
        while len(self._cache) > self.keep:
            self._cache.popitem(last=False)
        return y

    def __call__(self, lo: int, hi: int) -> Tensor:
        """Values at ``[lo, hi)`` (``0 <= lo < hi <= length``)."""
        if not 0 <= lo < hi <= self.length:
            raise EngineError(f"region [{lo}, {hi}) outside [0, {self.length})")
        k0, k1 = lo // self.block, (hi - 1) // self.block
        parts = []
        for k in range(k0, k1 + 1):
            y = self._block(k)
            a, b = max(lo, k * self.block) - k * self.block, min(hi, (k + 1) * self.block)
            parts.append(y.narrow(self.dim, a, b - k * self.block - a))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=self.dim)

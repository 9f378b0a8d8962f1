"""CUDA graphs for the diffusion denoiser: capture one forward, replay it at every step.

A small UNet on a GPU spends most of a sampler step launching kernels, not running them: a
step is hundreds of short kernels. A CUDA graph records those launches once and replays them
with one call (``torch.cuda.CUDAGraph``; PyTorch's "CUDA Graphs" notes). It needs static
shapes and static memory, so :class:`GraphedDenoiser` keeps one set of input buffers, copies
each call's tensors into them, replays, and returns a copy of the output buffer; a call whose
shapes differ from the captured ones captures again (the engine pads its last mini-batch to the
static batch size so that one capture serves a whole file).

What stays outside the graph, so that it keeps its precision: the sampler's arithmetic
(schedule coefficients in float64, the state ``x_t`` in float32) and the guidance combination.
Only the denoiser runs inside — under autocast when the caller asks for bf16 / fp16.

On anything but a CUDA device the graph path is off (:func:`use_cuda_graphs`); the eager path is
the same function without the capture.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Literal

import torch
from torch import Tensor

from audiotool.errors import UsageError

log = logging.getLogger(__name__)

CudaGraphMode = Literal["auto", "on", "off"]
CUDA_GRAPH_MODES: tuple[str, ...] = ("auto", "on", "off")
Denoiser = Callable[[Tensor, Tensor, Mapping[str, Tensor]], Tensor]


def use_cuda_graphs(mode: str, device: torch.device) -> bool:
    """Whether to capture the denoiser: ``auto`` = on a CUDA device only; ``on`` needs CUDA."""
    if mode not in CUDA_GRAPH_MODES:
        raise UsageError(f"--cuda-graphs must be one of {list(CUDA_GRAPH_MODES)}, got {mode!r}")
    if mode == "off":
        return False
    if device.type != "cuda":
        if mode == "on":
            raise UsageError(
                f"--cuda-graphs on needs a CUDA device, got {device}",
                hint="use --cuda-graphs auto (on for CUDA, off elsewhere) or --device cuda",
            )
        return False
    return True


def with_autocast(denoiser: Denoiser, device: torch.device, dtype: torch.dtype | None) -> Denoiser:
    """``denoiser`` run under ``torch.autocast(device.type, dtype)`` (unchanged for None).

    The autocast weight-cast cache is off: inside a CUDA graph capture its cached casts would
    outlive the capture (PyTorch's CUDA-graph notes ask for ``cache_enabled=False``), and a
    denoiser forward uses each weight once, so the cache saves nothing here.
    """
    if dtype is None:
        return denoiser

    def run(x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        with torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=False):
            return denoiser(x, t, cond)

    return run


@dataclasses.dataclass
class _Captured:
    """One captured forward: its graph and its static input / output buffers."""

    graph: torch.cuda.CUDAGraph
    x: Tensor
    t: Tensor
    cond: dict[str, Tensor]
    out: Tensor


class GraphedDenoiser:
    """A :data:`Denoiser` replayed from CUDA graphs (see the module docstring).

    Inputs ``x`` ``(B, ...)``, ``t`` ``(B,)`` and every tensor of ``cond`` are copied into static
    buffers; a graph is captured on the first call of each signature (shapes, dtypes, the set
    of ``cond`` keys) and kept, up to ``max_graphs`` of them (the oldest is dropped first) —
    a sampler with a guidance interval alternates between a guided batch of ``2B`` and a
    conditional one of ``B``, two graphs. ``captures`` counts them. The returned tensor is a
    copy, so a sampler may keep it across steps.

    Args:
        denoiser: the eager denoiser (already wrapped in autocast if wanted).
        warmup: eager calls on a side stream before the capture (lazy initialisation of
            cuBLAS / cuDNN workspaces must not happen inside the capture).
        max_graphs: how many signatures keep their graph.
    """

    def __init__(self, denoiser: Denoiser, *, warmup: int = 2, max_graphs: int = 4) -> None:
        self.denoiser = denoiser
        self.warmup = warmup
        self.max_graphs = max_graphs
        self.captures = 0
        self._graphs: dict[tuple[object, ...], _Captured] = {}

    @staticmethod
    def _signature(x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> tuple[object, ...]:
        parts: list[object] = [x.shape, x.dtype, x.device, t.shape, t.dtype]
        for k in sorted(cond):
            parts += [k, cond[k].shape, cond[k].dtype, cond[k].stride()]
        return tuple(parts)

    def _capture(self, x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> _Captured:
        if len(self._graphs) >= self.max_graphs:  # free the oldest graph's pool first
            self._graphs.pop(next(iter(self._graphs)))
        sx, st = x.clone(), t.clone()
        scond = {k: v.clone() for k, v in cond.items()}
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.denoiser(sx, st, scond)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.denoiser(sx, st, scond)
        self.captures += 1
        log.debug("captured the denoiser in a CUDA graph for x %s", tuple(x.shape))
        return _Captured(graph, sx, st, scond, out)

    def __call__(self, x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        key = self._signature(x, t, cond)
        cap = self._graphs.get(key)
        if cap is None:
            cap = self._graphs[key] = self._capture(x, t, cond)
        cap.x.copy_(x)
        cap.t.copy_(t)
        for k, v in cond.items():
            cap.cond[k].copy_(v)
        cap.graph.replay()
        return cap.out.clone()


def denoiser_for(
    denoiser: Denoiser,
    device: torch.device,
    *,
    dtype: torch.dtype | None = None,
    cuda_graphs: bool = False,
) -> Denoiser:
    """The denoiser the sampler should call: under autocast for ``dtype``, replayed from a CUDA
    graph when ``cuda_graphs`` (which needs a CUDA ``device``)."""
    run = with_autocast(denoiser, device, dtype)
    if not cuda_graphs:
        return run
    if device.type != "cuda":
        raise UsageError(f"CUDA graphs need a CUDA device, got {device}")
    return GraphedDenoiser(run)

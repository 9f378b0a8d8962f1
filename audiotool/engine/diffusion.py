"""Chunked diffusion sampling with a per-file context.

Legend: ``B`` items of one file (e.g. its channels), ``C`` latent channels, ``T`` latent frames
(the chunked axis), ``F`` latent frequency bins.

A long conditioning latent is cut into overlapping spans along ``T``. Every span of every item is
sampled with DDIM, DPM-Solver++(2M) or UniPC (+ classifier-free guidance in one batched
forward) in mini-batches of ``batch_size`` spans — never one chunk at a time — with
out-of-memory back-off. The per-file ``context`` tensors (e.g. the global encoder's output,
computed ONCE from the whole file by the caller) are given unchanged to every span and every
step. The samples are crossfaded over the overlaps.

Randomness: each span position gets its own generator, seeded from ``generator`` up front, for
its starting noise and its η noise — the same for every item (identical items give identical
samples, the channels of a stereo file get coherent noise), so the noise does not depend on
``batch_size``. The denoiser itself must be batch-invariant for the whole result not to depend
on it (floating-point kernels that change with the batch shape are amplified by a vocoder's
phase retrieval; see :class:`audiotool.models.unet.UNetModel`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from audiotool.engine.batching import ProgressFn, map_batches
from audiotool.engine.chunking import Span, crossfade_stitch, plan_spans
from audiotool.engine.cuda_graphs import denoiser_for
from audiotool.engine.samplers import SAMPLER_NAMES, Denoiser, sample
from audiotool.errors import EngineError

CONCAT = "concat"


def sample_chunked(
    denoiser: Denoiser,
    cond_latent: Tensor,
    *,
    chunk: int,
    overlap: int,
    timesteps: Tensor,
    alphas_cumprod: Tensor,
    out_channels: int | None = None,
    context: Mapping[str, Tensor] | None = None,
    uncond_latent: Tensor | float | None = None,
    guidance: float = 1.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    batch_size: int = 1,
    parameterization: Literal["v", "eps"] = "v",
    time_multiple: int = 1,
    final_alpha: float | None = None,
    sampler: str = "ddim",
    step_callback: Callable[[int, int], None] | None = None,
    chunk_callback: ProgressFn | None = None,
    autocast_dtype: torch.dtype | None = None,
    cuda_graphs: bool = False,
) -> Tensor:
    """Sample ``(B, C_out, T, F)`` latents conditioned on ``cond_latent`` ``(B, C, T, F)``.

    Args:
        denoiser: ``(x_t, t, cond) -> v | ε``; ``cond`` holds ``"concat"`` (the span of
            ``cond_latent``) and every key of ``context``.
        cond_latent: the per-file conditioning latent, chunked along dim 2.
        chunk / overlap: span length and minimum overlap in latent frames.
        timesteps / alphas_cumprod: see :func:`audiotool.engine.samplers.sample_ddim`.
        out_channels: channels of the generated latent (default: ``C``).
        context: per-item tensors ``(B, ...)`` reused for every span and step (not chunked).
        uncond_latent: the ``"concat"`` value of the unconditional pass (a constant or a tensor
            broadcastable to a span); None disables guidance. The context is kept in both passes.
        guidance, eta, parameterization, final_alpha: sampler settings (η: DDIM only).
        sampler: ``"ddim"``, ``"dpmpp-2m"`` or ``"unipc"`` (:mod:`audiotool.engine.samplers`).
        generator: seeds every span position's own generator (shared by the items).
        batch_size: spans per forward (halved on out-of-memory).
        time_multiple: spans shorter than ``chunk`` are padded (replicate) to a multiple of this
            (e.g. the UNet's total downsampling) and cropped back.
        step_callback: ``(step, steps)`` within the current mini-batch.
        chunk_callback: ``(spans_done, spans_total)``.
        autocast_dtype: run the denoiser under autocast in this dtype (None: as it is); the
            sampler's own arithmetic stays float32 / float64.
        cuda_graphs: replay the denoiser from a CUDA graph
            (:class:`audiotool.engine.cuda_graphs.GraphedDenoiser`; CUDA only). The last
            mini-batch is then padded (its last span repeated) to the size of the one before, so
            one capture serves the whole call.
    """
    if cond_latent.dim() != 4:
        raise EngineError(f"cond_latent must be (B, C, T, F), got {tuple(cond_latent.shape)}")
    if sampler not in SAMPLER_NAMES:
        raise EngineError(f"sampler must be one of {', '.join(SAMPLER_NAMES)}, got {sampler!r}")
    if sampler != "ddim" and eta > 0:
        raise EngineError(f"eta > 0 is only supported by the ddim sampler, not {sampler!r}")
    b_items, c, length, f = cond_latent.shape
    c_out = out_channels or c
    ctx = dict(context or {})
    for k, v in ctx.items():
        if k == CONCAT or v.shape[0] not in (1, b_items):
            raise EngineError(f"context '{k}' must have leading dim 1 or {b_items}")
    spans = plan_spans(length, chunk, min(overlap, chunk - 1))
    work: list[tuple[int, Span]] = [(b, s) for b in range(b_items) for s in spans]
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    span_seeds = torch.randint(0, 2**62, (len(spans),), generator=gen).tolist()
    seeds = [span_seeds[i % len(spans)] for i in range(len(work))]
    pad_to = spans[0].length
    if pad_to < chunk and pad_to % time_multiple:
        pad_to += time_multiple - pad_to % time_multiple
    results: list[Tensor | None] = [None] * len(work)
    model = denoiser_for(
        denoiser, cond_latent.device, dtype=autocast_dtype, cuda_graphs=cuda_graphs
    )
    previous: list[tuple[int, int]] = []  # (start, size) of the calls so far

    def run(start: int, stop: int) -> Tensor:
        size = stop - start
        if cuda_graphs and stop == len(work) and previous and previous[-1][0] != start:
            size = max(size, previous[-1][1])  # static shape; not when retrying after an OOM
        previous.append((start, size))
        index = list(range(start, stop)) + [stop - 1] * (size - (stop - start))
        items = [work[i] for i in index]
        concat = torch.stack([_span(cond_latent[b], s, pad_to) for b, s in items])
        gens = [torch.Generator().manual_seed(int(seeds[i])) for i in index]
        x = torch.stack([torch.randn(c_out, pad_to, f, generator=g) for g in gens]).to(
            cond_latent.device
        )
        cond = {CONCAT: concat}
        for k, v in ctx.items():
            idx = torch.tensor([b if v.shape[0] > 1 else 0 for b, _ in items], device=v.device)
            cond[k] = v.index_select(0, idx)
        uncond = None
        if uncond_latent is not None and guidance != 1.0:
            u = (
                torch.full_like(concat, float(uncond_latent))
                if not isinstance(uncond_latent, Tensor)
                else uncond_latent.to(concat).expand_as(concat)
            )
            uncond = {CONCAT: u, **{k: v for k, v in cond.items() if k != CONCAT}}
        cb = (lambda i, n, _x: step_callback(i, n)) if step_callback else None
        out = sample(
            sampler,
            model,
            x,
            timesteps,
            alphas_cumprod,
            cond=cond,
            uncond=uncond,
            guidance=guidance,
            eta=eta,
            parameterization=parameterization,
            generator=gens,
            final_alpha=final_alpha,
            callback=cb,
        )
        return out[: stop - start]

    def done(start: int, stop: int, out: Tensor) -> None:
        for j, i in enumerate(range(start, stop)):
            results[i] = out[j, :, : work[i][1].length]

    map_batches(run, len(work), batch_size, on_done=done, progress=chunk_callback, what="chunks")
    per_item = []
    for b in range(b_items):
        chunks = [results[i] for i, (bb, _) in enumerate(work) if bb == b]
        per_item.append(
            crossfade_stitch([y for y in chunks if y is not None], spans, length, dim=1)
        )
    return torch.stack(per_item)


def _span(latent: Tensor, span: Span, pad_to: int) -> Tensor:
    """``latent`` ``(C, T, F)`` cut to ``span`` and replicate-padded to ``pad_to`` frames."""
    piece = latent[:, span.start : span.end]
    if piece.shape[1] < pad_to:
        piece = F.pad(piece.permute(0, 2, 1), (0, pad_to - piece.shape[1]), mode="replicate")
        piece = piece.permute(0, 2, 1)
    return piece

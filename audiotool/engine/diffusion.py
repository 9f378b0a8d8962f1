"""Chunked diffusion sampling with a per-file context.

Legend: ``B`` items of one file (e.g. its channels), ``C`` latent channels, ``T`` latent frames
(the chunked axis), ``F`` latent frequency bins.

A long conditioning latent is cut into overlapping spans along ``T``. Every span of every item is
sampled with DDIM, DPM-Solver++(2M) or UniPC (+ classifier-free guidance in one batched
forward; sampler, schedule and guidance travel as one :class:`SamplingSettings`) in
mini-batches of ``batch_size`` spans — never one chunk at a time — with out-of-memory
back-off. The per-file ``context`` tensors (e.g. the global encoder's output,
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

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from audiotool.engine.batching import ProgressFn, map_batches
from audiotool.engine.chunking import Span, crossfade_stitch, plan_spans
from audiotool.engine.cuda_graphs import denoiser_for
from audiotool.engine.samplers import FULL_INTERVAL, SAMPLER_NAMES, Denoiser, check_interval, sample
from audiotool.errors import EngineError

CONCAT = "concat"


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """What the sampler does at every span of a :func:`sample_chunked` /
    :class:`ChunkSampler` run; the engine's own settings (chunking, batching, device) are
    separate keywords there. The fields are those of
    :func:`audiotool.engine.samplers.sample_ddim` (and :func:`~audiotool.engine.samplers.sample`).

    Attributes:
        timesteps: descending timesteps to visit, ``(S,)``
            (:func:`audiotool.engine.schedules.sampler_timesteps`).
        alphas_cumprod: ᾱ of the training schedule, ``(num_train_steps,)`` (the samplers'
            coefficients are computed from it in float64).
        sampler: ``"ddim"``, ``"dpmpp-2m"`` or ``"unipc"`` (:mod:`audiotool.engine.samplers`).
        guidance: classifier-free guidance scale (1 = conditional pass only).
        guidance_interval: the noise levels ``t / num_train_steps`` where guidance applies,
            ``(lo, hi)`` inclusive; elsewhere the conditional pass alone
            (:func:`audiotool.engine.samplers.guided_model`).
        eta: DDIM stochasticity (0 deterministic, 1 = AudioSR's default); DDIM only.
        parameterization: what the denoiser predicts, ``"v"`` or ``"eps"`` (ε).
        final_alpha: ᾱ after the last step (None = ᾱ[0], as AudioSR; 1.0 = fully clean).
        uncond_latent: the ``"concat"`` value of the unconditional pass (a constant or a tensor
            broadcastable to a span); None disables guidance. The context is kept in both
            passes.

    Raises:
        EngineError: at construction, for an unknown sampler, η > 0 with a sampler other than
            DDIM, or a guidance interval outside ``0 <= lo <= hi <= 1`` (stored as two floats).
    """

    timesteps: Tensor
    alphas_cumprod: Tensor
    sampler: str = "ddim"
    guidance: float = 1.0
    guidance_interval: tuple[float, float] = FULL_INTERVAL
    eta: float = 0.0
    parameterization: Literal["v", "eps"] = "v"
    final_alpha: float | None = None
    uncond_latent: Tensor | float | None = None

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLER_NAMES:
            raise EngineError(
                f"sampler must be one of {', '.join(SAMPLER_NAMES)}, got {self.sampler!r}"
            )
        if self.sampler != "ddim" and self.eta > 0:
            raise EngineError(
                f"eta > 0 is only supported by the ddim sampler, not {self.sampler!r}"
            )
        object.__setattr__(self, "guidance_interval", check_interval(self.guidance_interval))


def sample_chunked(
    denoiser: Denoiser,
    cond_latent: Tensor,
    settings: SamplingSettings,
    *,
    chunk: int,
    overlap: int,
    out_channels: int | None = None,
    context: Mapping[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 1,
    time_multiple: int = 1,
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
        settings: the sampler, its schedule and guidance (:class:`SamplingSettings`).
        chunk / overlap: span length and minimum overlap in latent frames.
        out_channels: channels of the generated latent (default: ``C``).
        context: per-item tensors ``(B, ...)`` reused for every span and step (not chunked).
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
            mini-batch of a call is then padded (its last span repeated) to the size of the one
            before, so one capture serves the whole call.
    """
    if cond_latent.dim() != 4:
        raise EngineError(f"cond_latent must be (B, C, T, F), got {tuple(cond_latent.shape)}")
    b_items, _, length, _ = cond_latent.shape
    chunks = ChunkSampler(
        denoiser,
        b_items,
        length,
        chunk=chunk,
        overlap=overlap,
        out_channels=out_channels or int(cond_latent.shape[1]),
        settings=settings,
        context=context,
        generator=generator,
        batch_size=batch_size,
        time_multiple=time_multiple,
        step_callback=step_callback,
        autocast_dtype=autocast_dtype,
        cuda_graphs=cuda_graphs,
        device=cond_latent.device,
    )
    spans = chunks.spans
    outs = chunks.sample(
        range(len(spans)), lambda s: cond_latent[:, :, s.start : s.end], progress=chunk_callback
    )
    per_item = [
        crossfade_stitch([y[b] for y in outs], spans, length, dim=1) for b in range(b_items)
    ]
    return torch.stack(per_item)


class ChunkSampler:
    """The chunked sampling of :func:`sample_chunked`, span by span: the plan (spans, each
    span position's seed, padding) is made up front from the whole length, and any group of
    spans can then be sampled on its own — the same noise and the same results as in one
    :func:`sample_chunked` call (given a batch-invariant denoiser), so a long file can be
    sampled a few spans at a time with :class:`audiotool.engine.stitching.LazyStitch`.

    Args: as :func:`sample_chunked`, with ``items`` (``B``) and ``length`` (``T``) of the
    conditioning latent instead of the latent itself, ``out_channels`` required, and the
    ``device`` the denoiser runs on (for ``cuda_graphs`` / ``autocast_dtype``).

    Attributes:
        spans: the planned spans along ``T``.
        settings: the :class:`SamplingSettings` every span is sampled with.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        items: int,
        length: int,
        *,
        chunk: int,
        overlap: int,
        out_channels: int,
        settings: SamplingSettings,
        context: Mapping[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 1,
        time_multiple: int = 1,
        step_callback: Callable[[int, int], None] | None = None,
        autocast_dtype: torch.dtype | None = None,
        cuda_graphs: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        self.settings = settings
        self.ctx = dict(context or {})
        for k, v in self.ctx.items():
            if k == CONCAT or v.shape[0] not in (1, items):
                raise EngineError(f"context '{k}' must have leading dim 1 or {items}")
        self.denoiser = denoiser_for(
            denoiser, torch.device(device), dtype=autocast_dtype, cuda_graphs=cuda_graphs
        )
        self.cuda_graphs = cuda_graphs
        self.items, self.c_out = int(items), int(out_channels)
        self.chunk = chunk
        self.spans = plan_spans(length, chunk, min(overlap, chunk - 1))
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        self.seeds = torch.randint(0, 2**62, (len(self.spans),), generator=gen).tolist()
        pad_to = self.spans[0].length
        if pad_to < chunk and pad_to % time_multiple:
            pad_to += time_multiple - pad_to % time_multiple
        self.pad_to = pad_to
        self.batch_size, self.step_callback = batch_size, step_callback

    def sample(
        self,
        indices: Sequence[int],
        cond_of: Callable[[Span], Tensor],
        *,
        progress: ProgressFn | None = None,
    ) -> list[Tensor]:
        """Sample the spans ``indices``: ``cond_of(span)`` gives the conditioning latent
        ``(B, C, span.length, F)`` of a span; returns ``(B, C_out, span.length, F)`` per span.
        The spans of every item go through the denoiser in mini-batches of ``batch_size``."""
        st = self.settings
        order = list(indices)
        conds = {i: cond_of(self.spans[i]) for i in order}
        work = [(b, i) for b in range(self.items) for i in order]
        results: list[Tensor | None] = [None] * len(work)
        previous: list[tuple[int, int]] = []  # (start, size) of the calls so far

        def run(start: int, stop: int) -> Tensor:
            size = stop - start
            if self.cuda_graphs and stop == len(work) and previous and previous[-1][0] != start:
                size = max(size, previous[-1][1])  # static shape; not when retrying after an OOM
            previous.append((start, size))
            todo = [work[i] for i in range(start, stop)] + [work[stop - 1]] * (
                size - (stop - start)
            )
            concat = torch.stack([_pad(conds[i][b], self.pad_to) for b, i in todo])
            gens = [torch.Generator().manual_seed(int(self.seeds[i])) for _, i in todo]
            f = int(concat.shape[-1])
            x = torch.stack(
                [torch.randn(self.c_out, self.pad_to, f, generator=g) for g in gens]
            ).to(concat.device)
            cond = {CONCAT: concat}
            for k, v in self.ctx.items():
                idx = torch.tensor([b if v.shape[0] > 1 else 0 for b, _ in todo], device=v.device)
                cond[k] = v.index_select(0, idx)
            uncond = None
            if st.uncond_latent is not None and st.guidance != 1.0:
                u = (
                    torch.full_like(concat, float(st.uncond_latent))
                    if not isinstance(st.uncond_latent, Tensor)
                    else st.uncond_latent.to(concat).expand_as(concat)
                )
                uncond = {CONCAT: u, **{k: v for k, v in cond.items() if k != CONCAT}}
            step = self.step_callback
            cb = (lambda i, n, _x: step(i, n)) if step else None
            out = sample(
                st.sampler,
                self.denoiser,
                x,
                st.timesteps,
                st.alphas_cumprod,
                cond=cond,
                uncond=uncond,
                guidance=st.guidance,
                guidance_interval=st.guidance_interval,
                eta=st.eta,
                parameterization=st.parameterization,
                generator=gens,
                final_alpha=st.final_alpha,
                callback=cb,
            )
            return out[: stop - start]

        def done(start: int, stop: int, out: Tensor) -> None:
            for j, w in enumerate(range(start, stop)):
                results[w] = out[j, :, : self.spans[work[w][1]].length]

        map_batches(run, len(work), self.batch_size, on_done=done, progress=progress, what="chunks")
        per_span = []
        for k in range(len(order)):
            ys = [results[b * len(order) + k] for b in range(self.items)]
            per_span.append(torch.stack([y for y in ys if y is not None]))
        return per_span


def _pad(piece: Tensor, pad_to: int) -> Tensor:
    """A span's latent ``(C, T_span, F)`` replicate-padded to ``pad_to`` frames."""
    if piece.shape[1] < pad_to:
        piece = F.pad(piece.permute(0, 2, 1), (0, pad_to - piece.shape[1]), mode="replicate")
        piece = piece.permute(0, 2, 1)
    return piece

"""`separate` with demucs' own scheme (v4 ``htdemucs``, and ``hdemucs`` imported from demucs):
the mixture standardised by the mean / deviation of its channel mean, cut and weighted as
demucs' ``apply_model`` does (:class:`~audiotool.engine.segments.DemucsPlan`), shifted passes
as demucs' ``shifts``. The streamed path of the same scheme is in
:mod:`audiotool.tasks.separate_stream`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from audiotool.errors import UsageError
from audiotool.progress import Progress, chunk_progress
from audiotool.tasks._separate_plan import channel_groups, model_stems

if TYPE_CHECKING:
    from torch import nn

    from audiotool.tasks.common import Runtime
    from audiotool.tasks.separate import SeparateOptions


def demucs_scheme(config: Any) -> bool:
    """Whether ``config``'s model is cut and weighted as demucs' ``apply_model`` does (see
    :class:`~audiotool.engine.segments.DemucsPlan`): v4 ``htdemucs``, and ``hdemucs`` models
    imported from demucs (they carry demucs' ``segment_samples``; torchaudio's own HDemucs
    checkpoints keep audiotool's overlap-add)."""
    family = getattr(config, "family", None)
    if family == "htdemucs":
        return True
    return family == "hdemucs" and getattr(config, "segment_samples", None) is not None


def _segment_cap(config: Any) -> int | None:
    """The longest segment a demucs-scheme model takes: an HT model's training segment (its
    ``valid_length``); v3 HDemucs takes any length."""
    return int(config.segment_samples) if config.family == "htdemucs" else None


def check_scheme_options(config: Any, options: SeparateOptions) -> None:
    """Refuse options a demucs-scheme model cannot honour before any file is read."""
    if not demucs_scheme(config):
        return
    if options.hop_seconds is not None:
        raise UsageError(f"--hop-seconds does not apply to {config.family} models; use --overlap")
    cap = _segment_cap(config)
    if options.chunk_seconds is not None and cap is not None:
        seg = cap / int(config.sample_rate)
        if not 0 < options.chunk_seconds <= seg:
            raise UsageError(
                f"--chunk-seconds must be in (0, {seg:.2f}] for {config.family} models"
            )
    elif options.chunk_seconds is not None and options.chunk_seconds <= 0:
        raise UsageError(f"--chunk-seconds must be positive, got {options.chunk_seconds}")


def demucs_segment(config: Any, options: SeparateOptions) -> tuple[float, int, int | None]:
    """(overlap, segment samples, segment cap) of a demucs-scheme run.

    Raises:
        UsageError: ``--hop-seconds``, an overlap outside [0, 1), or a chunk the model
            cannot take.
    """
    rate = int(config.sample_rate)
    if options.hop_seconds is not None:
        raise UsageError(f"--hop-seconds does not apply to {config.family} models; use --overlap")
    overlap = float(config.default_overlap) if options.overlap is None else options.overlap
    if not 0.0 <= overlap < 1.0:
        raise UsageError(f"--overlap must be in [0, 1), got {overlap}")
    segment = int(config.segment_samples)
    cap = _segment_cap(config)
    if options.chunk_seconds is not None:
        wanted = int(options.chunk_seconds * rate)
        if wanted <= 0 or (cap is not None and wanted > cap):
            raise UsageError(
                f"--chunk-seconds must be in (0, {segment / rate:.2f}] for this model "
                "(its training segment)"
                if cap is not None
                else f"--chunk-seconds must be positive (at least one sample), got "
                f"{options.chunk_seconds}"
            )
        segment = wanted
    return overlap, segment, cap


def separate_demucs(
    model: nn.Module,
    config: Any,
    audio: Tensor,
    sample_rate: int,
    *,
    options: SeparateOptions,
    runtime: Runtime,
    progress: Progress | None = None,
) -> dict[str, Tensor]:
    """:func:`~audiotool.tasks.separate.separate_tensor` for demucs-scheme models: the mixture is
    standardised by the mean/std of its channel mean (demucs' ``Separator``), cut by
    :class:`~audiotool.engine.segments.DemucsPlan`, and de-standardised."""
    from audiotool.audio import finish, resample
    from audiotool.engine.segments import DemucsPlan, run_segments

    rate = int(config.sample_rate)
    overlap, segment, cap = demucs_segment(config, options)
    c_in, length = int(audio.shape[0]), int(audio.shape[-1])
    x = resample(audio, sample_rate, rate, device=runtime.device)
    max_shift = int(0.5 * rate)
    gen = torch.Generator().manual_seed(runtime.seed)
    shifts = [
        int(torch.randint(0, max_shift + 1, (1,), generator=gen)) for _ in range(options.shifts)
    ]
    stems = model_stems(config)
    groups = channel_groups(x, int(config.audio_channels))
    # the stems are accumulated in place (no per-stem temporaries): for a 10-minute song each
    # (C, T) copy of four stems is 0.8 GB
    total: dict[str, Tensor] = {}
    per_channel = c_in != int(config.audio_channels)
    chunks_cb = chunk_progress(progress)
    for gi, g in enumerate(groups):
        ref = g.mean(0)
        mean, std = ref.mean(), ref.std() + 1e-8
        norm = (g - mean) / std
        passes: list[int | None] = list(shifts) if shifts else [None]
        for shift in passes:
            lead = 0 if shift is None else max_shift - shift
            padded = torch.nn.functional.pad(norm, (lead, 0)) if lead else norm
            plan = DemucsPlan(int(padded.shape[-1]), segment, overlap, pad_last=cap is not None)
            out = run_segments(
                model,
                padded,
                plan,
                batch_size=runtime.batch_size,
                device=runtime.device,
                dtype=runtime.dtype,
                progress=chunks_cb,
            )
            for s in stems:
                y = out.pop(s)[..., lead:].to(runtime.device).mul_(std).add_(mean)
                if per_channel:
                    if s not in total:
                        total[s] = torch.zeros(c_in, x.shape[-1], device=runtime.device)
                    total[s][gi] += y.mean(0)
                elif s not in total:
                    total[s] = y
                else:
                    total[s] += y
            del out
    if len(shifts) > 1:
        for v in total.values():
            v.div_(len(shifts))
    if options.mixture_consistent:
        excess = (x - sum(total.values())) / len(stems)
        for v in total.values():
            v.add_(excess)
    return {s: finish(total.pop(s), rate, sample_rate, length) for s in stems}

"""`separate`: split mixtures into stems with batched overlap-add.

Pipeline per file: read -> channel policy -> resample to the model rate -> (optional
test-time shifts) overlap-add over chunks, mini-batched on the device -> optional
mixture-consistency projection -> resample back -> chosen stems (+ residual) -> atomic writes.
Outputs keep the input's sample rate and channel count.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from audiotool.errors import UsageError
from audiotool.paths import ExpandedInputs
from audiotool.progress import Progress, chunk_progress
from audiotool.tasks._batch import (
    BatchReport,
    OutputOptions,
    ProcessFn,
    Produced,
    RuntimeOptions,
    ScaleOptions,
    Streaming,
    WorkItem,
    output_planner,
    run_files,
)
from audiotool.tasks._packing import FileWork, Packing
from audiotool.tasks.common import (
    Runtime,
    TaskModel,
    load_task_model,
    resolve_task_model,
    run_identity,
)

if TYPE_CHECKING:
    from torch import nn

    from audiotool.audio import AudioData
    from audiotool.engine.lockstep import Windowed
    from audiotool.engine.overlap_add import OverlapAddJob
    from audiotool.hub import LoadedModel
    from audiotool.stream import AudioSource, Resampled

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{track}/{stem}.{ext}"
DEFAULT_DIR = Path("separated")
MAX_SHIFT_SECONDS = 0.5


@dataclasses.dataclass(frozen=True)
class SeparateOptions:
    """What to separate and how.

    Attributes:
        stems: stems to write (None = all of the model's).
        residual: also write mixture minus the chosen stems (``no_<stem>`` for one stem,
            ``rest`` for several).
        chunk_seconds: chunk length (None = the model's default).
        overlap: overlap between chunks as a fraction of the chunk (exclusive with hop).
        hop_seconds: hop between chunk starts (None = from overlap, else the model's default).
        shifts: test-time shift averaging: the mixture is also separated N times delayed by
            random offsets of up to 0.5 s (drawn from the seed) and the results averaged.
        mixture_consistent: project the stems so that they sum exactly to the mixture (the
            residual is shared equally between all stems of the model).
        query: reference clip for query-conditioned models (``query_dim > 0`` with
            ``query_source="reference"``): its embedding conditions every chunk.
        query_model: the embed model that turns the query (or, for ``query_source="mixture"``,
            the whole mixture) into the conditioning vector; default: the zoo's embed model.
        ensemble: how the stems of several models combine (one of :data:`ENSEMBLE_METHODS`):
            ``avg`` waveform mean, ``median`` waveform median, ``max_spec`` / ``min_spec``
            per STFT bin the estimate of largest / smallest magnitude.

    For demucs-scheme models (``htdemucs``, and ``hdemucs`` imported from demucs, see
    :func:`demucs_scheme`) ``overlap`` defaults to the model's 0.25, ``chunk_seconds`` replaces
    the segment (for ``htdemucs`` it may only shorten the training segment), ``hop_seconds``
    does not apply and ``shifts=N`` means N randomly shifted passes, as in demucs.
    """

    stems: tuple[str, ...] | None = None
    residual: bool = False
    chunk_seconds: float | None = None
    overlap: float | None = None
    hop_seconds: float | None = None
    shifts: int = 0
    mixture_consistent: bool = False
    query: Path | None = None
    query_model: str | None = None
    ensemble: str = "avg"


ENSEMBLE_METHODS = ("avg", "median", "max_spec", "min_spec")


def model_stems(config: Any) -> tuple[str, ...]:
    """The stems a separation config produces."""
    for name in ("stems", "sources"):
        value = getattr(config, name, None)
        if value:
            return tuple(value)
    raise UsageError(f"model family '{config.family}' does not declare its stems")


def choose_stems(available: Sequence[str], wanted: Sequence[str] | None) -> tuple[str, ...]:
    """Validate ``--stems`` against the model's stems (the error lists them); None: all."""
    if wanted is None:
        return tuple(available)
    if not wanted:
        raise UsageError(
            "--stems is empty: name at least one stem",
            hint=f"this model produces {', '.join(available)} (omit --stems for all)",
        )
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise UsageError(
            f"--stems {','.join(unknown)}: not produced by this model",
            hint=f"it produces {', '.join(available)}",
        )
    if len(set(wanted)) != len(wanted):
        raise UsageError(f"--stems lists a stem twice: {','.join(wanted)}")
    return tuple(wanted)


def residual_name(chosen: Sequence[str]) -> str:
    return f"no_{chosen[0]}" if len(chosen) == 1 else "rest"


#: families chunked with their reference's own scheme (engine.segments) instead of overlap-add
SEGMENT_FAMILIES = frozenset({"roformer"})


def segment_chunking(config: Any, options: SeparateOptions) -> tuple[int, int]:
    """(chunk, step) in samples for the ``roformer`` family (python-audio-separator's scheme).

    Defaults: the model's ``chunk_size`` and ``chunk_size // num_overlap``. ``--chunk-seconds``
    is rounded to whole STFT hops; ``--overlap N`` with N >= 1 (an integer) is MSST's
    ``num_overlap`` (step ``chunk // N``), a fraction in [0, 1) gives step ``chunk * (1 - o)``;
    ``--hop-seconds`` gives the step directly.
    """
    rate, hop = int(config.sample_rate), int(config.stft_hop_length)
    chunk = int(config.chunk_size)
    if options.chunk_seconds is not None:
        if options.chunk_seconds <= 0:
            raise UsageError(f"--chunk-seconds must be positive, got {options.chunk_seconds:g}")
        chunk = hop * max(1, round(options.chunk_seconds * rate / hop))
    if options.overlap is not None and options.hop_seconds is not None:
        raise UsageError("give either --overlap or --hop-seconds, not both")
    if options.hop_seconds is not None:
        step = round(options.hop_seconds * rate)
    elif options.overlap is not None:
        o = options.overlap
        if o >= 1:
            if o != int(o):
                raise UsageError(
                    f"--overlap must be a fraction in [0, 1) or a whole num_overlap, got {o:g}"
                )
            step = chunk // int(o)
        elif o >= 0:
            step = max(1, round(chunk * (1.0 - o)))
        else:
            raise UsageError(f"--overlap must not be negative, got {o:g}")
    else:
        step = chunk // int(config.num_overlap)
    if not 1 <= step <= chunk:
        raise UsageError(f"the hop must be in [1, {chunk}] samples (the chunk), got {step}")
    return chunk, step


def chunk_plan(config: Any, options: SeparateOptions) -> tuple[float, float]:
    """(chunk_seconds, hop_seconds) from the options and the model's defaults."""
    if getattr(config, "family", "") in SEGMENT_FAMILIES:
        chunk_n, step_n = segment_chunking(config, options)
        return chunk_n / config.sample_rate, step_n / config.sample_rate
    chunk = options.chunk_seconds or float(getattr(config, "default_chunk_seconds", 6.0))
    if options.overlap is not None and options.hop_seconds is not None:
        raise UsageError("give either --overlap or --hop-seconds, not both")
    if options.hop_seconds is not None:
        hop = options.hop_seconds
    elif options.overlap is not None:
        if not 0.0 <= options.overlap < 1.0:
            raise UsageError(f"--overlap must be in [0, 1), got {options.overlap}")
        hop = chunk * (1.0 - options.overlap)
    elif options.chunk_seconds is not None:
        hop = chunk / 2
    else:
        hop = float(getattr(config, "default_hop_seconds", chunk / 2))
    if not 0 < hop <= chunk:
        raise UsageError(f"the hop must be in (0, chunk={chunk:g} s], got {hop:g} s")
    return chunk, hop


def separate_tensor(
    model: nn.Module,
    config: Any,
    audio: torch.Tensor,
    sample_rate: int,
    *,
    options: SeparateOptions,
    runtime: Runtime,
    progress: Progress | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Separate one mixture.

    Args:
        model: ``(B, C_m, T) -> {stem: (B, C_m, T)}`` at ``config.sample_rate``.
        config: the model's config (stems, sample_rate, audio channels, chunk defaults).
        audio: mixture ``(C, T)`` at ``sample_rate`` (any channel count).
        options: chunking, shifts, consistency.
        runtime: device, dtype, batch size, seed.
        model_kwargs: extra keyword arguments for every chunk (e.g. ``query=``).

    Returns:
        ``{stem: (C, T)}`` for every model stem, at ``sample_rate``, float32 on the CPU.
    """
    import torch

    from audiotool.audio import prepare
    from audiotool.engine.overlap_add import OverlapAddProcessor

    if isinstance(config, EnsembleConfig):
        return _separate_ensemble(
            model, config, audio, sample_rate, options=options, runtime=runtime, progress=progress
        )
    if demucs_scheme(config):
        return _separate_demucs(
            model, config, audio, sample_rate, options=options, runtime=runtime, progress=progress
        )
    rate = int(config.sample_rate)
    model_channels = int(getattr(config, "audio_channels", 2))
    chunk, hop = chunk_plan(config, options)
    segment_plan = getattr(config, "family", "") in SEGMENT_FAMILIES
    c_in, length = int(audio.shape[0]), int(audio.shape[-1])
    # channel policy: matching count -> as is; otherwise every input channel separately
    # (duplicated to the model's channel count, averaged back)
    per_channel = c_in != model_channels
    x = prepare(audio, sample_rate, rate, device=runtime.device)
    processor = OverlapAddProcessor(chunk, hop, rate)
    kwargs = dict(model_kwargs or {})
    chunks_cb = chunk_progress(progress)

    def run(signal: Tensor) -> dict[str, Tensor]:
        if segment_plan:  # the reference's own chunking and weights
            from audiotool.engine.segments import RoformerPlan, run_segments

            chunk_n, step_n = segment_chunking(config, options)
            plan = RoformerPlan(int(signal.shape[-1]), chunk=chunk_n, step=step_n)
            return run_segments(
                model,
                signal,
                plan,
                batch_size=runtime.batch_size,
                device=runtime.device,
                dtype=runtime.dtype,
                progress=chunks_cb,
                **kwargs,
            )
        return processor.process(
            model,
            signal,
            runtime.batch_size,
            runtime.device,
            dtype=runtime.dtype,
            progress=chunks_cb,
            **kwargs,
        )

    gen = torch.Generator().manual_seed(runtime.seed)
    offsets = [0] + [
        int(torch.randint(0, int(MAX_SHIFT_SECONDS * rate), (1,), generator=gen))
        for _ in range(options.shifts)
    ]
    stems = model_stems(config)
    total = {s: torch.zeros(c_in, x.shape[-1], device=runtime.device) for s in stems}
    for offset in offsets:
        for gi, g in enumerate(_channel_groups(x, model_channels)):
            padded = torch.nn.functional.pad(g, (offset, 0)) if offset else g
            _add_group(total, run(padded), gi, offset, per_channel=per_channel)
    return _stems_at_input_rate(total, len(offsets), x, config, options, sample_rate, length)


def _add_group(
    total: dict[str, Tensor], out: Mapping[str, Tensor], gi: int, offset: int, *, per_channel: bool
) -> None:
    """Add the stems ``{stem: (C_m, offset + T)}`` of channel group ``gi`` (delayed by
    ``offset``) into ``total`` ``{stem: (C, T)}`` (the group's channel mean when every input
    channel was separated on its own)."""
    for s, acc in total.items():
        y = out[s][..., offset : offset + acc.shape[-1]].to(acc.device)
        if per_channel:
            acc[gi] += y.mean(0)
        else:
            acc += y


def _stems_at_input_rate(
    total: dict[str, Tensor],
    passes: int,
    x: Tensor,
    config: Any,
    options: SeparateOptions,
    sample_rate: int,
    length: int,
) -> dict[str, Tensor]:
    """The mean of ``passes`` summed passes, made mixture-consistent with ``x`` ``(C, T)`` (the
    mixture at the model rate) if asked, back at ``sample_rate`` and ``length`` samples."""
    from audiotool.audio import finish

    rate = int(config.sample_rate)
    result = {s: v / passes for s, v in total.items()}
    if options.mixture_consistent:
        excess = (x - sum(result.values())) / len(result)
        result = {s: v + excess for s, v in result.items()}
    return {s: finish(v, rate, sample_rate, length) for s, v in result.items()}


def packable(config: Any, options: SeparateOptions) -> bool:
    """Whether short files of ``config``'s model can share forward passes
    (:mod:`audiotool.tasks._packing`): audiotool's overlap-add scheme without ``--shifts``.
    The RoFormer and demucs schemes (their own segment weighting) and ensembles run file by
    file."""
    if isinstance(config, EnsembleConfig) or demucs_scheme(config):
        return False
    return getattr(config, "family", "") not in SEGMENT_FAMILIES and options.shifts == 0


def separation_jobs(
    config: Any,
    x: Tensor,
    *,
    options: SeparateOptions,
    runtime: Runtime,
    model_kwargs: Mapping[str, Any] | None = None,
) -> list[OverlapAddJob]:
    """The overlap-add jobs of a mixture ``x`` ``(C, T)`` at the model rate: one per channel
    group (:func:`_channel_groups`), each chunk with ``model_kwargs`` (a per-file query)."""
    from audiotool.engine.overlap_add import OverlapAddProcessor

    chunk, hop = chunk_plan(config, options)
    processor = OverlapAddProcessor(chunk, hop, int(config.sample_rate))
    groups = _channel_groups(x, int(getattr(config, "audio_channels", 2)))
    return [processor.job(g, runtime.device, **dict(model_kwargs or {})) for g in groups]


def stems_from_jobs(
    config: Any,
    x: Tensor,
    jobs: Sequence[OverlapAddJob],
    *,
    channels: int,
    options: SeparateOptions,
    runtime: Runtime,
    sample_rate: int,
    length: int,
) -> dict[str, Tensor]:
    """:func:`separate_tensor`'s result from the finished :func:`separation_jobs` of ``x``
    (the input had ``channels`` channels and ``length`` samples at ``sample_rate``)."""
    total = {
        s: torch.zeros(channels, x.shape[-1], device=runtime.device) for s in model_stems(config)
    }
    per_channel = channels != int(getattr(config, "audio_channels", 2))
    for gi, job in enumerate(jobs):
        with torch.inference_mode():
            out = job.result()
        _add_group(total, out, gi, 0, per_channel=per_channel)
    return _stems_at_input_rate(total, 1, x, config, options, sample_rate, length)


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


def _channel_groups(x: Tensor, model_channels: int) -> list[Tensor]:
    """The separation channel policy, for every scheme: the model inputs ``(C_m, T)`` for a
    ``(C, T)`` mixture are the mixture itself when the channel counts match, else each channel
    on its own, duplicated to ``C_m`` (the caller averages its stems back to one channel)."""
    if x.shape[0] == model_channels:
        return [x]
    return [x[c : c + 1].expand(model_channels, -1) for c in range(x.shape[0])]


def _demucs_segment(config: Any, options: SeparateOptions) -> tuple[float, int, int | None]:
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


def _separate_demucs(
    model: nn.Module,
    config: Any,
    audio: Tensor,
    sample_rate: int,
    *,
    options: SeparateOptions,
    runtime: Runtime,
    progress: Progress | None = None,
) -> dict[str, Tensor]:
    """:func:`separate_tensor` for demucs-scheme models: the mixture is standardised by the
    mean/std of its channel mean (demucs' ``Separator``), cut by
    :class:`~audiotool.engine.segments.DemucsPlan`, and de-standardised."""
    from audiotool.audio import finish, resample
    from audiotool.engine.segments import DemucsPlan, run_segments

    rate = int(config.sample_rate)
    overlap, segment, cap = _demucs_segment(config, options)
    c_in, length = int(audio.shape[0]), int(audio.shape[-1])
    x = resample(audio, sample_rate, rate, device=runtime.device)
    max_shift = int(0.5 * rate)
    gen = torch.Generator().manual_seed(runtime.seed)
    shifts = [
        int(torch.randint(0, max_shift + 1, (1,), generator=gen)) for _ in range(options.shifts)
    ]
    stems = model_stems(config)
    groups = _channel_groups(x, int(config.audio_channels))
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


# --------------------------------------------------------------------------- ensembles


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    """What :func:`separate_tensor` needs to know of an ensemble of separators.

    Attributes:
        members: the loaded models.
        stems: the stems every member produces (in the first model's order) and that are kept.
        method: one of :data:`ENSEMBLE_METHODS`.
    """

    family: ClassVar[str] = "ensemble"
    task: ClassVar[str] = "separate"

    members: tuple[LoadedModel, ...]
    stems: tuple[str, ...]
    method: str

    @property
    def sample_rate(self) -> int:
        return int(self.members[0].config.sample_rate)


class EnsembleModule(torch.nn.Module):
    """The members' modules, held together (they run through :func:`separate_tensor` one by
    one, each with its own scheme; calling this module directly is an error)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(models)

    def forward(self, mix: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError("separate an ensemble with separate_tensor(model, config, ...)")


def _check_scheme_options(config: Any, options: SeparateOptions) -> None:
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


def split_specs(specs: str | Sequence[str] | None) -> list[str]:
    """``--model`` values (repeatable, each possibly a comma list) -> specs."""
    if specs is None:
        return []
    items = [specs] if isinstance(specs, str) else list(specs)
    return [p.strip() for item in items for p in item.split(",") if p.strip()]


def resolve_separators(
    specs: str | Sequence[str] | None, *, revision: str | None, options: SeparateOptions
) -> tuple[list[TaskModel], tuple[str, ...]]:
    """Resolve one separator or several (an ensemble) and check the options against their
    configs, before any weights load; returns the models and the stems they all produce.

    Raises:
        UsageError: unknown ``--ensemble`` method, a ``--stems`` stem that some model does not
            produce (the error names the model), models with no stem in common, or an option a
            model's scheme cannot honour.
    """
    if options.ensemble not in ENSEMBLE_METHODS:
        raise UsageError(
            f"--ensemble must be one of {list(ENSEMBLE_METHODS)}, got '{options.ensemble}'"
        )
    names: list[str | None] = list(split_specs(specs)) or [None]
    members = [resolve_task_model(n, "separate", revision=revision) for n in names]
    for m in members:
        _check_scheme_options(m.config, options)
    produced = [model_stems(m.config) for m in members]
    if len(members) > 1:
        for stem in options.stems or ():
            for name, have in zip(names, produced, strict=True):
                if stem not in have:
                    raise UsageError(
                        f"--stems {stem}: model '{name}' does not produce it",
                        hint=f"it produces {', '.join(have)}",
                    )
    common = tuple(s for s in produced[0] if all(s in p for p in produced[1:]))
    if not common:
        raise UsageError(f"the models {names} have no stem in common")
    return members, common


def load_separator(
    members: Sequence[TaskModel], stems: tuple[str, ...], *, runtime: Runtime, method: str
) -> tuple[nn.Module, Any]:
    """Load resolved separators: ``(module, config)`` for :func:`separate_tensor` (one model,
    or an :class:`EnsembleModule` with an :class:`EnsembleConfig`)."""
    loaded = [m.load(runtime) for m in members]
    if len(loaded) == 1:
        return loaded[0].model, loaded[0].config
    config = EnsembleConfig(members=tuple(loaded), stems=stems, method=method)
    return EnsembleModule([m.model for m in loaded]), config


def combine_stems(estimates: Sequence[Tensor], method: str) -> Tensor:
    """Combine ``K`` estimates ``(C, T)`` of one stem into one ``(C, T)``.

    ``avg``: mean; ``median``: sample-wise median (mean of the two middle values for even K);
    ``max_spec`` / ``min_spec``: per STFT bin (2048-point Hann, hop 512) the complex value of
    the estimate with the largest / smallest magnitude, inverted with the iSTFT.
    """
    stack = torch.stack(list(estimates))
    if method == "avg":
        return stack.mean(0)
    if method == "median":
        ordered = stack.sort(0).values
        k = ordered.shape[0]
        return ordered[k // 2] if k % 2 else (ordered[k // 2 - 1] + ordered[k // 2]) / 2
    if method in ("max_spec", "min_spec"):
        k, c, t = stack.shape
        n_fft = 2048
        window = torch.hann_window(n_fft, device=stack.device)
        spec = torch.stft(
            stack.reshape(k * c, t), n_fft, 512, window=window, return_complex=True
        ).view(k, c, n_fft // 2 + 1, -1)
        mag = spec.abs()
        pick = (mag.argmax(0) if method == "max_spec" else mag.argmin(0))[None]
        chosen = torch.gather(spec, 0, pick)[0]
        return torch.istft(chosen, n_fft, 512, window=window, length=t)
    raise UsageError(f"--ensemble must be one of {list(ENSEMBLE_METHODS)}, got '{method}'")


def _separate_ensemble(
    model: Any,
    config: EnsembleConfig,
    audio: Tensor,
    sample_rate: int,
    *,
    options: SeparateOptions,
    runtime: Runtime,
    progress: Progress | None = None,
) -> dict[str, Tensor]:
    """Every member separates ``audio``; each kept stem combines by ``config.method``."""
    per_model = [
        separate_tensor(
            m.model,
            m.config,
            audio,
            sample_rate,
            options=dataclasses.replace(options, mixture_consistent=False),
            runtime=runtime,
            progress=progress,
        )
        for m in config.members
    ]
    out = {s: combine_stems([p[s] for p in per_model], config.method) for s in config.stems}
    if options.mixture_consistent:
        excess = (audio - sum(out.values())) / len(out)
        out = {s: v + excess for s, v in out.items()}
    return out


ContextFn = Callable[[Tensor, int], dict[str, Tensor]]


def _query_context(config: Any, options: SeparateOptions, runtime: Runtime) -> ContextFn | None:
    """For query-conditioned models, a function giving each file's ``query=`` kwarg.

    ``query_source="reference"``: the reference clip's pooled embedding, computed once and used
    for every file; ``"mixture"``: the whole mixture's pooled embedding, computed once per file
    (a global context) and reused by every chunk.
    """
    query_dim = int(getattr(config, "query_dim", 0))
    if query_dim <= 0:
        if options.query is not None:
            raise UsageError("--query given, but this model takes no query")
        return None
    from audiotool.audio import read_audio
    from audiotool.models.audio_branch import AudioBranch
    from audiotool.tasks.embed import embed_tensor

    embedder = load_task_model(options.query_model, "embed", revision=None, runtime=runtime)
    net, cfg = embedder.model, embedder.config
    if not isinstance(net, AudioBranch) or net.dim != query_dim:
        raise UsageError(
            f"the query model {embedder.model_id} gives {getattr(net, 'dim', '?')}-dim "
            f"embeddings; this separator needs {query_dim}",
            hint="pass --query-model with a matching embed model",
        )

    def embed(audio: Tensor, rate: int) -> Tensor:
        vec = embed_tensor(net, cfg, audio, rate, runtime=runtime).pooled  # type: ignore[arg-type]
        return torch.from_numpy(vec)[None].to(runtime.device)

    if getattr(config, "query_source", "reference") == "mixture":
        return lambda audio, rate: {"query": embed(audio, rate)}
    if options.query is None:
        raise UsageError(
            "this model separates the source named by a reference clip",
            hint="pass --query CLIP (e.g. a few seconds of the target instrument)",
        )
    ref = read_audio(options.query)
    fixed = embed(ref.samples, ref.sample_rate)
    return lambda audio, rate: {"query": fixed}


def check_options(
    config: Any, options: SeparateOptions, available: Sequence[str] | None = None
) -> tuple[str, ...]:
    """Validate the options against the model before any file runs; the output names.

    Raises:
        UsageError: unknown / empty / repeated ``--stems``, a bad chunk plan, or a residual
            that can only be silence (every stem with ``--mixture-consistent``).
    """
    available = tuple(available or model_stems(config))
    chosen = choose_stems(available, options.stems)
    chunk_plan(config, options)
    if options.residual and options.mixture_consistent and set(chosen) == set(available):
        raise UsageError(
            "--residual with every stem and --mixture-consistent would write silence "
            "(the stems then sum exactly to the mixture)",
            hint="choose some stems with --stems, or drop --residual",
        )
    return chosen + ((residual_name(chosen),) if options.residual else ())


def start_separator(
    members: Sequence[TaskModel],
    common: tuple[str, ...],
    chosen: tuple[str, ...],
    options: SeparateOptions,
    runtime: RuntimeOptions,
    progress: Progress | None,
) -> ProcessFn:
    """Load the separator(s) and return the batch's process function (the
    :data:`~audiotool.tasks._batch.StartFn` of :func:`separate_files`, bound with
    :func:`functools.partial`; a Ray worker calls it too)."""
    rt = Runtime.from_options(runtime)
    net, run_config = load_separator(members, common, runtime=rt, method=options.ensemble)
    context_fn = _query_context(run_config, options, rt) if len(members) == 1 else None

    def stream(item: WorkItem, source: AudioSource) -> Produced:
        kwargs = context_fn(torch.zeros(1, 1), source.sample_rate) if context_fn else {}
        details = {
            "stems": list(chosen) + ([residual_name(chosen)] if options.residual else []),
            "sample_rate": source.sample_rate,
            "duration": round(source.duration, 3),
            "streamed": True,
        }

        def write(tmps: Mapping[str, Path], output: OutputOptions) -> None:
            stream_separation(
                net,
                run_config,
                source,
                {n: (tmps[n], Path(item.targets[n])) for n in tmps},
                chosen=chosen,
                options=options,
                runtime=rt,
                output=output,
                progress=progress,
                model_kwargs=kwargs,
            )

        return Produced(details=details, write=write)

    def process(item: WorkItem, audio: AudioData) -> Produced:
        kwargs = context_fn(audio.samples, audio.sample_rate) if context_fn else {}
        stems = separate_tensor(
            net,
            run_config,
            audio.samples,
            audio.sample_rate,
            options=options,
            runtime=rt,
            progress=progress,
            model_kwargs=kwargs,
        )
        return produced(audio, stems)

    def produced(audio: AudioData, stems: Mapping[str, Tensor]) -> Produced:
        outputs = {n: stems[n] for n in chosen}
        if options.residual:
            outputs[residual_name(chosen)] = audio.samples - sum(outputs.values())
        details = {
            "stems": list(outputs),
            "sample_rate": audio.sample_rate,
            "duration": round(audio.duration, 3),
        }
        return Produced(outputs, audio.sample_rate, details=details)

    def prepare_input(item: WorkItem, audio: AudioData) -> Tensor:  # (C, T) at the model rate
        from audiotool.audio import prepare

        return prepare(audio.samples, audio.sample_rate, run_config.sample_rate, device=rt.device)

    def plan(item: WorkItem, audio: AudioData, x: Tensor) -> FileWork:
        kwargs = context_fn(audio.samples, audio.sample_rate) if context_fn else {}
        jobs = separation_jobs(run_config, x, options=options, runtime=rt, model_kwargs=kwargs)

        def finish() -> Produced:
            stems = stems_from_jobs(
                run_config,
                x,
                jobs,
                channels=audio.channels,
                options=options,
                runtime=rt,
                sample_rate=audio.sample_rate,
                length=audio.frames,
            )
            return produced(audio, stems)

        return FileWork(jobs, finish)

    mixture_query = getattr(run_config, "query_source", "reference") == "mixture"
    per_file: ProcessFn = process
    if streamable(run_config, options) and not (context_fn is not None and mixture_query):
        per_file = Streaming(process, stream)
    if not packable(run_config, options):
        return per_file
    return Packing(per_file, prepare_input, plan, net, rt.batch_size, rt.device, rt.dtype, progress)


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
    """:func:`separate_tensor` of a file read in blocks, the stems written as they are finished.

    The stems arrive at the file's rate from :func:`_file_stems` (every scheme, shifts,
    ensembles), the residual is taken against the input's block, and the blocks are written
    (:class:`audiotool.stream.AudioSink`). Equal to the in-memory path to float precision;
    memory bounded by the chunk (times the passes combined: shifts, channel groups, members).

    Args:
        source: the input.
        outputs: ``{name: (temporary path, final path)}`` for the chosen stems (+ residual).
        chosen: the stems written.
    """
    from audiotool.stream import AudioSink

    length, sr = source.frames, source.sample_rate
    sinks = {
        n: AudioSink(
            tmp,
            sr,
            source.channels,
            bit_depth=output.bit_depth,
            clip=output.clip,
            fmt=output.format,
            name=final,
        )
        for n, (tmp, final) in outputs.items()
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
    ensemble the members' stems combined (:func:`combine_stems` in windows, see
    :class:`~audiotool.engine.lockstep.Windowed`), otherwise :func:`_model_stems` resampled
    back; made mixture-consistent when asked, as :func:`separate_tensor` does."""
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
    mixture consistency: the passes of :func:`separate_tensor` (or :func:`_separate_demucs`)
    — shifted copies, channel groups — streamed side by side
    (:func:`~audiotool.engine.lockstep.pulled`, :func:`~audiotool.engine.lockstep.lockstep`)
    and summed in the same order."""
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
            cut = {"at": 0}

            def crop(blocks: dict[str, Tensor]) -> None:  # drop the shift's lead
                n = int(blocks[stems[0]].shape[-1])
                a = max(0, offset - cut["at"])
                cut["at"] += n
                if a < n:
                    sink({s: blocks[s][:, a:] for s in stems})

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


def _demucs_stems(
    model: Any,
    config: Any,
    mix: Resampled,
    *,
    options: SeparateOptions,
    runtime: Runtime,
    progress: _ProgressSum,
) -> Generator[dict[str, Tensor], None, None]:
    """:func:`_separate_demucs` at the model rate in blocks: each channel group standardised
    by its mean / deviation from a first pass over the file (float64 sums), every (group,
    shifted pass) streamed with :class:`~audiotool.engine.segments.DemucsPlan` side by side."""
    from audiotool.engine.lockstep import lockstep, pulled
    from audiotool.engine.segments import DemucsPlan, stream_segments
    from audiotool.stream import BLOCK

    rate, length = int(config.sample_rate), mix.length
    overlap, segment, cap = _demucs_segment(config, options)
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

        def read(lo: int, hi: int) -> Tensor:
            x = mix(lo - lead, hi - lead)
            x = x if g is None else x[g : g + 1].expand(model_channels, -1)
            norm = (x - m) / sd
            a, b = max(lo, lead), min(hi, lead + length)  # the signal; zeros around it
            if a <= lo and b >= hi:
                return norm
            out = torch.zeros_like(norm)
            if a < b:
                out[:, a - lo : b - lo] = norm[:, a - lo : b - lo]
            return out

        def produce(sink: Callable[[dict[str, Tensor]], None]) -> None:
            cut = {"at": 0}

            def crop(blocks: dict[str, Tensor]) -> None:
                n = int(blocks[stems[0]].shape[-1])
                a = max(0, lead - cut["at"])
                cut["at"] += n
                if a < n:
                    out = {s: blocks[s][:, a:] * sd + m for s in stems}
                    sink({s: v.mean(0, keepdim=True) if per_channel else v for s, v in out.items()})

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


def separate_files(
    inputs: ExpandedInputs,
    *,
    model: str | Sequence[str] | None = None,
    revision: str | None = None,
    options: SeparateOptions = SeparateOptions(),
    output: OutputOptions = OutputOptions(),
    runtime: RuntimeOptions = RuntimeOptions(),
    progress: Progress | None = None,
    scale: ScaleOptions | None = None,
) -> BatchReport:
    """Separate every input file and write its stems (the ``audiotool separate`` command)."""
    planner = output_planner(
        inputs,
        output,
        default_template=DEFAULT_TEMPLATE,
        default_dir=DEFAULT_DIR,
        single_output=False,
        allowed_fields=frozenset({"track", "stem", "ext", "model", "name", "parent", "task"}),
    )
    members, common = resolve_separators(model, revision=revision, options=options)
    for m in members[1:]:
        chunk_plan(m.config, options)
    config = members[0].config
    names = check_options(config, options, common)
    chosen = names[: len(names) - 1] if options.residual else names
    ext = output.format or "wav"
    model_id = "+".join(m.model_id for m in members)
    model_name = "+".join(
        m.model_id.split("/")[-1].replace("zoo:", "").split("@")[0] for m in members
    )

    def targets(path: Path) -> dict[str, Path]:
        return {
            n: planner.path_for(
                path, track=path.stem, stem=n, ext=ext, model=model_name, task="separate"
            )
            for n in names
        }

    report = run_files(
        "separate",
        inputs,
        targets_for=targets,
        start=functools.partial(start_separator, members, common, chosen, options, runtime),
        output=output,
        progress=progress,
        scale=scale,
        identity=functools.partial(
            run_identity, "separate", members, output=output, runtime=runtime, options=options
        ),
    )
    report.extra["model"] = model_id
    return report

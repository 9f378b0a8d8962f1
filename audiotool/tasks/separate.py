"""`separate`: split mixtures into stems with batched overlap-add.

Pipeline per file: read -> channel policy -> resample to the model rate -> (optional
test-time shifts) overlap-add over chunks, mini-batched on the device -> optional
mixture-consistency projection -> resample back -> chosen stems (+ residual) -> atomic writes.
Outputs keep the input's sample rate and channel count.

Demucs-scheme models are cut and weighted as demucs does (:mod:`audiotool.tasks.separate_demucs`),
several models combine as an ensemble (:mod:`audiotool.tasks.separate_ensemble`); the settings
every scheme shares are in :mod:`audiotool.tasks._separate_plan`. Inputs longer than
:func:`~audiotool.tasks._items.stream_seconds` take the streamed path of
:mod:`audiotool.tasks.separate_stream` (the same stems, memory bounded by the chunk).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from audiotool.tasks._separate_plan import (
    MAX_SHIFT_SECONDS,
    SEGMENT_FAMILIES,
    channel_groups,
    chunk_plan,
    model_stems,
    residual_name,
    segment_chunking,
)
from audiotool.tasks.common import Runtime, TaskModel, load_task_model, run_identity
from audiotool.tasks.separate_demucs import demucs_scheme, separate_demucs
from audiotool.tasks.separate_ensemble import (
    EnsembleConfig,
    combine_stems,
    load_separator,
    resolve_separators,
)
from audiotool.tasks.separate_stream import stream_separation, streamable

if TYPE_CHECKING:
    from torch import nn

    from audiotool.audio import AudioData
    from audiotool.engine.overlap_add import OverlapAddJob
    from audiotool.stream import AudioSource

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{track}/{stem}.{ext}"
DEFAULT_DIR = Path("separated")


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
        ensemble: how the stems of several models combine (one of
            :data:`~audiotool.tasks.separate_ensemble.ENSEMBLE_METHODS`):
            ``avg`` waveform mean, ``median`` waveform median, ``max_spec`` / ``min_spec``
            per STFT bin the estimate of largest / smallest magnitude.

    For demucs-scheme models (``htdemucs``, and ``hdemucs`` imported from demucs, see
    :func:`~audiotool.tasks.separate_demucs.demucs_scheme`) ``overlap`` defaults to the model's
    0.25, ``chunk_seconds`` replaces the segment (for ``htdemucs`` it may only shorten the
    training segment), ``hop_seconds`` does not apply and ``shifts=N`` means N randomly shifted
    passes, as in demucs.
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


def _model_input(config: Any, audio: Tensor, sample_rate: int, device: torch.device) -> Tensor:
    """A mixture ``(C, T)`` at ``sample_rate`` at the model's rate on ``device`` (every
    channel; the channel policy comes later); the per-file overlap-add and the packed path both
    start here."""
    from audiotool.audio import prepare

    return prepare(audio, sample_rate, int(config.sample_rate), device=device)


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

    from audiotool.engine.overlap_add import OverlapAddProcessor

    if isinstance(config, EnsembleConfig):
        return _separate_ensemble(
            model, config, audio, sample_rate, options=options, runtime=runtime, progress=progress
        )
    if demucs_scheme(config):
        return separate_demucs(
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
    x = _model_input(config, audio, sample_rate, runtime.device)
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
        for gi, g in enumerate(channel_groups(x, model_channels)):
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
    group (:func:`~audiotool.tasks._separate_plan.channel_groups`), each chunk with
    ``model_kwargs`` (a per-file query)."""
    from audiotool.engine.overlap_add import OverlapAddProcessor

    chunk, hop = chunk_plan(config, options)
    processor = OverlapAddProcessor(chunk, hop, int(config.sample_rate))
    groups = channel_groups(x, int(getattr(config, "audio_channels", 2)))
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
        return _model_input(run_config, audio.samples, audio.sample_rate, rt.device)

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

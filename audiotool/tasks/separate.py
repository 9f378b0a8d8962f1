"""`separate`: split mixtures into stems with batched overlap-add.

Pipeline per file: read -> channel policy -> resample to the model rate -> (optional
test-time shifts) overlap-add over chunks, mini-batched on the device -> optional
mixture-consistency projection -> resample back -> chosen stems (+ residual) -> atomic writes.
Outputs keep the input's sample rate and channel count.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from audiotool.errors import UsageError
from audiotool.paths import ExpandedInputs
from audiotool.progress import Progress
from audiotool.tasks._batch import (
    BatchReport,
    OutputOptions,
    ProcessFn,
    Produced,
    RuntimeOptions,
    WorkItem,
    output_planner,
    run_files,
)
from audiotool.tasks.common import Runtime, chunk_progress, load_task_model, resolve_task_model

if TYPE_CHECKING:
    from torch import nn

    from audiotool.audio import AudioData

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


def chunk_plan(config: Any, options: SeparateOptions) -> tuple[float, float]:
    """(chunk_seconds, hop_seconds) from the options and the model's defaults."""
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

    from audiotool.audio import finish, match_channels, prepare
    from audiotool.engine.overlap_add import OverlapAddProcessor

    rate = int(config.sample_rate)
    model_channels = int(getattr(config, "audio_channels", 2))
    chunk, hop = chunk_plan(config, options)
    c_in, length = int(audio.shape[0]), int(audio.shape[-1])
    # channel policy: matching count -> as is; otherwise every input channel separately
    # (duplicated to the model's channel count, averaged back)
    per_channel = c_in != model_channels
    x = prepare(audio, sample_rate, rate, device=runtime.device)
    processor = OverlapAddProcessor(chunk, hop, rate)
    kwargs = dict(model_kwargs or {})
    gen = torch.Generator().manual_seed(runtime.seed)
    offsets = [0] + [
        int(torch.randint(0, int(MAX_SHIFT_SECONDS * rate), (1,), generator=gen))
        for _ in range(options.shifts)
    ]
    stems = model_stems(config)
    total = {s: torch.zeros(c_in, x.shape[-1], device=runtime.device) for s in stems}
    chunks_cb = chunk_progress(progress)
    for offset in offsets:
        for gi in range(c_in if per_channel else 1):
            g = match_channels(x[gi : gi + 1], model_channels) if per_channel else x
            padded = torch.nn.functional.pad(g, (offset, 0)) if offset else g
            out = processor.process(
                model,
                padded,
                runtime.batch_size,
                runtime.device,
                dtype=runtime.dtype,
                progress=chunks_cb,
                **kwargs,
            )
            for s in stems:
                y = out[s][..., offset : offset + g.shape[-1]].to(runtime.device)
                if per_channel:
                    total[s][gi] += match_channels(y, 1)[0]
                else:
                    total[s] += y
    result = {s: v / len(offsets) for s, v in total.items()}
    if options.mixture_consistent:
        excess = (x - sum(result.values())) / len(stems)
        result = {s: v + excess for s, v in result.items()}
    return {s: finish(v, rate, sample_rate, length) for s, v in result.items()}


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


def check_options(config: Any, options: SeparateOptions) -> tuple[str, ...]:
    """Validate the options against the model before any file runs; the output names.

    Raises:
        UsageError: unknown / empty / repeated ``--stems``, a bad chunk plan, or a residual
            that can only be silence (every stem with ``--mixture-consistent``).
    """
    chosen = choose_stems(model_stems(config), options.stems)
    chunk_plan(config, options)
    if options.residual and options.mixture_consistent and set(chosen) == set(model_stems(config)):
        raise UsageError(
            "--residual with every stem and --mixture-consistent would write silence "
            "(the stems then sum exactly to the mixture)",
            hint="choose some stems with --stems, or drop --residual",
        )
    return chosen + ((residual_name(chosen),) if options.residual else ())


def separate_files(
    inputs: ExpandedInputs,
    *,
    model: str | None = None,
    revision: str | None = None,
    options: SeparateOptions = SeparateOptions(),
    output: OutputOptions = OutputOptions(),
    runtime: RuntimeOptions = RuntimeOptions(),
    progress: Progress | None = None,
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
    task_model = resolve_task_model(model, "separate", revision=revision)
    config = task_model.config
    names = check_options(config, options)
    chosen = names[: len(names) - 1] if options.residual else names
    ext = output.format or "wav"
    model_name = task_model.model_id.split("/")[-1].replace("zoo:", "").split("@")[0]

    def targets(path: Path) -> dict[str, Path]:
        return {
            n: planner.path_for(
                path, track=path.stem, stem=n, ext=ext, model=model_name, task="separate"
            )
            for n in names
        }

    def start() -> ProcessFn:
        rt = Runtime.from_options(runtime)
        net = task_model.load(rt).model
        context_fn = _query_context(config, options, rt)

        def process(item: WorkItem, audio: AudioData) -> Produced:
            kwargs = context_fn(audio.samples, audio.sample_rate) if context_fn else {}
            stems = separate_tensor(
                net,
                config,
                audio.samples,
                audio.sample_rate,
                options=options,
                runtime=rt,
                progress=progress,
                model_kwargs=kwargs,
            )
            outputs = {n: stems[n] for n in chosen}
            if options.residual:
                outputs[residual_name(chosen)] = audio.samples - sum(outputs.values())
            details = {
                "stems": list(outputs),
                "sample_rate": audio.sample_rate,
                "duration": round(audio.duration, 3),
            }
            return Produced(outputs, audio.sample_rate, details=details)

        return process

    report = run_files(
        "separate", inputs, targets_for=targets, start=start, output=output, progress=progress
    )
    report.extra["model"] = task_model.model_id
    return report

"""`upsample`: bandwidth extension to 48 kHz with chunked latent diffusion.

Per file (``shared/reference/audiosr.md`` "Pre-/Post-processing", with the fixes listed in
``upsample_anchors.md`` section 5):

1. read, resample every channel to 48 kHz (channels are processed as one batch: stereo stays
   stereo);
2. cutoff: ``--cutoff`` or :func:`audiotool.dsp.estimate_cutoff` of the input; a deterministic
   zero-phase low-pass at the cutoff gives the conditioning signal;
3. its log-mel -> the global context (ONCE per file, from the whole file) and the
   conditioning latent;
4. the model's sampler (DDIM, DPM-Solver++(2M) or UniPC) with classifier-free guidance on the
   noise levels of its guidance interval, over overlapping chunks, all chunks of all channels
   in mini-batches (:func:`audiotool.engine.diffusion.sample_chunked`), crossfaded;
5. decode + low mel bins taken from the input (crossfaded transition), vocode in chunks (the
   mel is mirror-extended at both file edges first: Griffin-Lim starting from zero phase turns
   an edge frame of a reflect-padded signal into a click);
6. the input's own band below the cutoff replaces the generated one in the STFT domain with a
   raised-cosine transition band (:func:`audiotool.dsp.split_bands`), so the output keeps the
   input's level and low band exactly; the generated band is, per frame, no louder than the
   input's top octave extrapolated above the cutoff;
7. resample to the output rate; where the sum would exceed full scale, a smooth look-ahead gain
   on the generated band only (:func:`audiotool.dsp.limit_generated`) keeps it within
   ``ceiling`` — the kept band is never scaled; trim to the input's exact duration.

Identical channels are processed once (dual-mono in, dual-mono out), and every chunk's noise
depends on the seed and the chunk's position only, so the output does not depend on the batch
size or on which channel a chunk belongs to (on the CPU the denoiser also runs one chunk at a
time: :meth:`~audiotool.models.latent_diffusion.LatentDiffusion.denoise`).

Inputs longer than :func:`~audiotool.tasks._items.stream_seconds` take the streamed path of
:mod:`audiotool.tasks.upsample_stream` (the same output, memory bounded by the chunk).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from audiotool.errors import UsageError
from audiotool.paths import ExpandedInputs
from audiotool.progress import NullProgress, Progress, chunk_progress
from audiotool.tasks._batch import (
    BatchReport,
    OutputOptions,
    ProcessFn,
    Produced,
    RuntimeOptions,
    ScaleOptions,
    Streaming,
    WorkItem,
    audio_extension,
    output_planner,
    run_files,
)
from audiotool.tasks._upsample_plan import (
    EDGE_FRAMES,
    FULL_BAND_FRACTION,
    MAX_CONTEXT_FRAMES,
    StepBar,
    chunk_settings,
    sampling_plan,
)
from audiotool.tasks.common import (
    Runtime,
    TaskModel,
    resolve_task_model,
    run_identity,
)

if TYPE_CHECKING:
    from audiotool.audio import AudioData
    from audiotool.models.latent_diffusion import LatentDiffusion, LatentDiffusionConfig
    from audiotool.stream import AudioSource

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{stem}_{task}.{ext}"


@dataclasses.dataclass(frozen=True)
class UpsampleOptions:
    """Sampling and processing settings (None = the model's default).

    Attributes:
        steps: sampler steps (denoiser forwards).
        sampler: ``"ddim"``, ``"dpmpp-2m"`` or ``"unipc"`` (None = the model's default).
        spacing: timesteps ``"uniform"`` (AudioSR's DDIM grid) or ``"logsnr"`` (None = the
            sampler's default: see :func:`audiotool.engine.schedules.sampler_timesteps`).
        guidance: classifier-free guidance scale.
        guidance_interval: noise levels ``(lo, hi)`` (``t / T``, 0 = clean, 1 = pure noise)
            where guidance applies; the other steps run the conditional forward alone.
        eta: DDIM stochasticity (0 = deterministic given the seed's starting noise).
        chunk_seconds / overlap_seconds: chunking of the diffusion (and of the VAE / vocoder).
        cutoff: Hz above which content is generated (None = estimated per file).
        output_rate: rate of the written file (the model works at 48 kHz).
        global_context: use the whole-file global encoder when the model has one.
        transition_hz: width of the crossfade below the cutoff (None = min(10 %, 1 kHz)).
        bound_level: cap the generated band, per frame, at the level the input's top octave
            predicts (:func:`audiotool.dsp.predicted_band_power`).
        ceiling: full-scale limit for the generated band's look-ahead gain (None = off); the
            kept band is never scaled, whatever is left over is the clip policy's.
        cuda_graphs: ``"auto"`` (replay the denoiser from a CUDA graph on a CUDA device, eager
            elsewhere), ``"on"`` (CUDA only) or ``"off"``
            (:mod:`audiotool.engine.cuda_graphs`).
    """

    steps: int | None = None
    sampler: str | None = None
    spacing: str | None = None
    guidance: float | None = None
    guidance_interval: tuple[float, float] | None = None
    eta: float | None = None
    chunk_seconds: float | None = None
    overlap_seconds: float | None = None
    cutoff: float | None = None
    output_rate: int = 48000
    global_context: bool = True
    transition_hz: float | None = None
    bound_level: bool = True
    ceiling: float | None = 0.999
    cuda_graphs: str = "auto"


@dataclasses.dataclass
class UpsampleResult:
    """Output of :func:`upsample_tensor`."""

    audio: Tensor  # (C, T_out) at output_rate
    cutoff_hz: float
    chunks: int
    generated: bool
    #: smallest gain the limiter put on the generated band, in dB (0.0 = not limited)
    limit_db: float = 0.0

    @property
    def limited(self) -> bool:
        """Whether the generated band had to be turned down to stay within full scale."""
        return self.limit_db < 0.0


def _chunked_map(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    chunk: int,
    overlap: int,
    in_dim: int,
    out_scale: int,
    out_extra: int = 0,
) -> Tensor:
    """Apply ``fn`` to overlapping spans of ``x`` along ``in_dim`` and crossfade the results.

    ``fn`` maps ``n`` input steps to ``n * out_scale (+ out_extra)`` output steps along the same
    dimension; the extra tail is dropped. Used to run the VAE and the vocoder on long files with
    bounded memory.
    """
    from audiotool.engine.chunking import Span, crossfade_stitch, plan_spans

    length = x.shape[in_dim]
    if length <= chunk:
        y = fn(x)
        return y.narrow(in_dim, 0, length * out_scale)
    spans = plan_spans(length, chunk, overlap)
    outs = [
        fn(x.narrow(in_dim, s.start, s.length)).narrow(in_dim, 0, s.length * out_scale)
        for s in spans
    ]
    out_spans = [Span(s.start * out_scale, s.end * out_scale) for s in spans]
    return crossfade_stitch(outs, out_spans, length * out_scale, dim=in_dim)


def upsample_tensor(
    model: LatentDiffusion,
    config: LatentDiffusionConfig,
    audio: Tensor,
    sample_rate: int,
    *,
    options: UpsampleOptions,
    runtime: Runtime,
    progress: Progress | None = None,
) -> UpsampleResult:
    """Upsample ``audio`` ``(C, T)`` at ``sample_rate``; see the module docstring.

    Returns the ``(C, round(T * output_rate / sample_rate))`` result on the CPU.
    """
    from audiotool.audio import fit_length, prepare, resample
    from audiotool.dsp import (
        estimate_cutoff,
        limit_generated,
        lowpass,
        mel_bin_for_frequency,
        replace_low_mel_bins,
        split_bands,
    )
    from audiotool.engine.chunking import plan_spans
    from audiotool.engine.cuda_graphs import use_cuda_graphs
    from audiotool.engine.diffusion import sample_chunked

    progress = progress or NullProgress()
    rate = config.sample_rate
    dev = runtime.device
    length = int(audio.shape[-1])
    out_len = int(round(length * options.output_rate / sample_rate))
    nyquist = rate / 2
    unique, inverse = _unique_channels(audio)
    x = prepare(audio[unique].float(), sample_rate, rate, device=dev)
    t48 = x.shape[-1]
    if options.cutoff is not None:
        if not 0 < options.cutoff < nyquist:
            raise UsageError(f"--cutoff must be between 0 and {nyquist:g} Hz, got {options.cutoff}")
        cutoff = float(options.cutoff)
    else:
        cutoff = min(estimate_cutoff(audio, sample_rate), sample_rate / 2)
    if cutoff >= FULL_BAND_FRACTION * nyquist or cutoff <= 0:
        log.warning("content already reaches %.0f Hz: nothing to generate, resampling only", cutoff)
        y = resample(x, rate, options.output_rate)[inverse]
        return UpsampleResult(fit_length(y.cpu(), out_len), cutoff, 0, generated=False)

    plan = sampling_plan(config, options)
    chunk_s, overlap_s = plan.chunk_s, plan.overlap_s
    hop = config.hop
    fps = rate // hop
    multiple = model.frame_multiple
    frames = math.ceil(t48 / hop)
    frames = math.ceil(frames / multiple) * multiple
    cond_wave = lowpass(x, rate, cutoff)
    # mirror, not zeros: a step into digital silence at the end is an edge the model fills
    padded = _mirror_pad(cond_wave, 0, frames * hop - t48)
    with torch.inference_mode():
        cond_mel = model.mel(padded)[:, :frames]  # (C, N, M)
        context: dict[str, Tensor] = {}
        if options.global_context and config.use_global_encoder:
            ctx_mel = cond_mel
            if frames > MAX_CONTEXT_FRAMES:
                factor = math.ceil(frames / MAX_CONTEXT_FRAMES)
                ctx_mel = torch.nn.functional.avg_pool1d(
                    cond_mel.transpose(1, 2), factor, ceil_mode=True
                ).transpose(1, 2)
            context = model.encode_global(ctx_mel)  # once per file, whole file
        factor = model.latent_factor
        chunk_frames = max(multiple, int(round(chunk_s * fps)) // multiple * multiple)
        overlap_frames = int(round(overlap_s * fps)) // factor * factor
        lat_chunk, lat_overlap = chunk_frames // factor, overlap_frames // factor
        cond_latent = _encode_chunked(model, cond_mel, chunk_frames, overlap_frames)
        gen = torch.Generator().manual_seed(runtime.seed)
        step_bar = StepBar(progress, plan.steps)
        latent = sample_chunked(
            model.denoise,
            cond_latent,
            plan.settings(
                uncond_latent=model.uncond_value, parameterization=config.parameterization
            ),
            chunk=lat_chunk,
            overlap=lat_overlap,
            out_channels=model.latent_channels,
            context=context,
            generator=gen,
            batch_size=runtime.batch_size,
            time_multiple=model.unet.time_multiple,
            step_callback=step_bar,
            chunk_callback=chunk_progress(progress),
            autocast_dtype=runtime.dtype,
            cuda_graphs=use_cuda_graphs(options.cuda_graphs, dev),
        )
        progress.end("steps")
        mel = _chunked_map(
            lambda z: model.decode(z).unsqueeze(1),
            latent,
            chunk=lat_chunk,
            overlap=lat_overlap,
            in_dim=2,
            out_scale=factor,
        )[:, 0]  # (C, N, M)
        cut_bin = mel_bin_for_frequency(
            cutoff, n_mels=config.n_mels, sample_rate=rate, f_min=config.f_min
        )
        mel = replace_low_mel_bins(mel, cond_mel, cut_bin, transition_bins=4)
        edge = min(EDGE_FRAMES, mel.shape[1] - 1)
        wave = _chunked_map(
            lambda m: model.vocode(m),
            _mirror_pad(mel.transpose(1, 2), edge, edge).transpose(1, 2),
            chunk=chunk_frames,
            overlap=overlap_frames,
            in_dim=1,
            out_scale=hop,
        )
    wave = wave[..., edge * hop : edge * hop + t48]
    kept, generated = split_bands(
        wave, x, rate, cutoff, transition_hz=options.transition_hz, bound_level=options.bound_level
    )
    if options.output_rate != rate:
        kept = resample(kept, rate, options.output_rate)
        generated = resample(generated, rate, options.output_rate)
    kept = fit_length(kept.float().cpu(), out_len)
    generated = fit_length(generated.float().cpu(), out_len)
    limit_db = 0.0
    if options.ceiling is not None:
        out, gain = limit_generated(kept, generated, options.output_rate, ceiling=options.ceiling)
        low = float(gain.min()) if gain.numel() else 1.0
        limit_db = 20 * math.log10(max(low, 1e-6)) if low < 1.0 else 0.0
    else:
        out = kept + generated
    n_chunks = len(plan_spans(cond_latent.shape[2], lat_chunk, min(lat_overlap, lat_chunk - 1)))
    return UpsampleResult(
        out[inverse], cutoff, n_chunks * len(unique), generated=True, limit_db=limit_db
    )


def _unique_channels(audio: Tensor) -> tuple[list[int], list[int]]:
    """Indices of the distinct channels of ``(C, T)`` and, per channel, its distinct index."""
    unique: list[int] = []
    inverse: list[int] = []
    for i in range(int(audio.shape[0])):
        for j, u in enumerate(unique):
            if torch.equal(audio[i], audio[u]):
                inverse.append(j)
                break
        else:
            unique.append(i)
            inverse.append(len(unique) - 1)
    return unique, inverse


def _mirror_pad(x: Tensor, left: int, right: int) -> Tensor:
    """Pad the last dim of ``x`` by mirroring (edge sample not repeated; repeats if too short)."""
    n = x.shape[-1]
    if n < 2:
        return torch.nn.functional.pad(x, (left, right), mode="replicate")
    period = torch.cat([torch.arange(n), torch.arange(n - 2, 0, -1)])  # 0..n-1..1
    idx = torch.arange(-left, n + right) % len(period)
    return x.index_select(-1, period[idx].to(x.device))


def _encode_chunked(model: LatentDiffusion, mel: Tensor, chunk: int, overlap: int) -> Tensor:
    """VAE-encode ``(C, N, M)`` in spans (its mid attention is quadratic in length)."""
    from audiotool.engine.chunking import Span, crossfade_stitch, plan_spans

    f = model.latent_factor
    n = mel.shape[1]
    spans = plan_spans(n, chunk, overlap)
    outs = [model.encode_condition(mel[:, s.start : s.end]) for s in spans]
    lat_spans = [
        Span(s.start // f, s.start // f + o.shape[2]) for s, o in zip(spans, outs, strict=True)
    ]
    return crossfade_stitch(outs, lat_spans, n // f, dim=2)


def check_options(config: LatentDiffusionConfig, options: UpsampleOptions) -> None:
    """Validate options against the model before any file runs (usage errors, exit code 2)."""
    nyquist = config.sample_rate / 2
    if options.cutoff is not None and not 0 < options.cutoff < nyquist:
        raise UsageError(
            f"--cutoff must be between 0 and {nyquist:g} Hz (the model works at "
            f"{config.sample_rate} Hz), got {options.cutoff:g}"
        )
    chunk_settings(config, options)  # --cuda-graphs: use_cuda_graphs, in upsample_files


def prefer_channels_last(model: LatentDiffusion, device: torch.device) -> None:
    """On the CPU, keep the UNet's conv weights channels-last (NHWC), in place.

    oneDNN's convolutions then skip reordering every activation from NCHW and back, which was
    measured ~10 % faster per denoiser forward for upsample-tiny on a 2-core x86 CPU; the
    outputs agree with the NCHW path to float round-off (~1e-5) and, as the denoiser runs one
    item at a time on the CPU (:meth:`LatentDiffusion.denoise`), do not depend on the batch
    (tested). GPUs keep the default layout.
    """
    if device.type == "cpu":
        model.model.to(memory_format=torch.channels_last)


def start_upsampler(
    task_model: TaskModel,
    options: UpsampleOptions,
    runtime: RuntimeOptions,
    progress: Progress | None,
) -> ProcessFn:
    """Load the upsampler and return the batch's process function (the
    :data:`~audiotool.tasks._batch.StartFn` of :func:`upsample_files`, bound with
    :func:`functools.partial`; a Ray worker calls it too)."""
    from audiotool.models.latent_diffusion import LatentDiffusion, LatentDiffusionConfig

    rt = Runtime.from_options(runtime)
    config = task_model.config
    net = task_model.load(rt).model
    assert isinstance(net, LatentDiffusion) and isinstance(config, LatentDiffusionConfig)
    prefer_channels_last(net, rt.device)

    def process(item: WorkItem, audio: AudioData) -> Produced:
        result = upsample_tensor(
            net,
            config,
            audio.samples,
            audio.sample_rate,
            options=options,
            runtime=rt,
            progress=progress,
        )
        details: dict[str, Any] = {
            "input_rate": audio.sample_rate,
            "output_rate": options.output_rate,
            "channels": audio.channels,
            "duration": round(audio.duration, 3),
            "cutoff_hz": round(result.cutoff_hz, 1),
            "generated": result.generated,
            "chunks": result.chunks,
            "limited_db": round(result.limit_db, 2),
        }
        return Produced({"audio": result.audio}, options.output_rate, details=details)

    def stream(item: WorkItem, source: AudioSource) -> Produced:
        from audiotool.tasks.upsample_stream import stream_upsample

        produced = Produced(sample_rate=options.output_rate)

        def write(tmps: Mapping[str, Path], output: OutputOptions) -> None:
            produced.details.update(
                stream_upsample(
                    net,
                    config,
                    source,
                    tmps["audio"],
                    Path(item.targets["audio"]),
                    options=options,
                    runtime=rt,
                    output=output,
                    progress=progress,
                )
            )

        produced.write = write
        return produced

    return Streaming(process, stream)


def upsample_files(
    inputs: ExpandedInputs,
    *,
    model: str | None = None,
    revision: str | None = None,
    options: UpsampleOptions = UpsampleOptions(),
    output: OutputOptions = OutputOptions(),
    runtime: RuntimeOptions = RuntimeOptions(),
    progress: Progress | None = None,
    scale: ScaleOptions | None = None,
) -> BatchReport:
    """Upsample every input and write ``{stem}_upsample.wav`` (the ``audiotool upsample`` job)."""
    from audiotool.models.latent_diffusion import LatentDiffusionConfig

    planner = output_planner(
        inputs, output, default_template=DEFAULT_TEMPLATE, default_dir=Path(".")
    )
    task_model = resolve_task_model(model, "upsample", revision=revision)
    config = task_model.config
    if not isinstance(config, LatentDiffusionConfig):
        raise UsageError(f"model {task_model.model_id} is not a latent-diffusion upsampler")
    check_options(config, options)
    from audiotool.device import resolve_device
    from audiotool.engine.cuda_graphs import use_cuda_graphs

    # the --cuda-graphs gate, before any file: a mode out of CUDA_GRAPH_MODES, or "on" off CUDA
    use_cuda_graphs(options.cuda_graphs, resolve_device(runtime.device))
    ext = audio_extension(output)

    def targets(path: Path) -> dict[str, Path]:
        return {"audio": planner.path_for(path, task="upsample", ext=ext)}

    report = run_files(
        "upsample",
        inputs,
        targets_for=targets,
        start=functools.partial(start_upsampler, task_model, options, runtime),
        output=output,
        progress=progress,
        scale=scale,
        identity=functools.partial(
            run_identity, "upsample", [task_model], output=output, runtime=runtime, options=options
        ),
    )
    report.extra["model"] = task_model.model_id
    return report

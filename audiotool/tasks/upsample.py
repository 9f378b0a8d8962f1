"""`upsample`: bandwidth extension to 48 kHz with chunked latent diffusion.

Per file (``shared/reference/audiosr.md`` "Pre-/Post-processing", with the fixes listed in
``upsample_anchors.md`` section 5):

1. read, resample every channel to 48 kHz (channels are processed as one batch: stereo stays
   stereo);
2. cutoff: ``--cutoff`` or :func:`audiotool.dsp.estimate_cutoff` of the input; a deterministic
   zero-phase low-pass at the cutoff gives the conditioning signal;
3. its log-mel -> the global context (ONCE per file, from the whole file) and the
   conditioning latent;
4. DDIM with classifier-free guidance over overlapping chunks, all chunks of all channels in
   mini-batches (:func:`audiotool.engine.diffusion.sample_chunked`), crossfaded;
5. decode + low mel bins taken from the input (crossfaded transition), vocode in chunks;
6. the input's own band below the cutoff replaces the generated one in the STFT domain with a
   raised-cosine transition band, so the output keeps the input's level and low band exactly;
7. trim to the input's exact duration; write.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from audiotool.errors import UsageError
from audiotool.paths import ExpandedInputs, OutputPlanner, check_existing
from audiotool.progress import NullProgress, Progress
from audiotool.tasks._batch import BatchReport, FileResult, OutputOptions, RuntimeOptions, run_batch
from audiotool.tasks.common import Runtime, chunk_progress, load_task_model

if TYPE_CHECKING:
    from audiotool.models.latent_diffusion import LatentDiffusion, LatentDiffusionConfig

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{stem}_{task}.{ext}"
#: the global encoder sees at most this many mel frames (longer files are averaged in time)
MAX_CONTEXT_FRAMES = 60_000
#: a cutoff this close to 24 kHz means there is nothing to generate
FULL_BAND_FRACTION = 0.97


@dataclasses.dataclass(frozen=True)
class UpsampleOptions:
    """Sampling and processing settings (None = the model's default).

    Attributes:
        steps: sampler steps (denoiser forwards).
        sampler: ``"ddim"``, ``"dpmpp-2m"`` or ``"unipc"`` (None = the model's default).
        spacing: timesteps ``"uniform"`` (AudioSR's DDIM grid) or ``"logsnr"`` (None = the
            sampler's default: see :func:`audiotool.engine.schedules.sampler_timesteps`).
        guidance: classifier-free guidance scale.
        eta: DDIM stochasticity (0 = deterministic given the seed's starting noise).
        chunk_seconds / overlap_seconds: chunking of the diffusion (and of the VAE / vocoder).
        cutoff: Hz above which content is generated (None = estimated per file).
        output_rate: rate of the written file (the model works at 48 kHz).
        global_context: use the whole-file global encoder when the model has one.
        transition_hz: width of the crossfade below the cutoff (None = min(10 %, 1 kHz)).
    """

    steps: int | None = None
    sampler: str | None = None
    spacing: str | None = None
    guidance: float | None = None
    eta: float | None = None
    chunk_seconds: float | None = None
    overlap_seconds: float | None = None
    cutoff: float | None = None
    output_rate: int = 48000
    global_context: bool = True
    transition_hz: float | None = None


@dataclasses.dataclass
class UpsampleResult:
    """Output of :func:`upsample_tensor`."""

    audio: Tensor  # (C, T_out) at output_rate
    cutoff_hz: float
    chunks: int
    generated: bool


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
    from audiotool.audio import resample
    from audiotool.dsp import (
        estimate_cutoff,
        lowpass,
        mel_bin_for_frequency,
        replace_low_band,
        replace_low_mel_bins,
    )
    from audiotool.engine.chunking import plan_spans
    from audiotool.engine.diffusion import sample_chunked
    from audiotool.engine.schedules import cosine_alphas_cumprod, sampler_timesteps

    progress = progress or NullProgress()
    rate = config.sample_rate
    dev = runtime.device
    c, length = int(audio.shape[0]), int(audio.shape[-1])
    out_len = int(round(length * options.output_rate / sample_rate))
    nyquist = rate / 2
    x = resample(audio.float(), sample_rate, rate, device=dev)
    t48 = x.shape[-1]
    if options.cutoff is not None:
        if not 0 < options.cutoff < nyquist:
            raise UsageError(f"--cutoff must be between 0 and {nyquist:g} Hz, got {options.cutoff}")
        cutoff = float(options.cutoff)
    else:
        cutoff = min(estimate_cutoff(audio, sample_rate), sample_rate / 2)
    if cutoff >= FULL_BAND_FRACTION * nyquist or cutoff <= 0:
        log.warning("content already reaches %.0f Hz: nothing to generate, resampling only", cutoff)
        y = resample(x, rate, options.output_rate)
        return UpsampleResult(_fit(y.cpu(), out_len), cutoff, 0, generated=False)

    sampler = options.sampler or config.default_sampler
    steps = options.steps or config.default_steps
    guidance = config.default_guidance if options.guidance is None else options.guidance
    eta = config.default_eta if options.eta is None else options.eta
    if sampler != "ddim":
        if options.eta:
            raise UsageError(f"--eta applies to the ddim sampler only, not {sampler!r}")
        eta = 0.0  # the ODE solvers are deterministic
    acp = cosine_alphas_cumprod(config.num_train_steps, config.cosine_s, dtype=torch.float64)
    timesteps = sampler_timesteps(sampler, steps, acp, spacing=options.spacing)
    chunk_s = options.chunk_seconds or config.chunk_seconds
    overlap_s = (
        config.overlap_seconds if options.overlap_seconds is None else (options.overlap_seconds)
    )
    if overlap_s >= chunk_s:
        raise UsageError(
            f"--overlap-seconds ({overlap_s}) must be below --chunk-seconds ({chunk_s})"
        )
    hop = config.hop
    fps = rate // hop
    multiple = model.frame_multiple
    frames = math.ceil(t48 / hop)
    frames = math.ceil(frames / multiple) * multiple
    cond_wave = lowpass(x, rate, cutoff)
    padded = torch.nn.functional.pad(cond_wave, (0, frames * hop - t48))
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
        step_bar = _StepBar(progress, steps)
        latent = sample_chunked(
            model.denoise,
            cond_latent,
            chunk=lat_chunk,
            overlap=lat_overlap,
            timesteps=timesteps,
            alphas_cumprod=acp,
            out_channels=model.latent_channels,
            context=context,
            uncond_latent=model.uncond_value,
            guidance=guidance,
            eta=eta,
            generator=gen,
            batch_size=runtime.batch_size,
            parameterization=config.parameterization,
            sampler=sampler,
            time_multiple=model.unet.time_multiple,
            step_callback=step_bar,
            chunk_callback=chunk_progress(progress),
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
        wave = _chunked_map(
            lambda m: model.vocode(m),
            mel,
            chunk=chunk_frames,
            overlap=overlap_frames,
            in_dim=1,
            out_scale=hop,
        )
    wave = wave[..., :t48]
    out = replace_low_band(wave, x, rate, cutoff, transition_hz=options.transition_hz)
    if options.output_rate != rate:
        out = resample(out, rate, options.output_rate)
    n_chunks = len(plan_spans(cond_latent.shape[2], lat_chunk, min(lat_overlap, lat_chunk - 1)))
    return UpsampleResult(_fit(out.float().cpu(), out_len), cutoff, n_chunks * c, generated=True)


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


class _StepBar:
    def __init__(self, progress: Progress, steps: int) -> None:
        self.progress, self.steps, self.started = progress, steps, False

    def __call__(self, i: int, n: int) -> None:
        if not self.started or i == 1:
            self.progress.start("steps", n)
            self.started = True
        self.progress.update("steps", i, n)


def _fit(x: Tensor, length: int) -> Tensor:
    if x.shape[-1] >= length:
        return x[..., :length]
    return torch.nn.functional.pad(x, (0, length - x.shape[-1]))


def upsample_files(
    inputs: ExpandedInputs,
    *,
    model: str | None = None,
    revision: str | None = None,
    options: UpsampleOptions = UpsampleOptions(),
    output: OutputOptions = OutputOptions(),
    runtime: RuntimeOptions = RuntimeOptions(),
    progress: Progress | None = None,
) -> BatchReport:
    """Upsample every input and write ``{stem}_upsample.wav`` (the ``audiotool upsample`` job)."""
    from audiotool.audio import read_audio, write_audio

    progress = progress or NullProgress()
    rt = Runtime.from_options(runtime)
    loaded = load_task_model(model, "upsample", revision=revision, runtime=rt)
    from audiotool.models.latent_diffusion import LatentDiffusion, LatentDiffusionConfig

    model_, config_ = loaded.model, loaded.config
    if not isinstance(model_, LatentDiffusion) or not isinstance(config_, LatentDiffusionConfig):
        raise UsageError(f"model {loaded.model_id} is not a latent-diffusion upsampler")
    ext = output.format or (
        output.output.suffix.lstrip(".")
        if output.output is not None and output.output.suffix
        else "wav"
    )
    planner = OutputPlanner(
        output=output.output,
        template=output.filename,
        default_template=DEFAULT_TEMPLATE,
        default_dir=Path("."),
        inputs=inputs.files,
    )

    def one(path: Path) -> FileResult:
        target = planner.path_for(path, task="upsample", ext=ext)
        if check_existing([target], overwrite=output.overwrite, skip_existing=output.skip_existing):
            return FileResult(input=str(path), status="skipped", outputs=[str(target)])
        audio = read_audio(path)
        result = upsample_tensor(
            model_,
            config_,
            audio.samples,
            audio.sample_rate,
            options=options,
            runtime=rt,
            progress=progress,
        )
        write_audio(
            target,
            result.audio,
            options.output_rate,
            bit_depth=output.bit_depth,
            clip=output.clip,
            fmt=ext,
            protect=inputs.files,
        )
        details: dict[str, Any] = {
            "input_rate": audio.sample_rate,
            "output_rate": options.output_rate,
            "channels": audio.channels,
            "duration": round(audio.duration, 3),
            "cutoff_hz": round(result.cutoff_hz, 1),
            "generated": result.generated,
            "chunks": result.chunks,
        }
        return FileResult(input=str(path), outputs=[str(target)], details=details)

    report = run_batch("upsample", inputs, one, fail_fast=output.fail_fast, progress=progress)
    report.extra["model"] = loaded.model_id
    return report

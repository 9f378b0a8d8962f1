"""`reconstruct`: encode audio into a model's representation and decode it back.

Two model families serve it: an RAE (:mod:`audiotool.models.rae`: a frozen representation,
a trained decoder to the mel, a vocoder) and a waveform codec (:mod:`audiotool.models.codec`:
a learned latent that keeps the phase, an iSTFT decoder). Both map ``(B, T) -> (B, T)`` and
``encode`` ``(B, T) -> (B, L, D)`` with ``frame_samples`` samples per latent frame.

Per file: every channel at the model rate, chunks through the overlap-add engine (the round
trip of each chunk, crossfaded), back to the input's rate. Metrics compare the round trip with
the input at the MODEL rate (content above its Nyquist cannot be represented): SI-SDR (dB),
log-mel distance and multi-resolution STFT distance (:mod:`audiotool.metrics`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from audiotool.errors import UsageError
from audiotool.paths import ExpandedInputs, OutputPlanner, atomic_output, check_existing
from audiotool.progress import NullProgress, Progress
from audiotool.tasks._batch import BatchReport, FileResult, OutputOptions, RuntimeOptions, run_batch
from audiotool.tasks.common import Runtime, chunk_progress, load_task_model

if TYPE_CHECKING:
    from audiotool.models.codec import CodecConfig, WaveCodec
    from audiotool.models.rae import AudioRAE, RAEConfig

    RoundTripModel = AudioRAE | WaveCodec
    RoundTripConfig = RAEConfig | CodecConfig

DEFAULT_TEMPLATE = "{stem}_{task}.{ext}"


@dataclasses.dataclass
class Reconstruction:
    """Round trip of one signal."""

    audio: Tensor  # (C, T) at the input rate
    latents: Tensor  # (C, L, D)
    metrics: dict[str, float]


def reconstruct_tensor(
    model: RoundTripModel,
    config: RoundTripConfig,
    audio: Tensor,
    sample_rate: int,
    *,
    runtime: Runtime,
    progress: Progress | None = None,
    chunk_seconds: float | None = None,
    keep_latents: bool = False,
) -> Reconstruction:
    """Round-trip ``audio`` ``(C, T)``; see the module docstring."""
    from audiotool.audio import resample
    from audiotool.engine.overlap_add import OverlapAddProcessor, frame_chunking
    from audiotool.metrics import log_mel_distance, multi_resolution_stft_distance, si_sdr

    rate = config.sample_rate
    x = resample(audio.float(), sample_rate, rate, device=runtime.device)
    chunk, hop = frame_chunking(
        x.shape[-1],
        rate,
        model.frame_samples,
        chunk_seconds or config.chunk_seconds,
        config.hop_seconds,
    )
    proc = OverlapAddProcessor(chunk, hop, rate)

    def chunk_fn(b: Tensor) -> Tensor:  # (N, C, L) -> (N, C, L)
        n, ch, length = b.shape
        return model(b.reshape(n * ch, length)).reshape(n, ch, length)

    with torch.inference_mode():
        y = proc.process(
            chunk_fn,
            x,
            runtime.batch_size,
            runtime.device,
            dtype=runtime.dtype,
            progress=chunk_progress(progress),
        )["output"]
        latents = model.encode(x) if keep_latents else torch.empty(0)
    metrics = {
        "si_sdr": si_sdr(x, y),
        "log_mel": log_mel_distance(x, y, sample_rate=rate),
        "mrstft": multi_resolution_stft_distance(x, y),
    }
    back = resample(y, rate, sample_rate)[..., : audio.shape[-1]]
    if back.shape[-1] < audio.shape[-1]:
        back = torch.nn.functional.pad(back, (0, audio.shape[-1] - back.shape[-1]))
    return Reconstruction(audio=back.cpu(), latents=latents.float().cpu(), metrics=metrics)


def reconstruct_files(
    inputs: ExpandedInputs,
    *,
    model: str | None = None,
    revision: str | None = None,
    latents_path: Path | None = None,
    chunk_seconds: float | None = None,
    output: OutputOptions = OutputOptions(),
    runtime: RuntimeOptions = RuntimeOptions(),
    progress: Progress | None = None,
) -> BatchReport:
    """Round-trip every input and write ``{stem}_reconstruct.wav`` (+ optional latents)."""
    from safetensors.torch import save_file

    from audiotool.audio import read_audio, write_audio
    from audiotool.models.codec import CodecConfig, WaveCodec
    from audiotool.models.rae import AudioRAE, RAEConfig

    progress = progress or NullProgress()
    rt = Runtime.from_options(runtime)
    loaded = load_task_model(model, "reconstruct", revision=revision, runtime=rt)
    net, cfg = loaded.model, loaded.config
    if not (
        (isinstance(net, AudioRAE) and isinstance(cfg, RAEConfig))
        or (isinstance(net, WaveCodec) and isinstance(cfg, CodecConfig))
    ):
        raise UsageError(f"model {loaded.model_id} is not a reconstruct model (RAE or codec)")
    if latents_path is not None and latents_path.suffix != ".safetensors":
        raise UsageError("--latents must name a .safetensors file")
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
    latents: dict[str, Tensor] = {}

    def one(path: Path) -> FileResult:
        target = planner.path_for(path, task="reconstruct", ext=ext)
        if check_existing([target], overwrite=output.overwrite, skip_existing=output.skip_existing):
            return FileResult(input=str(path), status="skipped", outputs=[str(target)])
        audio = read_audio(path)
        rec = reconstruct_tensor(
            net,
            cfg,
            audio.samples,
            audio.sample_rate,
            runtime=rt,
            progress=progress,
            chunk_seconds=chunk_seconds,
            keep_latents=latents_path is not None,
        )
        write_audio(
            target,
            rec.audio,
            audio.sample_rate,
            bit_depth=output.bit_depth,
            clip=output.clip,
            fmt=ext,
            protect=inputs.files,
        )
        if latents_path is not None:
            latents[str(path)] = rec.latents.contiguous()
        return FileResult(
            input=str(path),
            outputs=[str(target)],
            details={k: round(v, 4) for k, v in rec.metrics.items()},
        )

    report = run_batch("reconstruct", inputs, one, fail_fast=output.fail_fast, progress=progress)
    if latents_path is not None and latents:
        with atomic_output(latents_path, protect=inputs.files) as tmp:
            save_file(
                latents,
                str(tmp),
                metadata={
                    "model": loaded.model_id,
                    "frame_seconds": str(net.frame_samples / cfg.sample_rate),
                },
            )
        report.extra["latents"] = str(latents_path)
    report.extra["model"] = loaded.model_id
    ok = [r for r in report.results if r.status == "ok"]
    if ok:
        report.extra["mean"] = {
            k: round(sum(r.details[k] for r in ok) / len(ok), 4)
            for k in ("si_sdr", "log_mel", "mrstft")
        }
    return report

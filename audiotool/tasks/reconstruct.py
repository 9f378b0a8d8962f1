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
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from audiotool.errors import UsageError
from audiotool.paths import ExpandedInputs, atomic_output, check_writable
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
    audio_extension,
    output_planner,
    run_files,
)
from audiotool.tasks._packing import FileWork, Packing
from audiotool.tasks.common import (
    Runtime,
    TaskModel,
    resolve_task_model,
    run_identity,
)

if TYPE_CHECKING:
    from audiotool.audio import AudioData
    from audiotool.engine.overlap_add import OverlapAddJob
    from audiotool.models.codec import CodecConfig, WaveCodec
    from audiotool.models.rae import AudioRAE, RAEConfig
    from audiotool.stream import AudioSource

    RoundTripModel = AudioRAE | WaveCodec
    RoundTripConfig = RAEConfig | CodecConfig

DEFAULT_TEMPLATE = "{stem}_{task}.{ext}"


@dataclasses.dataclass
class Reconstruction:
    """Round trip of one signal."""

    audio: Tensor  # (C, T) at the input rate
    latents: Tensor  # (C, L, D)
    metrics: dict[str, float]


def _model_input(
    config: RoundTripConfig, audio: Tensor, sample_rate: int, device: torch.device
) -> Tensor:
    """``audio`` ``(C, T)`` at ``sample_rate`` as the model takes it: every channel at its
    rate on ``device``; the per-file and the packed path both start here."""
    from audiotool.audio import prepare

    return prepare(audio, sample_rate, config.sample_rate, device=device)


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
    x = _model_input(config, audio, sample_rate, runtime.device)
    job = _round_trip_job(model, config, x, runtime=runtime, chunk_seconds=chunk_seconds)
    with torch.inference_mode():
        job.run(
            RoundTrip(model),
            runtime.batch_size,
            dtype=runtime.dtype,
            progress=chunk_progress(progress),
        )
    return _reconstruction(
        model, config, x, job, sample_rate, int(audio.shape[-1]), keep_latents=keep_latents
    )


def packable(model: RoundTripModel) -> bool:
    """Whether short files through ``model`` can share forward passes
    (:mod:`audiotool.tasks._packing`): the waveform codec, not the RAE. oneDNN picks another
    convolution algorithm for another batch size, and the RAE's Griffin-Lim turns those
    last-bit differences into ~-55 dB ones (the codec stays within 2 LSB at 24 bits,
    ``tests/tasks/test_packing.py``)."""
    from audiotool.models.rae import AudioRAE

    return not isinstance(model, AudioRAE)


class RoundTrip:
    """The chunk model of a round trip: ``(N, C, L) -> (N, C, L)``, every channel of every
    chunk through ``model`` as one row."""

    def __init__(self, model: RoundTripModel) -> None:
        self.model = model

    def __call__(self, b: Tensor) -> Tensor:
        n, ch, length = b.shape
        return self.model(b.reshape(n * ch, length)).reshape(n, ch, length)


def _round_trip_job(
    model: RoundTripModel,
    config: RoundTripConfig,
    x: Tensor,
    *,
    runtime: Runtime,
    chunk_seconds: float | None,
) -> OverlapAddJob:
    """The overlap-add job of ``x`` ``(C, T)`` at the model rate."""
    from audiotool.engine.overlap_add import OverlapAddProcessor, frame_chunking

    rate = config.sample_rate
    chunk, hop = frame_chunking(
        x.shape[-1],
        rate,
        model.frame_samples,
        chunk_seconds or config.chunk_seconds,
        config.hop_seconds,
    )
    return OverlapAddProcessor(chunk, hop, rate).job(x, runtime.device)


def _reconstruction(
    model: RoundTripModel,
    config: RoundTripConfig,
    x: Tensor,
    job: OverlapAddJob,
    sample_rate: int,
    length: int,
    *,
    keep_latents: bool,
) -> Reconstruction:
    """Latents, metrics and the round trip at the input rate from the finished ``job`` of
    ``x`` ``(C, T)`` (the input at the model rate, ``length`` samples at ``sample_rate``)."""
    from audiotool.audio import finish
    from audiotool.metrics import log_mel_distance, multi_resolution_stft_distance, si_sdr

    rate = config.sample_rate
    with torch.inference_mode():
        y = job.result()["output"].to(x.device)
        latents = model.encode(x) if keep_latents else torch.empty(0)
    metrics = {
        "si_sdr": si_sdr(x, y),
        "log_mel": log_mel_distance(x, y, sample_rate=rate),
        "mrstft": multi_resolution_stft_distance(x, y),
    }
    back = finish(y, rate, sample_rate, length)
    return Reconstruction(audio=back, latents=latents.float().cpu(), metrics=metrics)


def start_reconstructor(
    task_model: TaskModel,
    chunk_seconds: float | None,
    runtime: RuntimeOptions,
    latents: dict[str, Tensor] | None,
    frame_seconds: list[float],
    progress: Progress | None,
) -> ProcessFn:
    """Load the round-trip model and return the batch's process function (the
    :data:`~audiotool.tasks._batch.StartFn` of :func:`reconstruct_files`, bound with
    :func:`functools.partial`; a Ray worker calls it too). ``latents`` (when not None) collects
    each input's latents and ``frame_seconds`` gets the model's seconds per latent frame, in
    this process."""
    from audiotool.models.codec import CodecConfig, WaveCodec
    from audiotool.models.rae import AudioRAE, RAEConfig

    rt = Runtime.from_options(runtime)
    cfg = task_model.config
    net = task_model.load(rt).model
    assert isinstance(net, (AudioRAE, WaveCodec)) and isinstance(cfg, (RAEConfig, CodecConfig))
    frame_seconds.append(net.frame_samples / cfg.sample_rate)

    def process(item: WorkItem, audio: AudioData) -> Produced:
        rec = reconstruct_tensor(
            net,
            cfg,
            audio.samples,
            audio.sample_rate,
            runtime=rt,
            progress=progress,
            chunk_seconds=chunk_seconds,
            keep_latents=latents is not None,
        )
        return produced(item, audio, rec)

    def prepare_input(item: WorkItem, audio: AudioData) -> Tensor:  # (C, T) at the model rate
        return _model_input(cfg, audio.samples, audio.sample_rate, rt.device)

    def plan(item: WorkItem, audio: AudioData, x: Tensor) -> FileWork:
        job = _round_trip_job(net, cfg, x, runtime=rt, chunk_seconds=chunk_seconds)

        def finish() -> Produced:
            rec = _reconstruction(
                net,
                cfg,
                x,
                job,
                audio.sample_rate,
                audio.frames,
                keep_latents=latents is not None,
            )
            return produced(item, audio, rec)

        return FileWork([job], finish)

    def produced(item: WorkItem, audio: AudioData, rec: Reconstruction) -> Produced:
        if latents is not None:
            latents[str(item.input)] = rec.latents.contiguous()
        details = {k: round(v, 4) for k, v in rec.metrics.items()}
        return Produced({"audio": rec.audio}, audio.sample_rate, details=details)

    def stream(item: WorkItem, source: AudioSource) -> Produced:
        details: dict[str, object] = {"streamed": True}

        def write(tmps: Mapping[str, Path], output: OutputOptions) -> None:
            metrics = stream_reconstruction(
                net,
                cfg,
                source,
                tmps["audio"],
                Path(item.targets["audio"]),
                runtime=rt,
                output=output,
                progress=progress,
                chunk_seconds=chunk_seconds,
            )
            details.update({k: round(v, 4) for k, v in metrics.items()})
            details.update(log_mel=None, mrstft=None)

        return Produced(details=details, write=write)

    # --latents keeps the whole file's latents (model.encode of the whole signal): in memory
    per_file = process if latents is not None else Streaming(process, stream)
    if not packable(net):
        return per_file
    return Packing(
        per_file, prepare_input, plan, RoundTrip(net), rt.batch_size, rt.device, rt.dtype, progress
    )


def stream_reconstruction(
    model: RoundTripModel,
    config: RoundTripConfig,
    source: AudioSource,
    tmp: Path,
    final: Path,
    *,
    runtime: Runtime,
    output: OutputOptions,
    progress: Progress | None = None,
    chunk_seconds: float | None = None,
) -> dict[str, float]:
    """:func:`reconstruct_tensor` of a file read in blocks, the round trip written to ``tmp``
    as it is finished (equal to the in-memory path to float precision; memory bounded by the
    chunk). Of the metrics only ``si_sdr`` is computed (streamed, exact): the log-mel and
    multi-resolution STFT distances need the whole signals and are left out.

    Returns:
        ``{"si_sdr": dB}``.
    """
    from audiotool.engine.overlap_add import OverlapAddProcessor, frame_chunking
    from audiotool.metrics import StreamingSiSdr
    from audiotool.stream import Resampled, StreamResampler

    rate, sr, length = config.sample_rate, source.sample_rate, source.frames
    mix = Resampled(source.read, length, sr, rate)
    chunk, hop = frame_chunking(
        mix.length,
        rate,
        model.frame_samples,
        chunk_seconds or config.chunk_seconds,
        config.hop_seconds,
    )

    chunk_fn = RoundTrip(model)
    score = StreamingSiSdr()
    back = StreamResampler(mix.length, rate, sr)
    at = {"model": 0, "file": 0}
    out = output.sink(tmp, sr, source.channels, name=final)

    def sink(blocks: dict[str, Tensor]) -> None:
        y = blocks["output"]
        n = int(y.shape[-1])
        score.update(mix(at["model"], at["model"] + n), y)
        at["model"] += n
        ready = back.push(y, final=at["model"] >= mix.length).float().cpu()
        hi = min(length, at["file"] + int(ready.shape[-1]))
        out.write(ready[:, : hi - at["file"]])
        at["file"] = hi

    try:
        with torch.inference_mode():
            OverlapAddProcessor(chunk, hop, rate).stream(
                chunk_fn,
                mix,
                mix.length,
                sink,
                runtime.batch_size,
                runtime.device,
                dtype=runtime.dtype,
                progress=chunk_progress(progress),
            )
        out.close()
    finally:
        out.discard()
    return {"si_sdr": score.value()}


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
    scale: ScaleOptions | None = None,
) -> BatchReport:
    """Round-trip every input and write ``{stem}_reconstruct.wav`` (+ optional latents).

    Raises:
        UsageError: ``latents_path`` with ``--engine ray`` or ``--resume`` (the latents of
            every input go into one file, which needs every input here, in one run).
    """
    from safetensors.torch import save_file

    from audiotool.models.codec import CodecConfig
    from audiotool.models.rae import RAEConfig

    planner = output_planner(
        inputs, output, default_template=DEFAULT_TEMPLATE, default_dir=Path(".")
    )
    task_model = resolve_task_model(model, "reconstruct", revision=revision)
    cfg = task_model.config
    if not isinstance(cfg, (RAEConfig, CodecConfig)):
        raise UsageError(f"model {task_model.model_id} is not a reconstruct model (RAE or codec)")
    if latents_path is not None:
        if latents_path.suffix != ".safetensors":
            raise UsageError("--latents must name a .safetensors file")
        if scale is not None and scale.collects_per_file:
            raise UsageError(
                "--latents collects every input's latents in one file: not with --engine ray "
                "or --resume",
                hint="run without --latents, or without --engine ray / --resume",
            )
        check_writable(latents_path)
    ext = audio_extension(output)
    latents: dict[str, Tensor] = {}
    frame_seconds: list[float] = []

    def targets(path: Path) -> dict[str, Path]:
        return {"audio": planner.path_for(path, task="reconstruct", ext=ext)}

    start = functools.partial(
        start_reconstructor,
        task_model,
        chunk_seconds,
        runtime,
        latents if latents_path is not None else None,
        frame_seconds,
    )
    report = run_files(
        "reconstruct",
        inputs,
        targets_for=targets,
        start=start,
        output=output,
        progress=progress,
        scale=scale,
        identity=functools.partial(
            run_identity,
            "reconstruct",
            [task_model],
            output=output,
            runtime=runtime,
            chunk_seconds=chunk_seconds,
        ),
    )
    if latents_path is not None and latents:
        with atomic_output(latents_path, protect=inputs.files) as tmp:
            save_file(
                latents,
                str(tmp),
                metadata={"model": task_model.model_id, "frame_seconds": str(frame_seconds[0])},
            )
        report.extra["latents"] = str(latents_path)
    report.extra["model"] = task_model.model_id
    ok = [r for r in report.results if r.status == "ok"]
    if ok:
        mean: dict[str, float | None] = {}
        for k in ("si_sdr", "log_mel", "mrstft"):
            have = [r.details[k] for r in ok if r.details.get(k) is not None]
            # streamed (long) files have no log-mel / MR-STFT distance (null)
            mean[k] = round(sum(have) / len(have), 4) if have else None
        report.extra["mean"] = mean
    return report

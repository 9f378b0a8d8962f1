"""`embed`: segment and clip embeddings with the audio branch (seed 002).

Per file: downmix to mono, resample to the model rate, frames of the WHOLE file through the
overlap-add engine (chunks batched on the device, folded at the frame rate — never random
crops), then one segment pooling over all frames. Outputs are deterministic (same file, same
bytes).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from audiotool.errors import AudiotoolError, OutputExistsError, UsageError
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
    from audiotool.models.audio_branch import AudioBranch, AudioBranchConfig
    from audiotool.stream import AudioSource

log = logging.getLogger(__name__)

FORMATS = ("npz", "npy", "jsonl")
DEFAULT_DIR = Path("embeddings")


@dataclasses.dataclass
class Embedding:
    """Embeddings of one file.

    Attributes:
        segments: ``(S, D)`` segment features.
        pooled: ``(D,)`` clip embedding.
        timestamps: ``(S, 2)`` start / end of each segment in seconds.
        frames: ``(F, D)`` encoder frames (12.5 / s), timestamps ``(F + 0.5) * frame_seconds``.
        frame_seconds: seconds per frame.
    """

    segments: np.ndarray
    pooled: np.ndarray
    timestamps: np.ndarray
    frames: np.ndarray
    frame_seconds: float


def _model_input(
    config: AudioBranchConfig, audio: Tensor, sample_rate: int, device: torch.device
) -> Tensor:
    """``audio`` ``(C, T)`` at ``sample_rate`` as the model takes it: ``(1, T)`` (channels
    averaged) at its rate on ``device``; the per-file and the packed path both start here."""
    from audiotool.audio import prepare

    return prepare(audio, sample_rate, config.sample_rate, channels=1, device=device)


def embed_tensor(
    model: AudioBranch,
    config: AudioBranchConfig,
    audio: Tensor,
    sample_rate: int,
    *,
    runtime: Runtime,
    progress: Progress | None = None,
) -> Embedding:
    """Embed ``audio`` ``(C, T)`` at ``sample_rate`` (channels are averaged)."""
    from audiotool.stream import tensor_span

    x = _model_input(config, audio, sample_rate, runtime.device)
    return _embed_span(
        model, config, tensor_span(x), int(x.shape[-1]), runtime=runtime, progress=progress
    )


def embed_source(
    model: AudioBranch,
    config: AudioBranchConfig,
    source: AudioSource,
    *,
    runtime: Runtime,
    progress: Progress | None = None,
) -> Embedding:
    """:func:`embed_tensor` of a file read in blocks: the mixture resampled per chunk, the
    frames collected as they are finished (memory: the chunk plus the frames, 12.5 per
    second); equal to the in-memory path to float precision."""
    from audiotool.audio import match_channels
    from audiotool.stream import Resampled, mapped_span

    mono = mapped_span(source.read, lambda b: match_channels(b, 1))
    x = Resampled(mono, source.frames, source.sample_rate, config.sample_rate)
    return _embed_span(model, config, x, x.length, runtime=runtime, progress=progress)


def _embed_span(
    model: AudioBranch,
    config: AudioBranchConfig,
    read: Callable[[int, int], Tensor],
    length: int,
    *,
    runtime: Runtime,
    progress: Progress | None,
) -> Embedding:
    job, parts = _frames_job(model, config, read, length, runtime=runtime)
    with torch.inference_mode():
        job.run(
            model.frame_model,
            runtime.batch_size,
            dtype=runtime.dtype,
            progress=chunk_progress(progress),
        )
    return _embedding(model, config, parts)


def _frames_job(
    model: AudioBranch,
    config: AudioBranchConfig,
    read: Callable[[int, int], Tensor],
    length: int,
    *,
    runtime: Runtime,
) -> tuple[OverlapAddJob, list[Tensor]]:
    """The frame encoder's overlap-add job over a mono signal of ``length`` samples at the
    model rate, and the list its finished ``(D, n)`` frame blocks are appended to."""
    from audiotool.engine.overlap_add import OverlapAddProcessor, frame_chunking

    rate = config.sample_rate
    chunk, hop = frame_chunking(
        length, rate, model.frame_samples, config.chunk_seconds, config.hop_seconds
    )
    parts: list[Tensor] = []
    job = OverlapAddProcessor(chunk, hop, rate).stream_job(
        read, length, lambda blocks: parts.append(blocks["output"]), runtime.device
    )
    return job, parts


def _embedding(model: AudioBranch, config: AudioBranchConfig, parts: list[Tensor]) -> Embedding:
    """Segment pooling over the file's frames (``parts``: its ``(D, n)`` blocks in order)."""
    step = model.frame_samples / config.sample_rate
    with torch.inference_mode():
        frames = torch.cat(parts, dim=-1).T[None]  # (1, F, D)
        segments, pooled = model.pool(frames)
    f = frames.shape[1]
    s = segments.shape[1]
    bounds = np.array([[i * f / s, (i + 1) * f / s] for i in range(s)]) * step
    return Embedding(
        segments=segments[0].float().cpu().numpy(),
        pooled=pooled[0].float().cpu().numpy(),
        timestamps=bounds.astype(np.float32),
        frames=frames[0].float().cpu().numpy(),
        frame_seconds=step,
    )


def embed_batch(
    model: AudioBranch,
    config: AudioBranchConfig,
    audio: Tensor,
    sample_rate: int,
    *,
    runtime: Runtime,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed ``n`` equally long mono clips ``(n, T)`` in mini-batches of ``runtime.batch_size``.

    Clips longer than one chunk go through :func:`embed_tensor` one by one (overlap-add); short
    clips are batched directly (their frames fit one forward). Returns pooled ``(n, D)`` and
    segments ``(n, S, D)``.
    """
    from audiotool.audio import resample

    rate = config.sample_rate
    x = resample(audio.float(), sample_rate, rate, device=runtime.device)
    if x.shape[-1] > config.chunk_seconds * rate:
        outs = [embed_tensor(model, config, a[None], rate, runtime=runtime) for a in x]
        return np.stack([o.pooled for o in outs]), np.stack([o.segments for o in outs])
    pooled, segments = [], []
    with torch.inference_mode():
        for i in range(0, x.shape[0], runtime.batch_size):
            seg, pool = model(x[i : i + runtime.batch_size])
            pooled.append(pool.float().cpu().numpy())
            segments.append(seg.float().cpu().numpy())
    return np.concatenate(pooled), np.concatenate(segments)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The ``np.savez`` layout (one ``NAME.npy`` per array, uncompressed) written into memory
    with a fixed entry date, so equal arrays give byte-identical files (``np.savez`` stamps
    each entry with the current time)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)
    return buf.getvalue()


def _arrays(
    emb: Embedding, *, model_id: str, sample_rate: int, pooled_only: bool
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {"pooled": emb.pooled}
    if not pooled_only:
        out["segments"] = emb.segments
        out["timestamps"] = emb.timestamps
    out["model"] = np.array(model_id)
    out["sample_rate"] = np.array(sample_rate)
    return out


def _json_line(
    path: str, emb: Embedding, *, model_id: str, sample_rate: int, pooled_only: bool
) -> str:
    item: dict[str, Any] = {
        "file": path,
        "model": model_id,
        "sample_rate": sample_rate,
        "pooled": [round(float(v), 6) for v in emb.pooled],
    }
    if not pooled_only:
        item["segments"] = [[round(float(v), 6) for v in row] for row in emb.segments]
        item["timestamps"] = [[round(float(v), 4) for v in row] for row in emb.timestamps]
    return json.dumps(item)


def write_combined(
    target: Path,
    fmt: str,
    items: Sequence[tuple[str, Embedding]],
    *,
    model_id: str,
    sample_rate: int,
    pooled_only: bool,
    protect: Sequence[Path],
    overwrite: bool = True,
) -> None:
    """One file for many inputs: npz (``files``, ``pooled`` (N, D), ``segments`` (N, S, D),
    ``timestamps`` (N, S, 2)), npy (``pooled`` (N, D), or ``segments`` (N, S, D) unless
    pooled-only; file order in the summary), or jsonl (one object per file)."""
    with atomic_output(target, protect=protect, overwrite=overwrite) as tmp:
        if fmt == "jsonl":
            lines = [
                _json_line(
                    p, e, model_id=model_id, sample_rate=sample_rate, pooled_only=pooled_only
                )
                for p, e in items
            ]
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        elif fmt == "npy":
            arr = np.stack([e.pooled if pooled_only else e.segments for _, e in items])
            buf = io.BytesIO()
            np.save(buf, arr)
            tmp.write_bytes(buf.getvalue())
        else:
            arrays: dict[str, np.ndarray] = {
                "files": np.array([p for p, _ in items]),
                "pooled": np.stack([e.pooled for _, e in items]),
            }
            if not pooled_only:
                arrays["segments"] = np.stack([e.segments for _, e in items])
                arrays["timestamps"] = np.stack([e.timestamps for _, e in items])
            arrays["model"] = np.array(model_id)
            arrays["sample_rate"] = np.array(sample_rate)
            tmp.write_bytes(_npz_bytes(arrays))


def start_embedder(
    task_model: TaskModel,
    fmt: str,
    pooled_only: bool,
    runtime: RuntimeOptions,
    collected: list[tuple[str, Embedding]] | None,
    progress: Progress | None,
) -> ProcessFn:
    """Load the embedder and return the batch's process function (the
    :data:`~audiotool.tasks._batch.StartFn` of :func:`embed_files`, bound with
    :func:`functools.partial`; a Ray worker calls it too). With ``collected`` (one combined
    file) the embeddings are appended there, in this process, instead of written per input."""
    from audiotool.models.audio_branch import AudioBranch, AudioBranchConfig

    rt = Runtime.from_options(runtime)
    cfg = task_model.config
    model_id = task_model.model_id
    net = task_model.load(rt).model
    assert isinstance(net, AudioBranch) and isinstance(cfg, AudioBranchConfig)

    def process(item: WorkItem, audio: AudioData) -> Produced:
        emb = embed_tensor(
            net, cfg, audio.samples, audio.sample_rate, runtime=rt, progress=progress
        )
        return produced(item, emb, audio.duration)

    def stream(item: WorkItem, source: AudioSource) -> Produced:
        emb = embed_source(net, cfg, source, runtime=rt, progress=progress)
        return produced(item, emb, source.duration)

    def prepare_input(item: WorkItem, audio: AudioData) -> Tensor:  # (1, T) at the model rate
        return _model_input(cfg, audio.samples, audio.sample_rate, rt.device)

    def plan(item: WorkItem, audio: AudioData, x: Tensor) -> FileWork:
        from audiotool.stream import tensor_span

        job, parts = _frames_job(net, cfg, tensor_span(x), int(x.shape[-1]), runtime=rt)
        return FileWork([job], lambda: produced(item, _embedding(net, cfg, parts), audio.duration))

    def produced(item: WorkItem, emb: Embedding, duration: float) -> Produced:
        details = {
            "segments": int(emb.segments.shape[0]),
            "dim": int(emb.pooled.shape[0]),
            "frames": int(emb.frames.shape[0]),
            "duration": round(duration, 3),
        }
        if collected is not None:
            collected.append((str(item.input), emb))
            return Produced(details=details)

        def write(tmp: Path) -> None:
            if fmt == "npz":
                arrays = _arrays(
                    emb, model_id=model_id, sample_rate=cfg.sample_rate, pooled_only=pooled_only
                )
                tmp.write_bytes(_npz_bytes(arrays))
            elif fmt == "npy":
                buf = io.BytesIO()
                np.save(buf, emb.pooled if pooled_only else emb.segments)
                tmp.write_bytes(buf.getvalue())
            else:
                line = _json_line(
                    str(item.input),
                    emb,
                    model_id=model_id,
                    sample_rate=cfg.sample_rate,
                    pooled_only=pooled_only,
                )
                tmp.write_text(line + "\n", encoding="utf-8")

        return Produced(files={"embedding": write}, details=details)

    return Packing(
        Streaming(process, stream),
        prepare_input,
        plan,
        net.frame_model,
        rt.batch_size,
        rt.device,
        rt.dtype,
        progress,
    )


def embed_files(
    inputs: ExpandedInputs,
    *,
    model: str | None = None,
    revision: str | None = None,
    fmt: str = "npz",
    pooled_only: bool = False,
    output: OutputOptions = OutputOptions(),
    runtime: RuntimeOptions = RuntimeOptions(),
    progress: Progress | None = None,
    scale: ScaleOptions | None = None,
) -> BatchReport:
    """Embed every input: one file per input in a folder, or one combined file (``-o x.npz``).

    Raises:
        UsageError: a combined file with ``--engine ray`` or ``--resume`` (it needs every
            input here, in one run).
    """
    from audiotool.models.audio_branch import AudioBranchConfig

    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    combined = output.output is not None and output.output.suffix.lstrip(".") in FORMATS
    if combined and scale is not None and scale.collects_per_file:
        raise UsageError(
            f"-o {output.output} collects every input in one file: not with --engine ray "
            "or --resume",
            hint="give a folder for -o (one embeddings file per input)",
        )
    planner = output_planner(
        inputs,
        dataclasses.replace(output, output=None) if combined else output,
        default_template="{stem}.{ext}",
        default_dir=DEFAULT_DIR,
        single_output=False,
    )
    task_model = resolve_task_model(model, "embed", revision=revision)
    cfg = task_model.config
    if not isinstance(cfg, AudioBranchConfig):
        raise UsageError(f"model {task_model.model_id} is not an audio-branch embedder")
    model_id = task_model.model_id
    if combined:
        assert output.output is not None
        fmt = output.output.suffix.lstrip(".")
        check_writable(output.output)
        if output.output.exists() and not output.overwrite:
            raise OutputExistsError(
                f"{output.output} already exists", hint="pass --overwrite to replace it"
            )
    collected: list[tuple[str, Embedding]] = []

    def targets(path: Path) -> dict[str, Path]:
        return {"embedding": planner.path_for(path, ext=fmt, task="embed")}

    start = functools.partial(
        start_embedder, task_model, fmt, pooled_only, runtime, collected if combined else None
    )
    report = run_files(
        "embed",
        inputs,
        targets_for=None if combined else targets,
        start=start,
        output=output,
        progress=progress,
        audio_outputs=False,
        scale=scale,
        identity=functools.partial(
            run_identity,
            "embed",
            [task_model],
            output=output,
            runtime=runtime,
            fmt=fmt,
            pooled_only=pooled_only,
        ),
    )
    if combined and collected:
        assert output.output is not None
        ok = [r for r in report.results if r.status == "ok"]
        try:
            write_combined(
                output.output,
                fmt,
                collected,
                model_id=model_id,
                sample_rate=cfg.sample_rate,
                pooled_only=pooled_only,
                protect=inputs.files,
                overwrite=output.overwrite,
            )
        except AudiotoolError as exc:  # the summary still lists every file, now failed
            for r in ok:
                r.status, r.error, r.hint = "failed", exc.message, exc.hint
        else:
            for r in ok:
                r.outputs = [str(output.output)]
    report.extra["model"] = model_id
    return report

"""Options shared by the commands, defined once as ``Annotated`` aliases.

Nothing here imports torch.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from audiotool.tasks._batch import OutputOptions, RuntimeOptions, ScaleOptions

IO = "Input / output"
RUN = "Compute"
REPORT = "Reporting"
FMT = "Audio format"
#: metavar of on/off flags: recent Typer versions print "<bool>" after a flag without one, as
#: if it took a value ("--json true" would then read "true" as an input path)
FLAG = ""


class PrecisionChoice(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class BitDepthChoice(str, Enum):
    b16 = "16"
    b24 = "24"
    f32 = "32f"


class ClipChoice(str, Enum):
    rescale = "rescale"
    clamp = "clamp"
    none = "none"


class FormatChoice(str, Enum):
    wav = "wav"
    flac = "flac"


class EmbedFormatChoice(str, Enum):
    npz = "npz"
    npy = "npy"
    jsonl = "jsonl"


def _device(value: str) -> str:
    from audiotool.device import check_device_name
    from audiotool.errors import UsageError

    try:
        return check_device_name(value)
    except UsageError as exc:
        raise typer.BadParameter(exc.message) from exc


InputsArg = Annotated[
    list[str],
    typer.Argument(
        help="Audio files or folders (searched recursively); '-' reads paths from stdin, "
        "one per line.",
        show_default=False,
    ),
]
OutputOpt = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs Optional at runtime on 3.10
    typer.Option(
        "--output",
        "-o",
        help="Output file (one input) or folder (several inputs).",
        rich_help_panel=IO,
    ),
]
FilenameOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--filename",
        help="Output name template inside the -o folder, e.g. '{stem}_{task}.{ext}'.",
        rich_help_panel=IO,
    ),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace existing outputs.", rich_help_panel=IO, metavar=FLAG),
]
SkipExistingOpt = Annotated[
    bool,
    typer.Option(
        "--skip-existing",
        help="Skip inputs whose outputs exist (resume a half-done batch).",
        rich_help_panel=IO,
        metavar=FLAG,
    ),
]
FailFastOpt = Annotated[
    bool,
    typer.Option(
        "--fail-fast", help="Stop at the first input that fails.", rich_help_panel=IO, metavar=FLAG
    ),
]
ModelOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--model",
        "-m",
        help="Model: zoo name (audiotool models list), local folder, or org/name[@rev] on the "
        "Hugging Face Hub. Default: the zoo's model for this task.",
        rich_help_panel=RUN,
    ),
]
RevisionOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--revision", help="Hub branch, tag or commit.", rich_help_panel=RUN),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        metavar="auto|cpu|cuda|cuda:N|mps",
        callback=_device,
        help="Compute device (cuda:N picks GPU N).",
        rich_help_panel=RUN,
    ),
]
ThreadsOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--threads",
        min=1,
        help=(
            "CPU threads for torch. Default: the CPUs this process may use (affinity and "
            "cgroup quota), or OMP_NUM_THREADS. Use --threads 1 when running several "
            "audiotool processes at once (xargs -P, GNU parallel)."
        ),
        show_default=False,
        rich_help_panel=RUN,
    ),
]
BatchSizeOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--batch-size",
        min=1,
        help=(
            "Chunks per forward pass (halved automatically when memory runs out); above 1, "
            "the chunks of consecutive short files share forward passes (same outputs; "
            "AUDIOTOOL_PACK=0: file by file). "
            "Default: 1 on the CPU (batching does not pay there: benchmarks/RESULTS.md), "
            "4 on a GPU."
        ),
        show_default=False,
        rich_help_panel=RUN,
    ),
]
PrecisionOpt = Annotated[
    PrecisionChoice,
    typer.Option("--precision", help="Model precision.", rich_help_panel=RUN),
]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="Seed of every random draw.", rich_help_panel=RUN)
]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="No progress bars or info logs.", rich_help_panel=REPORT, metavar=FLAG
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON summary on stdout (progress and logs stay on stderr).",
        rich_help_panel=REPORT,
        metavar=FLAG,
    ),
]
BitDepthOpt = Annotated[
    BitDepthChoice,
    typer.Option("--bit-depth", help="PCM 16/24 bit or 32-bit float (wav).", rich_help_panel=FMT),
]
ClipOpt = Annotated[
    ClipChoice,
    typer.Option(
        "--clip",
        help="Samples beyond full scale: rescale the file, clamp them, or keep them (none).",
        rich_help_panel=FMT,
    ),
]
FormatOpt = Annotated[
    Optional[FormatChoice],  # noqa: UP045
    typer.Option(
        "--format", help="Output container (default: from -o, else wav).", rich_help_panel=FMT
    ),
]
ChunkSecondsOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option(
        "--chunk-seconds",
        min=0.05,
        help="Chunk length in seconds (default: the model's).",
        rich_help_panel=RUN,
    ),
]


def output_options(
    *,
    output: Path | None,
    filename: str | None,
    overwrite: bool,
    skip_existing: bool,
    fail_fast: bool,
    bit_depth: BitDepthChoice = BitDepthChoice.b24,
    clip: ClipChoice = ClipChoice.rescale,
    fmt: FormatChoice | None = None,
) -> OutputOptions:
    """Bundle the parsed output options (rejecting conflicting flags)."""
    from audiotool.errors import UsageError

    if overwrite and skip_existing:
        raise UsageError("--overwrite and --skip-existing exclude each other")
    return OutputOptions(
        output=output,
        filename=filename,
        overwrite=overwrite,
        skip_existing=skip_existing,
        fail_fast=fail_fast,
        bit_depth=bit_depth.value,
        clip=clip.value,
        format=fmt.value if fmt is not None else None,
    )


def runtime_options(
    *,
    device: str,
    precision: PrecisionChoice,
    batch_size: int | None,
    seed: int,
    threads: int | None = None,
) -> RuntimeOptions:
    """Bundle the parsed compute options."""
    return RuntimeOptions(
        device=device,
        precision=precision.value,
        batch_size=batch_size,
        seed=seed,
        threads=threads,
    )


SCALE = "At scale"

ShardOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--shard",
        help="Process only shard I of N (I/N, from 0), a stable split by the path below each "
        "input folder; 'auto' takes it from torchrun (RANK/WORLD_SIZE) or a SLURM array.",
        rich_help_panel=SCALE,
    ),
]
ManifestOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--manifest",
        help="Append one JSON line per finished input to this file (safe for many processes).",
        rich_help_panel=SCALE,
    ),
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="With --manifest: skip inputs it records as done with the same output-changing "
        "options (and unchanged input, outputs present); redo the rest, replacing their outputs.",
        rich_help_panel=SCALE,
        metavar=FLAG,
    ),
]


class EngineChoice(str, Enum):
    local = "local"
    ray = "ray"


EngineOpt = Annotated[
    EngineChoice,
    typer.Option(
        "--engine",
        help="Run here (local) or on a Ray cluster (ray; pip install 'audiotool[ray]').",
        rich_help_panel=SCALE,
    ),
]
RayAddressOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--ray-address",
        help="Ray cluster address (e.g. auto, ray://head:10001); default: RAY_ADDRESS or local.",
        rich_help_panel=SCALE,
    ),
]
WorkersOpt = Annotated[
    int,
    typer.Option(
        "--workers", min=1, help="Ray workers (each loads the model once).", rich_help_panel=SCALE
    ),
]
GpusPerWorkerOpt = Annotated[
    float,
    typer.Option("--gpus-per-worker", min=0.0, help="GPUs per Ray worker.", rich_help_panel=SCALE),
]
CpusPerWorkerOpt = Annotated[
    float,
    typer.Option("--cpus-per-worker", min=0.01, help="CPUs per Ray worker.", rich_help_panel=SCALE),
]


def scale_options(
    *,
    shard: str | None,
    manifest: Path | None,
    resume: bool,
    engine: EngineChoice = EngineChoice.local,
    ray_address: str | None = None,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
) -> ScaleOptions:
    """Bundle and check the sharding / manifest / engine options (before any model loads)."""
    from audiotool.errors import UsageError
    from audiotool.runners.ray import RayOptions, require_ray
    from audiotool.shards import parse_shard

    ray_given = ray_address is not None or workers != 1 or gpus_per_worker or cpus_per_worker != 1
    if engine is not EngineChoice.ray and ray_given:
        raise UsageError(
            "--ray-address / --workers / --gpus-per-worker / --cpus-per-worker need --engine ray"
        )
    if manifest is not None and manifest.suffix.lower() != ".jsonl":
        raise UsageError(f"--manifest must name a .jsonl file, got {manifest}")
    if engine is EngineChoice.ray:
        require_ray()
    return ScaleOptions(
        shard=parse_shard(shard),
        manifest=manifest,
        resume=resume,
        engine=engine.value,
        ray=RayOptions(
            address=ray_address,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            cpus_per_worker=cpus_per_worker,
        )
        if engine is EngineChoice.ray
        else None,
    )


def scaled_runtime(runtime: RuntimeOptions, scale: ScaleOptions) -> RuntimeOptions:
    """Under torchrun, ``--device auto`` becomes ``cuda:LOCAL_RANK`` (one GPU per process)."""
    import dataclasses

    from audiotool.shards import auto_device

    device = auto_device(runtime.device, scale.shard)
    return dataclasses.replace(runtime, device=device) if device != runtime.device else runtime


def compute_and_scale(
    *,
    device: str,
    precision: PrecisionChoice,
    batch_size: int | None,
    seed: int,
    threads: int | None,
    shard: str | None,
    manifest: Path | None,
    resume: bool,
    engine: EngineChoice,
    ray_address: str | None,
    workers: int,
    gpus_per_worker: float,
    cpus_per_worker: float,
) -> tuple[RuntimeOptions, ScaleOptions]:
    """The compute and at-scale options of a model command, checked (:func:`scale_options`),
    with the device picked per process under torchrun (:func:`scaled_runtime`)."""
    runtime = runtime_options(
        device=device, precision=precision, batch_size=batch_size, seed=seed, threads=threads
    )
    scale = scale_options(
        shard=shard,
        manifest=manifest,
        resume=resume,
        engine=engine,
        ray_address=ray_address,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
    )
    return scaled_runtime(runtime, scale), scale

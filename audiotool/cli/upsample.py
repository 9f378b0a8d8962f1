"""`audiotool upsample`: audio super-resolution to 48 kHz."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Annotated, Optional

import typer

from audiotool.cli._options import (
    FLAG,
    RUN,
    BatchSizeOpt,
    BitDepthChoice,
    BitDepthOpt,
    ChunkSecondsOpt,
    ClipChoice,
    ClipOpt,
    CpusPerWorkerOpt,
    DeviceOpt,
    EngineChoice,
    EngineOpt,
    FailFastOpt,
    FilenameOpt,
    FormatOpt,
    GpusPerWorkerOpt,
    InputsArg,
    JsonOpt,
    ManifestOpt,
    ModelOpt,
    OutputOpt,
    OverwriteOpt,
    PrecisionChoice,
    PrecisionOpt,
    QuietOpt,
    RayAddressOpt,
    ResumeOpt,
    RevisionOpt,
    SeedOpt,
    ShardOpt,
    SkipExistingOpt,
    ThreadsOpt,
    WorkersOpt,
    compute_and_scale,
    output_options,
)
from audiotool.errors import UsageError


class SamplerChoice(str, Enum):
    ddim = "ddim"
    dpmpp_2m = "dpmpp-2m"
    unipc = "unipc"


class SpacingChoice(str, Enum):
    uniform = "uniform"
    logsnr = "logsnr"


SamplerOpt = Annotated[
    Optional[SamplerChoice],  # noqa: UP045
    typer.Option(
        "--sampler",
        help="ddim (AudioSR's), dpmpp-2m (DPM-Solver++(2M)) or unipc (UniPC-2, bh2); "
        "default: the model's (upsample-tiny: dpmpp-2m; AudioSR: ddim).",
        rich_help_panel=RUN,
    ),
]
SpacingOpt = Annotated[
    Optional[SpacingChoice],  # noqa: UP045
    typer.Option(
        "--spacing",
        help="Timesteps: uniform (AudioSR's DDIM grid) or logsnr (uniform in log-SNR); "
        "default: the sampler's.",
        rich_help_panel=RUN,
    ),
]
StepsOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--steps",
        min=1,
        max=1000,
        help="Sampler steps, one denoiser pass each (two where guided) (default: the model's; "
        "upsample-tiny: 12, AudioSR: 50).",
        rich_help_panel=RUN,
    ),
]
GuidanceOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option(
        "--guidance",
        help="Classifier-free guidance scale; 1 = the conditional forward alone, half the work "
        "(default: the model's, 3.5).",
        rich_help_panel=RUN,
    ),
]
GuidanceIntervalOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--guidance-interval",
        metavar="LO,HI",
        help="Guide only at noise levels t/T in [LO, HI] (0 = clean, 1 = pure noise); the other "
        "steps cost half (default: the model's; upsample-tiny: 0.8,1; AudioSR: 0,1).",
        rich_help_panel=RUN,
    ),
]


def parse_interval(value: str | None) -> tuple[float, float] | None:
    """``"LO,HI"`` -> ``(lo, hi)`` with ``0 <= lo <= hi <= 1`` (None stays None)."""
    if value is None:
        return None
    parts = value.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise UsageError(
            f"--guidance-interval must be two numbers LO,HI (e.g. 0.8,1), got {value!r}"
        ) from None
    if not 0 <= lo <= hi <= 1:
        raise UsageError(f"--guidance-interval needs 0 <= LO <= HI <= 1, got {value!r}")
    return lo, hi


class CudaGraphsChoice(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


CudaGraphsOpt = Annotated[
    CudaGraphsChoice,
    typer.Option(
        "--cuda-graphs",
        help="Replay the denoiser step from a CUDA graph: auto (on for CUDA, off elsewhere), "
        "on (CUDA only) or off.",
        rich_help_panel=RUN,
    ),
]

HELP = (
    "Restore the missing high band of band-limited audio (any rate in, 48 kHz out) with "
    "chunked latent diffusion and a whole-file global context. Keeps the input's own low band, "
    "level, channels and exact duration."
)
EPILOG = (
    "Examples:\n\n"
    "  audiotool upsample speech_16k.wav -o speech_48k.wav\n\n"
    "  audiotool upsample recordings/ -o upsampled/ --steps 25 --guidance 2.5\n\n"
    "  audiotool upsample in.wav -o out.wav --sampler ddim --steps 50   # AudioSR's sampler\n\n"
    "  audiotool upsample old.mp3 -o restored.flac --cutoff 11000 --seed 7\n\n"
    "  audiotool upsample in.wav -o out.wav --model org/audiosr-converted --device cuda "
    "--precision bf16"
)


def _parse_cutoff(value: str) -> float | None:
    if value.strip().lower() == "auto":
        return None
    try:
        hz = float(value.lower().removesuffix("hz"))
    except ValueError:
        raise UsageError(f"--cutoff must be 'auto' or a frequency in Hz, got {value!r}") from None
    if hz <= 0:
        raise UsageError(f"--cutoff must be positive, got {value!r}")
    return hz


def upsample(
    inputs: InputsArg,
    output: OutputOpt = None,
    filename: FilenameOpt = None,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    steps: StepsOpt = None,
    sampler: SamplerOpt = None,
    spacing: SpacingOpt = None,
    guidance: GuidanceOpt = None,
    guidance_interval: GuidanceIntervalOpt = None,
    eta: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            "--eta", min=0.0, help="DDIM stochasticity (0 deterministic).", rich_help_panel=RUN
        ),
    ] = None,
    chunk_seconds: ChunkSecondsOpt = None,
    overlap_seconds: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            "--overlap-seconds", min=0.0, help="Overlap between chunks.", rich_help_panel=RUN
        ),
    ] = None,
    cutoff: Annotated[
        str,
        typer.Option("--cutoff", help="'auto' or Hz: the band above it is generated."),
    ] = "auto",
    sr: Annotated[
        int, typer.Option("--sr", min=8000, max=192000, help="Output sample rate.")
    ] = 48000,
    no_global_context: Annotated[
        bool,
        typer.Option(
            "--no-global-context",
            help="Do not use the whole-file global encoder.",
            rich_help_panel=RUN,
            metavar=FLAG,
        ),
    ] = False,
    fmt: FormatOpt = None,
    bit_depth: BitDepthOpt = BitDepthChoice.b24,
    clip: ClipOpt = ClipChoice.rescale,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    batch_size: BatchSizeOpt = None,
    precision: PrecisionOpt = PrecisionChoice.fp32,
    cuda_graphs: CudaGraphsOpt = CudaGraphsChoice.auto,
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
    skip_existing: SkipExistingOpt = False,
    fail_fast: FailFastOpt = False,
    shard: ShardOpt = None,
    manifest: ManifestOpt = None,
    resume: ResumeOpt = False,
    engine: EngineOpt = EngineChoice.local,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 1,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    cpus_per_worker: CpusPerWorkerOpt = 1.0,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    from audiotool.cli._report import print_summary, run_reported, setup_logging
    from audiotool.paths import expand_inputs
    from audiotool.tasks.upsample import UpsampleOptions, upsample_files

    setup_logging(quiet=quiet)
    out = output_options(
        output=output,
        filename=filename,
        overwrite=overwrite,
        skip_existing=skip_existing,
        fail_fast=fail_fast,
        bit_depth=bit_depth,
        clip=clip,
        fmt=fmt,
    )
    rt, scale = compute_and_scale(
        device=device,
        precision=precision,
        batch_size=batch_size,
        seed=seed,
        threads=threads,
        shard=shard,
        manifest=manifest,
        resume=resume,
        engine=engine,
        ray_address=ray_address,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
    )
    opts = UpsampleOptions(
        steps=steps,
        sampler=sampler.value if sampler else None,
        spacing=spacing.value if spacing else None,
        guidance=guidance,
        guidance_interval=parse_interval(guidance_interval),
        eta=eta,
        chunk_seconds=chunk_seconds,
        overlap_seconds=overlap_seconds,
        cutoff=_parse_cutoff(cutoff),
        output_rate=sr,
        global_context=not no_global_context,
        cuda_graphs=cuda_graphs.value,
    )
    expanded = expand_inputs(inputs, stdin=sys.stdin)
    report = run_reported(
        "upsample",
        lambda bars: upsample_files(
            expanded,
            model=model,
            revision=revision,
            options=opts,
            output=out,
            runtime=rt,
            progress=bars,
            scale=scale,
        ),
        as_json=as_json,
        quiet=quiet,
    )
    print_summary(report, as_json=as_json, quiet=quiet)
    raise typer.Exit(report.exit_code)

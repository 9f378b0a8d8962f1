"""`audiotool separate`: split songs into stems."""

from __future__ import annotations

import sys
from pathlib import Path
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

HELP = (
    "Separate songs into stems (vocals, drums, bass, other) with batched overlap-add. "
    "Writes OUT/{track}/{stem}.wav at the input's rate and channel count."
)
EPILOG = (
    "Examples:\n\n"
    "  audiotool separate song.wav\n\n"
    "  audiotool separate song.flac --stems vocals --residual -o stems/\n\n"
    "  audiotool separate album/ -o stems/ --filename '{track}_{stem}.{ext}' --format flac\n\n"
    "  audiotool separate song.wav --shifts 2 --mixture-consistent --bit-depth 32f --clip none\n\n"
    "  audiotool separate song.flac --model adefossez/HTDemucs-ft -o stems/\n\n"
    "  audiotool separate song.flac --model htdemucs_6s --stems guitar,piano\n\n"
    "  audiotool separate song.flac --model htdemucs --model htdemucs_ft --ensemble avg"
)


def separate(
    inputs: InputsArg,
    output: OutputOpt = None,
    stems: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--stems", help="Comma-separated stems to write (default: all)."),
    ] = None,
    residual: Annotated[
        bool,
        typer.Option(
            "--residual",
            help="Also write mixture minus the chosen stems (no_<stem> or rest).",
            metavar=FLAG,
        ),
    ] = False,
    filename: FilenameOpt = None,
    model: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--model",
            "-m",
            help="Model: zoo name (audiotool models list), local folder, org/name[@rev][:FILE] "
            "on the Hugging Face Hub, or a demucs name (htdemucs, htdemucs_ft, htdemucs_6s, "
            "hdemucs_mmi). "
            "Repeat it (or give a comma list) for an ensemble. Default: the zoo's model.",
        ),
    ] = None,
    ensemble: Annotated[
        str,
        typer.Option(
            "--ensemble",
            help="How several --model combine: avg (waveform mean), median, max_spec, min_spec.",
            rich_help_panel=RUN,
        ),
    ] = "avg",
    revision: RevisionOpt = None,
    chunk_seconds: ChunkSecondsOpt = None,
    overlap: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            "--overlap",
            help="Chunk overlap as a fraction (0-1); RoFormer models also take MSST's "
            "num_overlap (a whole number >= 1).",
            rich_help_panel=RUN,
        ),
    ] = None,
    hop_seconds: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--hop-seconds", help="Hop between chunks in seconds.", rich_help_panel=RUN),
    ] = None,
    shifts: Annotated[
        int,
        typer.Option(
            "--shifts",
            min=0,
            help="Test-time shift averaging (N extra passes).",
            rich_help_panel=RUN,
        ),
    ] = 0,
    mixture_consistent: Annotated[
        bool,
        typer.Option(
            "--mixture-consistent", help="Make the stems sum exactly to the mixture.", metavar=FLAG
        ),
    ] = False,
    query: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--query", help="Reference clip, for query-conditioned models."),
    ] = None,
    query_model: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--query-model", help="Embed model for the query (default: the zoo's)."),
    ] = None,
    fmt: FormatOpt = None,
    bit_depth: BitDepthOpt = BitDepthChoice.b24,
    clip: ClipOpt = ClipChoice.rescale,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    batch_size: BatchSizeOpt = None,
    precision: PrecisionOpt = PrecisionChoice.fp32,
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
    from audiotool.tasks.separate import SeparateOptions, separate_files

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
    opts = SeparateOptions(
        stems=None if stems is None else tuple(s.strip() for s in stems.split(",") if s.strip()),
        residual=residual,
        chunk_seconds=chunk_seconds,
        overlap=overlap,
        hop_seconds=hop_seconds,
        shifts=shifts,
        mixture_consistent=mixture_consistent,
        query=query,
        query_model=query_model,
        ensemble=ensemble,
    )
    expanded = expand_inputs(inputs, stdin=sys.stdin)
    report = run_reported(
        "separate",
        lambda bars: separate_files(
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

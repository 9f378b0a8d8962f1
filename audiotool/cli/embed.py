"""`audiotool embed`: clip and segment embeddings."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from audiotool.cli._options import (
    FLAG,
    BatchSizeOpt,
    CpusPerWorkerOpt,
    DeviceOpt,
    EmbedFormatChoice,
    EngineChoice,
    EngineOpt,
    FailFastOpt,
    FilenameOpt,
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

HELP = (
    "Embed audio with the audio branch (Conformer + segment pooling): per file a pooled "
    "clip embedding, segment embeddings and their timestamps. Writes one file per input into "
    "a folder, or one combined file when -o ends in .npz/.npy/.jsonl."
)
EPILOG = (
    "Examples:\n\n"
    "  audiotool embed clips/ -o embeddings.npz\n\n"
    "  audiotool embed a.wav b.flac -o out/ --format jsonl\n\n"
    "  audiotool embed clips/ -o pooled.npy --pooled-only"
)


def embed(
    inputs: InputsArg,
    output: OutputOpt = None,
    fmt: Annotated[
        EmbedFormatChoice,
        typer.Option("--format", help="File type of per-file outputs (-o FOLDER)."),
    ] = EmbedFormatChoice.npz,
    pooled_only: Annotated[
        bool, typer.Option("--pooled-only", help="Only the pooled clip embedding.", metavar=FLAG)
    ] = False,
    filename: FilenameOpt = None,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
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
    from audiotool.tasks.embed import embed_files

    setup_logging(quiet=quiet)
    out = output_options(
        output=output,
        filename=filename,
        overwrite=overwrite,
        skip_existing=skip_existing,
        fail_fast=fail_fast,
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
    expanded = expand_inputs(inputs, stdin=sys.stdin)
    report = run_reported(
        "embed",
        lambda bars: embed_files(
            expanded,
            model=model,
            revision=revision,
            fmt=fmt.value,
            pooled_only=pooled_only,
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

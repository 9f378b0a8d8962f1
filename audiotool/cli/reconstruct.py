"""`audiotool reconstruct`: representation round trips with quality metrics."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from audiotool.cli._options import (
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

HELP = (
    "Encode audio into a model's representation (a learned codec latent, or an RAE's frozen "
    "encoder) and decode it back; reports SI-SDR, "
    "log-mel distance and multi-resolution STFT distance per file."
)
EPILOG = (
    "Examples:\n\n"
    "  audiotool reconstruct in.wav -o roundtrip.wav\n\n"
    "  audiotool reconstruct clips/ -o rt/ --json > metrics.json\n\n"
    "  audiotool reconstruct speech.flac -o rt.wav --latents latents.safetensors"
)


def reconstruct(
    inputs: InputsArg,
    output: OutputOpt = None,
    latents: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--latents", help="Also save the latents (one tensor per input)."),
    ] = None,
    filename: FilenameOpt = None,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    chunk_seconds: ChunkSecondsOpt = None,
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
    from audiotool.cli._report import print_rows, print_summary, run_reported, setup_logging
    from audiotool.paths import expand_inputs
    from audiotool.tasks.reconstruct import reconstruct_files

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
    expanded = expand_inputs(inputs, stdin=sys.stdin)
    report = run_reported(
        "reconstruct",
        lambda bars: reconstruct_files(
            expanded,
            model=model,
            revision=revision,
            latents_path=latents,
            chunk_seconds=chunk_seconds,
            output=out,
            runtime=rt,
            progress=bars,
            scale=scale,
        ),
        as_json=as_json,
        quiet=quiet,
    )
    ok = [r for r in report.results if r.status == "ok"]
    if ok and not as_json:
        rows = [
            [
                r.input,
                _num(r.details["si_sdr"], 2),
                _num(r.details.get("log_mel"), 3),
                _num(r.details.get("mrstft"), 3),
            ]
            for r in ok
        ]
        mean = report.extra.get("mean", {})
        if len(ok) > 1 and mean:
            rows.append(
                [
                    "mean",
                    _num(mean["si_sdr"], 2),
                    _num(mean["log_mel"], 3),
                    _num(mean["mrstft"], 3),
                ]
            )
        print_rows(["file", "SI-SDR dB", "log-mel dist", "MR-STFT dist"], rows)
    print_summary(report, as_json=as_json, quiet=quiet)
    raise typer.Exit(report.exit_code)


def _num(value: float | None, digits: int) -> str:
    """A metric for the table; ``-`` when it was not computed (streamed long files)."""
    return "-" if value is None else f"{value:.{digits}f}"

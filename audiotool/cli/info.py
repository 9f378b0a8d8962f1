"""`audiotool info`: what a file holds and whether upsampling it makes sense."""

from __future__ import annotations

import sys

import typer

from audiotool.cli._options import (
    CpusPerWorkerOpt,
    EngineChoice,
    EngineOpt,
    FailFastOpt,
    GpusPerWorkerOpt,
    InputsArg,
    JsonOpt,
    ManifestOpt,
    QuietOpt,
    RayAddressOpt,
    ResumeOpt,
    ShardOpt,
    WorkersOpt,
    scale_options,
)

HELP = (
    "Show rate, channels, duration, sample format, peak / RMS level and the effective "
    "bandwidth (the highest frequency with real content) of audio files."
)
EPILOG = (
    "Examples:\n\n"
    "  audiotool info song.flac\n\n"
    "  audiotool info recordings/ --json > info.json\n\n"
    "  find . -name '*.wav' | audiotool info -\n\n"
    "  audiotool info corpus/ --shard 3/8 --manifest info-3.jsonl --json"
)


def info(
    inputs: InputsArg,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    fail_fast: FailFastOpt = False,
    shard: ShardOpt = None,
    manifest: ManifestOpt = None,
    resume: ResumeOpt = False,
    engine: EngineOpt = EngineChoice.local,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 1,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    cpus_per_worker: CpusPerWorkerOpt = 1.0,
) -> None:
    from audiotool.cli._report import print_rows, print_summary, run_reported, setup_logging
    from audiotool.paths import expand_inputs
    from audiotool.tasks.info import info_batch

    setup_logging(quiet=quiet)
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
    expanded = expand_inputs(inputs, stdin=sys.stdin)
    report = run_reported(
        "info",
        lambda bars: info_batch(expanded, fail_fast=fail_fast, progress=bars, scale=scale),
        as_json=as_json,
        quiet=quiet,
        bars=False,
    )
    if not as_json:
        header = ["file", "rate", "ch", "duration", "format", "peak dBFS", "RMS dBFS", "bandwidth"]
        rows = [
            [
                r.input,
                f"{r.details['sample_rate']}",
                f"{r.details['channels']}",
                f"{r.details['duration']:.2f} s",
                f"{r.details['format']}/{r.details['subtype']}",
                _db(r.details["peak_dbfs"]),
                _db(r.details["rms_dbfs"]),
                f"{r.details['bandwidth_hz'] / 1000:.1f} kHz",
            ]
            for r in report.results
            if r.status == "ok"
        ]
        if rows:
            print_rows(header, rows)
    print_summary(report, as_json=as_json, quiet=quiet, counts_line=False)
    raise typer.Exit(report.exit_code)


def _db(value: float) -> str:
    return "-inf" if value == float("-inf") else f"{value:.1f}"

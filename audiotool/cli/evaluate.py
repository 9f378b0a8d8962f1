"""`audiotool eval upsample | separate | reconstruct | embed`: scores beside baselines."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from audiotool.cli._options import (
    FLAG,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    QuietOpt,
    RevisionOpt,
    ThreadsOpt,
)
from audiotool.cli.upsample import (
    GuidanceIntervalOpt,
    GuidanceOpt,
    SamplerOpt,
    SpacingOpt,
    StepsOpt,
    parse_interval,
)

app = typer.Typer(
    help="Measure quality on real recordings, beside baselines.",
    no_args_is_help=True,
    add_completion=False,
)

DataOpt = Annotated[Path, typer.Option("--data", help="Folder of reference recordings.")]


def _report(result: dict[str, Any], as_json: bool, per_file: bool) -> None:
    from audiotool.cli._report import print_rows
    from audiotool.evaluation import format_rows

    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    header, rows = format_rows(result, per_file=per_file)
    print_rows(header, rows)


def _is_terminal() -> bool:
    from audiotool.cli._report import stderr

    return bool(stderr.is_terminal)


class _FileLines:
    """Progress as one stderr line per finished file with elapsed time and ETA (for logs)."""

    def __init__(self) -> None:
        import time

        self._clock = time.monotonic
        self._t0 = self._clock()

    def start(self, key: str, total: int | None, description: str = "") -> None:
        if key == "files":
            self._t0 = self._clock()

    def update(self, key: str, completed: int, total: int | None = None) -> None:
        if key != "files" or not completed:
            return
        spent = self._clock() - self._t0
        left = spent / completed * ((total or completed) - completed)
        sys.stderr.write(f"file {completed}/{total}: {spent:.0f} s elapsed, ETA {_hms(left)}\n")
        sys.stderr.flush()

    def end(self, key: str) -> None:
        return None


def _hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _runtime(device: str, threads: int | None) -> Any:
    from audiotool.tasks._batch import RuntimeOptions
    from audiotool.tasks.common import Runtime

    return Runtime.from_options(RuntimeOptions(device=device, threads=threads))


@app.command(
    "upsample",
    epilog="Examples:\n\n  audiotool eval upsample --data refs/ "
    "--input-rate 16000 --json > eval.json\n\n"
    "  audiotool eval upsample --data refs/ --limit 10 --sampler ddim --steps 50",
)
def eval_upsample(
    data: DataOpt,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    input_rate: Annotated[int, typer.Option("--input-rate", help="8000|12000|16000|24000")] = 16000,
    steps: StepsOpt = None,
    sampler: SamplerOpt = None,
    spacing: SpacingOpt = None,
    guidance: GuidanceOpt = None,
    guidance_interval: GuidanceIntervalOpt = None,
    limit: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            "--limit", min=1, help="Score N references spread evenly over the sorted list."
        ),
    ] = None,
    no_model: Annotated[
        bool, typer.Option("--no-model", help="Only the input and baseline rows.", metavar=FLAG)
    ] = False,
    per_file: Annotated[bool, typer.Option("--per-file/--mean-only", metavar=FLAG)] = True,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """LSD (full, HF, LF), SI-SDR, the generated-to-true high-band energy (dB) at 48 kHz of the
    model, the degraded input and SBR; and how many model outputs needed limiting.

    Progress (file i/N, elapsed, ETA) goes to stderr: bars on a terminal, one line per file
    otherwise (--quiet silences both).
    """
    from audiotool.cli._report import progress_bars, setup_logging
    from audiotool.errors import UsageError
    from audiotool.evaluation import evaluate_upsample

    setup_logging(quiet=quiet)
    if input_rate not in (8000, 12000, 16000, 24000):
        raise UsageError(f"--input-rate must be 8000, 12000, 16000 or 24000, got {input_rate}")
    interval = parse_interval(guidance_interval)
    systems = {}
    if not no_model:
        from audiotool.tasks.common import load_task_model
        from audiotool.tasks.upsample import UpsampleOptions, upsample_tensor

        rt = _runtime(device, threads)
        loaded: Any = load_task_model(model, "upsample", revision=revision, runtime=rt)
        opts = UpsampleOptions(
            steps=steps,
            sampler=sampler.value if sampler else None,
            spacing=spacing.value if spacing else None,
            guidance=guidance,
            guidance_interval=interval,
            cutoff=0.95 * input_rate / 2,
        )

        def upsample_model(x: Any, sr: int) -> tuple[Any, dict[str, bool]]:
            res = upsample_tensor(loaded.model, loaded.config, x, sr, options=opts, runtime=rt)
            return res.audio, {"limited": res.limited}

        systems["model"] = upsample_model
    with progress_bars(quiet=quiet) as bars:
        shown = bars if quiet or _is_terminal() else _FileLines()
        result = evaluate_upsample(
            data, systems=systems, input_rate=input_rate, limit=limit, progress=shown
        )
    _report(result, as_json, per_file)


@app.command("separate", epilog="Example:\n\n  audiotool eval separate --data songs/ --json")
def eval_separate(
    data: DataOpt,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    csdr: Annotated[
        bool, typer.Option("--csdr", help="Also museval cSDR (extra 'eval').", metavar=FLAG)
    ] = False,
    no_model: Annotated[bool, typer.Option("--no-model", metavar=FLAG)] = False,
    per_file: Annotated[bool, typer.Option("--per-file/--mean-only", metavar=FLAG)] = True,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """SI-SDR and uSDR per stem of the model, the mixture, and the HPSS baseline."""
    from audiotool.cli._report import setup_logging
    from audiotool.evaluation import evaluate_separation

    setup_logging(quiet=quiet)
    systems = {}
    if not no_model:
        from audiotool.tasks.common import load_task_model
        from audiotool.tasks.separate import SeparateOptions, separate_tensor

        rt = _runtime(device, threads)
        loaded = load_task_model(model, "separate", revision=revision, runtime=rt)
        systems["model"] = lambda x, sr: separate_tensor(
            loaded.model, loaded.config, x, sr, options=SeparateOptions(), runtime=rt
        )
    result = evaluate_separation(data, systems=systems, with_csdr=csdr)
    _report(result, as_json, per_file)


@app.command("reconstruct")
def eval_reconstruct(
    data: DataOpt,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    per_file: Annotated[bool, typer.Option("--per-file/--mean-only", metavar=FLAG)] = True,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Round trips of the model vs Griffin-Lim from the true mel (the no-learning baseline:
    80 bands, FFT 1024, hop 160 at 16 kHz)."""
    from audiotool.baselines import griffin_lim_from_mel
    from audiotool.cli._report import setup_logging
    from audiotool.evaluation import evaluate_reconstruct
    from audiotool.tasks.common import load_task_model
    from audiotool.tasks.reconstruct import reconstruct_tensor

    setup_logging(quiet=quiet)
    rt = _runtime(device, threads)
    loaded: Any = load_task_model(model, "reconstruct", revision=revision, runtime=rt)
    net = loaded.model
    systems = {
        "model": lambda x, sr: (
            reconstruct_tensor(
                net,
                loaded.config,
                x,
                sr,
                runtime=rt,
            ).audio
        ),
        "baseline": griffin_lim_from_mel,
    }
    _report(evaluate_reconstruct(data, systems=systems), as_json, per_file)


@app.command("embed")
def eval_embed(
    data: DataOpt,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    untrained: Annotated[
        bool,
        typer.Option(
            "--untrained/--no-untrained",
            help="Also the same architecture, untrained.",
            metavar=FLAG,
        ),
    ] = True,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """1-NN / 5-NN and linear-probe accuracy on DATA/<label>/* clips."""
    import numpy as np
    import torch

    from audiotool.audio import read_audio
    from audiotool.checkpoints import build_model
    from audiotool.cli._report import setup_logging
    from audiotool.evaluation import evaluate_embeddings
    from audiotool.tasks.common import load_task_model
    from audiotool.tasks.embed import embed_tensor

    setup_logging(quiet=quiet)
    rt = _runtime(device, threads)
    loaded: Any = load_task_model(model, "embed", revision=revision, runtime=rt)

    def make(net: Any) -> Any:
        def fn(files: list[Path]) -> np.ndarray:
            out = []
            for f in files:
                a = read_audio(f)
                out.append(
                    embed_tensor(
                        net,
                        loaded.config,
                        a.samples,
                        a.sample_rate,
                        runtime=rt,
                    ).pooled
                )
            return np.stack(out)

        return fn

    systems = {"model": make(loaded.model)}
    if untrained:
        torch.manual_seed(0)
        systems["untrained"] = make(build_model(loaded.config).to(rt.device).eval())
    _report(evaluate_embeddings(data, systems=systems), as_json, False)

"""`audiotool models list | info | download | convert`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from audiotool.cli._options import FLAG, JsonOpt, RevisionOpt

app = typer.Typer(
    help="List, inspect, download and convert models.",
    no_args_is_help=True,
    add_completion=False,
)

SpecArg = Annotated[
    str,
    typer.Argument(
        help="Zoo name, local folder, or org/name[@revision] on the Hub.", show_default=False
    ),
]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Hub cache folder (default: HF_HUB_CACHE / HF_HOME)."),
]


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n else "-"


@app.command(
    "list",
    epilog="Examples:\n\n  audiotool models list\n\n  audiotool models list --json",
)
def list_models(as_json: JsonOpt = False) -> None:
    """List the bundled model zoo (no download, no torch)."""
    from audiotool.hub import zoo_dir, zoo_entries

    entries = zoo_entries()
    if as_json:
        rows = [
            {
                "name": e.name,
                "task": e.task,
                "family": e.family,
                "sample_rate": e.sample_rate,
                "size_bytes": e.size_bytes,
                "default": e.default,
                "description": e.description,
                "path": str(e.path),
            }
            for e in entries
        ]
        sys.stdout.write(json.dumps({"zoo": str(zoo_dir()), "models": rows}) + "\n")
        return
    from audiotool.cli._report import print_rows, stderr

    if not entries:
        stderr.print(f"the model zoo at {zoo_dir()} is empty", markup=False)
        return
    print_rows(
        ["name", "task", "family", "rate", "size", "default", "description"],
        [
            [
                e.name,
                e.task,
                e.family,
                str(e.sample_rate),
                _size(e.size_bytes),
                "yes" if e.default else "",
                e.description,
            ]
            for e in entries
        ],
    )
    stderr.print(
        "Also accepted by --model: a local folder with config.json + model.safetensors, or "
        "org/name[@revision] on the Hugging Face Hub.",
        markup=False,
    )
    return


@app.command(
    "info",
    epilog="Examples:\n\n  audiotool models info upsample-tiny\n\n"
    "  audiotool models info ./my-model --json",
)
def info_model(
    spec: SpecArg,
    revision: RevisionOpt = None,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a model's family, task, rate, parameters and card (reads files only)."""
    from audiotool.checkpoints import CARD_NAME, WEIGHTS_NAME, count_parameters
    from audiotool.hub import read_config, resolve

    resolved = resolve(spec, revision=revision, cache_dir=cache_dir)
    config = read_config(resolved.folder)
    weights = resolved.folder / WEIGHTS_NAME
    card = resolved.folder / CARD_NAME
    data = {
        "spec": spec,
        "id": resolved.model_id,
        "source": resolved.source,
        "path": str(resolved.folder),
        "family": config.family,
        "task": config.task,
        "sample_rate": config.sample_rate,
        "parameters": count_parameters(weights),
        "size_bytes": weights.stat().st_size,
        "config": config.to_dict(),
    }
    stems: list[str] = list(getattr(config, "stems", None) or [])
    if stems:
        data["stems"] = stems
    segment = getattr(config, "segment_samples", None)
    if segment:
        data["segment_seconds"] = round(int(segment) / config.sample_rate, 4)
    if resolved.layout is not None:
        data["converted_from"] = f"{resolved.layout}: {resolved.origin}"
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
        return
    from audiotool.cli._report import stdout

    for key in ("id", "source", "converted_from", "path", "family", "task", "sample_rate"):
        if key in data:
            stdout.print(f"{key:>12}: {data[key]}", markup=False)
    if stems:
        stdout.print(f"{'stems':>12}: {', '.join(stems)}", markup=False)
    if "segment_seconds" in data:
        stdout.print(f"{'segment':>12}: {data['segment_seconds']} s", markup=False)
    stdout.print(f"{'parameters':>12}: {data['parameters']:,}", markup=False)
    stdout.print(f"{'size':>12}: {_size(weights.stat().st_size)}", markup=False)
    if card.is_file():
        stdout.print("", markup=False)
        stdout.print(_card_summary(card.read_text(encoding="utf-8")), markup=False)
    return


def _card_summary(text: str, lines: int = 25) -> str:
    body = text
    if body.startswith("---"):
        end = body.find("\n---", 3)
        if end != -1:
            body = body[end + 4 :]
    out = [ln for ln in body.strip().splitlines()][:lines]
    return "\n".join(out)


@app.command(
    "download",
    epilog="Examples:\n\n  audiotool models download org/name\n\n"
    "  audiotool models download org/name@v1.0 --cache-dir ./hf-cache",
)
def download_model(
    spec: SpecArg,
    revision: RevisionOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Fetch a Hub model into the cache (for later offline use) and print its folder."""
    from audiotool.hub import resolve

    resolved = resolve(spec, revision=revision, cache_dir=cache_dir, local_files_only=False)
    sys.stdout.write(f"{resolved.folder}\n")
    return


CONVERTERS = {
    "audiosr": "AudioSR pytorch_model.bin (haoheliu/audiosr_basic, audiosr_speech)",
    "hdemucs": "torchaudio HDemucs state dict (e.g. HDEMUCS_HIGH_MUSDB weights)",
    "roformer": "BS-/Mel-Band-RoFormer .ckpt/.pth + MSST YAML (--config), as for audio-separator",
}


@app.command(
    "convert",
    epilog="Examples:\n\n"
    "  audiotool models convert audiosr pytorch_model.bin -o models/audiosr-basic\n\n"
    "  audiotool models convert audiosr pytorch_model.bin -o audiosr-global --global-encoder\n\n"
    "  audiotool models convert hdemucs hdemucs_high.pt -o hdemucs-high\n\n"
    "  audiotool models convert roformer model_bs_roformer.ckpt --config config.yaml -o bs-rof",
)
def convert_model(
    kind: Annotated[str, typer.Argument(help=f"One of: {', '.join(CONVERTERS)}.")],
    checkpoint: Annotated[Path, typer.Argument(help="The pickle checkpoint to read.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write.")],
    config: Annotated[
        Path | None,
        typer.Option("--config", help="roformer: the model's MSST YAML config."),
    ] = None,
    global_encoder: Annotated[
        bool,
        typer.Option(
            "--global-encoder", help="audiosr: add the (untrained) global encoder.", metavar=FLAG
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing folder.", metavar=FLAG)
    ] = False,
) -> None:
    """Convert a public checkpoint into audiotool's format (read with weights_only=True)."""
    from audiotool.errors import OutputExistsError, UsageError

    if kind not in CONVERTERS:
        raise UsageError(f"unknown checkpoint kind {kind!r}", hint=f"one of {list(CONVERTERS)}")
    if (output / "model.safetensors").exists() and not overwrite:
        raise OutputExistsError(f"{output} already holds a model", hint="pass --overwrite")
    if (config is not None) != (kind == "roformer"):
        raise UsageError(
            "--config is needed for roformer checkpoints (their MSST YAML)"
            if kind == "roformer"
            else f"--config is only for roformer checkpoints, not {kind}"
        )
    if kind == "roformer":
        from audiotool.importers.roformer import import_roformer

        assert config is not None
        folder = import_roformer(checkpoint, config, output)
    elif kind == "audiosr":
        from audiotool.importers.audiosr import import_audiosr

        folder = import_audiosr(checkpoint, output, global_encoder=global_encoder)
    else:
        from audiotool.importers.hdemucs import import_hdemucs

        folder = import_hdemucs(checkpoint, output)
    sys.stdout.write(f"{folder}\n")

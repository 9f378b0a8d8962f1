"""`audiotool train TASK --data DIR --config FILE.yaml -o DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from audiotool.cli._options import FLAG, DeviceOpt, QuietOpt, ThreadsOpt

HELP = (
    "Train a model from a YAML recipe on a dataset folder and write a zoo folder "
    "(config.json, model.safetensors, README.md card). Resumes from OUT/checkpoints."
)
EPILOG = (
    "Examples:\n\n"
    "  audiotool train separate --data data/separate --config recipes/separate-small.yaml "
    "-o models/separate-small\n\n"
    "  torchrun --nproc_per_node 2 -m audiotool train embed --data data/embed "
    "--config recipes/embed-small.yaml -o out/embed"
)


def train(
    task: Annotated[str, typer.Argument(help="upsample | separate | embed | reconstruct")],
    data: Annotated[Path, typer.Option("--data", help="Dataset folder (train/, val/).")],
    config: Annotated[Path, typer.Option("--config", help="YAML recipe.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Zoo folder to write.")],
    restart: Annotated[
        bool, typer.Option("--restart", help="Ignore existing checkpoints.", metavar=FLAG)
    ] = False,
    max_steps: Annotated[
        Optional[int], typer.Option("--max-steps", help="Stop after this step (resumable).")  # noqa: UP045
    ] = None,
    time_limit: Annotated[
        Optional[float], typer.Option("--time-limit", help="Stop after N seconds (resumable).")  # noqa: UP045
    ] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    from audiotool.checkpoints import build_model
    from audiotool.cli._report import progress_bars, setup_logging
    from audiotool.device import resolve_device, set_threads
    from audiotool.errors import UsageError
    from audiotool.training import distributed
    from audiotool.training.adapters import make_adapter
    from audiotool.training.loop import train as run
    from audiotool.training.recipe import load_recipe

    setup_logging(quiet=quiet)
    recipe = load_recipe(config)
    if recipe.task != task:
        raise UsageError(f"{config} is a '{recipe.task}' recipe, not '{task}'")
    set_threads(threads)
    dev = distributed.init(resolve_device(device))
    adapter = make_adapter(recipe, data)
    try:
        with progress_bars(quiet=quiet or distributed.rank() != 0) as bars:
            result = run(
                recipe,
                adapter,
                build=build_model,
                out_dir=output,
                device=dev,
                resume=not restart,
                progress=bars,
                max_steps=max_steps,
                time_limit_s=time_limit,
            )
    finally:
        distributed.shutdown()
    if distributed.rank() == 0:
        typer.echo(
            f"step {result.steps}, {result.wall_seconds / 60:.1f} min, "
            f"metrics {result.final_metrics}",
            err=True,
        )

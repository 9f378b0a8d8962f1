"""Commands whose issue has not landed yet: they say so plainly and exit 2 (never fake output)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from audiotool.errors import NotAvailableError

_PENDING = {
    "eval": "Score a model against baselines on real recordings (issue #7).",
    "data": "Build training / validation sets from real recordings (issue #7).",
    "train": "Train a model and write a zoo folder (issue #8).",
}


def _make(name: str) -> Callable[..., None]:
    def command(
        args: Annotated[list[str] | None, typer.Argument(hidden=True)] = None,
    ) -> None:
        raise NotAvailableError(f"`audiotool {name}` is not available yet in this version")

    command.__name__ = name
    return command


def register(app: typer.Typer) -> None:
    """Add the pending commands to ``app``."""
    for name, help_text in _PENDING.items():
        app.command(
            name,
            help=f"{help_text} [not available yet]",
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        )(_make(name))

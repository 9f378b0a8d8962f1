"""`audiotool embed` (not available yet)."""

from __future__ import annotations

from typing import Annotated

import typer

from audiotool.errors import NotAvailableError

HELP = "embed audio files [not available yet]."
EPILOG = ""


def embed(
    args: Annotated[list[str] | None, typer.Argument(hidden=True)] = None,
) -> None:
    raise NotAvailableError("`audiotool embed` is not available yet in this version")

"""`audiotool separate` (not available yet)."""

from __future__ import annotations

from typing import Annotated

import typer

from audiotool.errors import NotAvailableError

HELP = "separate audio files [not available yet]."
EPILOG = ""


def separate(
    args: Annotated[list[str] | None, typer.Argument(hidden=True)] = None,
) -> None:
    raise NotAvailableError("`audiotool separate` is not available yet in this version")

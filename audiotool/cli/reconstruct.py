"""`audiotool reconstruct` (not available yet)."""

from __future__ import annotations

from typing import Annotated

import typer

from audiotool.errors import NotAvailableError

HELP = "reconstruct audio files [not available yet]."
EPILOG = ""


def reconstruct(
    args: Annotated[list[str] | None, typer.Argument(hidden=True)] = None,
) -> None:
    raise NotAvailableError("`audiotool reconstruct` is not available yet in this version")

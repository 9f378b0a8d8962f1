"""`audiotool upsample` (not available yet)."""

from __future__ import annotations

from typing import Annotated

import typer

from audiotool.errors import NotAvailableError

HELP = "upsample audio files [not available yet]."
EPILOG = ""


def upsample(
    args: Annotated[list[str] | None, typer.Argument(hidden=True)] = None,
) -> None:
    raise NotAvailableError("`audiotool upsample` is not available yet in this version")

"""Thin Typer commands over :mod:`audiotool.tasks`."""

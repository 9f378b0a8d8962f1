"""Typed errors raised by the library.

Every error carries a one-line ``message`` (what went wrong, naming the file or spec) and an
optional ``hint`` (how to fix it). The CLI turns them into a single line on stderr and an exit
code (see :mod:`audiotool.cli.app`); library code never prints or exits.
"""

from __future__ import annotations

import os


def debug_enabled() -> bool:
    """Whether ``AUDIOTOOL_DEBUG`` asks for tracebacks instead of one-line errors."""
    return os.environ.get("AUDIOTOOL_DEBUG", "").strip() not in ("", "0")


class AudiotoolError(Exception):
    """Base class of every error audiotool raises on purpose.

    Args:
        message: what went wrong, naming the file / spec / option concerned.
        hint: how to fix it (shown after the message by the CLI).
    """

    #: exit code the CLI uses when this error ends the whole command
    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(AudiotoolError):
    """A bad option or combination of options (exit code 2)."""

    exit_code = 2


class NotAvailableError(UsageError):
    """A feature that is not implemented in this version."""


class InputError(AudiotoolError):
    """An input path that cannot be used (missing, empty folder, ...)."""


class AudioReadError(InputError):
    """An audio file that cannot be decoded or holds unusable samples."""


class AudioWriteError(AudiotoolError):
    """An output that cannot be written."""


class OutputExistsError(AudioWriteError):
    """An output file exists and neither --overwrite nor --skip-existing was given."""


class ConfigError(AudiotoolError):
    """A model config that is malformed or names an unknown family / parameter."""


class ModelNotFoundError(AudiotoolError):
    """A model spec that resolves to nothing (typo, offline with empty cache, bad revision)."""


class UnknownModelError(ModelNotFoundError):
    """A spec that cannot name any model (no such path or zoo name, malformed): a usage error
    (exit code 2), the ``--model`` value is what has to change."""

    exit_code = 2


class ModelLoadError(AudiotoolError):
    """A checkpoint that exists but cannot be loaded (corrupt file, pickle, ...)."""


class WeightMismatchError(ModelLoadError):
    """Checkpoint keys or shapes do not match the model built from its config."""

    def __init__(
        self,
        message: str,
        *,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mismatched: list[str] | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.missing = list(missing or [])
        self.unexpected = list(unexpected or [])
        self.mismatched = list(mismatched or [])


class EngineError(AudiotoolError):
    """Inference failed inside the chunking / sampling engine."""


class DeviceOutOfMemoryError(EngineError):
    """The device ran out of memory even with a mini-batch of one chunk."""


class UnsupportedCheckpointError(ModelLoadError):
    """A foreign checkpoint (and its config) that an importer refuses: unknown class, quantized,
    a pickle that needs code, a config that disagrees with the weights, an unsupported option
    (exit code 2: the user picked files audiotool cannot run)."""

    exit_code = 2


class CheckpointMismatchError(UnsupportedCheckpointError, WeightMismatchError):
    """An imported checkpoint whose keys or shapes do not match the model its config builds
    (the lists of keys as in :class:`WeightMismatchError`; exit code 2)."""


class Interrupted(AudiotoolError):
    """Ctrl-C ended the command (exit code 130); the CLI has printed what finished."""

    exit_code = 130

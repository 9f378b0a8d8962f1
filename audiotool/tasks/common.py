"""Pieces shared by the task implementations: model loading for a task, chunk progress."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from audiotool.tasks._batch import (
    DEFAULT_BATCH_ACCELERATOR,
    DEFAULT_BATCH_CPU,
    OutputOptions,
    RunIdentity,
    RuntimeOptions,
)

if TYPE_CHECKING:
    import torch

    from audiotool.hub import LoadedModel, ResolvedSpec
    from audiotool.models._config import ModelConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Runtime:
    """Resolved compute settings: device, autocast dtype, batch size, seed."""

    device: torch.device
    dtype: torch.dtype | None
    batch_size: int
    seed: int

    @classmethod
    def from_options(cls, options: RuntimeOptions) -> Runtime:
        """Resolve ``options``; this also sets torch's (process-wide) CPU thread count."""
        from audiotool.device import resolve_device, resolve_dtype, set_threads

        device = resolve_device(options.device)
        set_threads(options.threads)
        return cls(
            device=device,
            dtype=resolve_dtype(options.precision, device),
            batch_size=options.batch_size
            or (DEFAULT_BATCH_CPU if device.type == "cpu" else DEFAULT_BATCH_ACCELERATOR),
            seed=options.seed,
        )


def load_task_model(
    spec: str | None, task: str, *, revision: str | None, runtime: Runtime
) -> LoadedModel:
    """Load the model for ``task`` (the zoo default when ``spec`` is None) onto the device."""
    from audiotool.hub import load_model

    return load_model(spec, task=task, revision=revision, device=runtime.device)


@dataclasses.dataclass
class TaskModel:
    """A task's model, resolved and its config read (cheap); weights loaded by :meth:`load`.

    A batch validates its options and plans its outputs against ``config`` first, and loads the
    weights only when some file is left to process.
    """

    resolved: ResolvedSpec
    config: ModelConfig

    @property
    def model_id(self) -> str:
        return self.resolved.model_id

    def load(self, runtime: Runtime) -> LoadedModel:
        from audiotool.hub import load_resolved

        return load_resolved(self.resolved, self.config, device=runtime.device)


def resolve_task_model(spec: str | None, task: str, *, revision: str | None) -> TaskModel:
    """Resolve the model for ``task`` (the zoo default when ``spec`` is None), not loading it."""
    from audiotool.hub import resolve_model

    resolved, config = resolve_model(spec, task=task, revision=revision)
    return TaskModel(resolved, config)


def model_revision(resolved: ResolvedSpec) -> str:
    """What identifies the weights, for the manifest.

    Hub models: the commit. Zoo and local models: ``sha256:`` of the ``.json`` and
    ``.safetensors`` files of the model folder (files over 256 MiB: of their size and
    modification time instead, to keep start-up fast).
    """
    import hashlib

    if resolved.revision:
        return resolved.revision
    digest = hashlib.sha256()
    for path in sorted(resolved.folder.glob("*")):
        if path.suffix not in (".json", ".safetensors") or not path.is_file():
            continue
        st = path.stat()
        if st.st_size > 256 * 2**20:
            digest.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        else:
            digest.update(path.name.encode() + path.read_bytes())
    return "sha256:" + digest.hexdigest()[:16]


def run_identity(
    task: str,
    models: Sequence[TaskModel],
    *,
    output: OutputOptions,
    runtime: RuntimeOptions,
    **options: object,
) -> RunIdentity:
    """The :class:`~audiotool.tasks._batch.RunIdentity` of a task run: the options digest
    covers the model(s) and revision(s), seed, precision, audio format and the task's own
    ``options`` (device, threads and batch size do not change results by design)."""
    from audiotool.manifest import options_digest

    model = "+".join(m.model_id for m in models) or None
    revision = "+".join(model_revision(m.resolved) for m in models) or None
    digest = options_digest(
        {
            "task": task,
            "model": model,
            "revision": revision,
            "seed": runtime.seed,
            "precision": runtime.precision,
            "bit_depth": output.bit_depth,
            "clip": output.clip,
            "format": output.format,
            **options,
        }
    )
    return RunIdentity(options=digest, model=model, revision=revision)

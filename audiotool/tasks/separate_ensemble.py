"""`separate` with an ensemble of separators: the models resolved and loaded together, each
kept stem combined from the members' estimates (:func:`combine_stems`). The in-memory path runs
the members one by one (:func:`audiotool.tasks.separate.separate_tensor`), the streamed path
side by side (:mod:`audiotool.tasks.separate_stream`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from audiotool.errors import UsageError
from audiotool.tasks._separate_plan import model_stems
from audiotool.tasks.common import Runtime, TaskModel, resolve_task_model
from audiotool.tasks.separate_demucs import check_scheme_options

if TYPE_CHECKING:
    from torch import nn

    from audiotool.hub import LoadedModel
    from audiotool.tasks.separate import SeparateOptions

ENSEMBLE_METHODS = ("avg", "median", "max_spec", "min_spec")


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    """What :func:`~audiotool.tasks.separate.separate_tensor` needs to know of an ensemble of
    separators.

    Attributes:
        members: the loaded models.
        stems: the stems every member produces (in the first model's order) and that are kept.
        method: one of :data:`ENSEMBLE_METHODS`.
    """

    family: ClassVar[str] = "ensemble"
    task: ClassVar[str] = "separate"

    members: tuple[LoadedModel, ...]
    stems: tuple[str, ...]
    method: str

    @property
    def sample_rate(self) -> int:
        return int(self.members[0].config.sample_rate)


class EnsembleModule(torch.nn.Module):
    """The members' modules, held together (they run through
    :func:`~audiotool.tasks.separate.separate_tensor` one by one, each with its own scheme; calling
    this module directly is an error)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(models)

    def forward(self, mix: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError("separate an ensemble with separate_tensor(model, config, ...)")


def split_specs(specs: str | Sequence[str] | None) -> list[str]:
    """``--model`` values (repeatable, each possibly a comma list) -> specs."""
    if specs is None:
        return []
    items = [specs] if isinstance(specs, str) else list(specs)
    return [p.strip() for item in items for p in item.split(",") if p.strip()]


def resolve_separators(
    specs: str | Sequence[str] | None, *, revision: str | None, options: SeparateOptions
) -> tuple[list[TaskModel], tuple[str, ...]]:
    """Resolve one separator or several (an ensemble) and check the options against their
    configs, before any weights load; returns the models and the stems they all produce.

    Raises:
        UsageError: unknown ``--ensemble`` method, a ``--stems`` stem that some model does not
            produce (the error names the model), models with no stem in common, or an option a
            model's scheme cannot honour.
    """
    if options.ensemble not in ENSEMBLE_METHODS:
        raise UsageError(
            f"--ensemble must be one of {list(ENSEMBLE_METHODS)}, got '{options.ensemble}'"
        )
    names: list[str | None] = list(split_specs(specs)) or [None]
    members = [resolve_task_model(n, "separate", revision=revision) for n in names]
    for m in members:
        check_scheme_options(m.config, options)
    produced = [model_stems(m.config) for m in members]
    if len(members) > 1:
        for stem in options.stems or ():
            for name, have in zip(names, produced, strict=True):
                if stem not in have:
                    raise UsageError(
                        f"--stems {stem}: model '{name}' does not produce it",
                        hint=f"it produces {', '.join(have)}",
                    )
    common = tuple(s for s in produced[0] if all(s in p for p in produced[1:]))
    if not common:
        raise UsageError(f"the models {names} have no stem in common")
    return members, common


def load_separator(
    members: Sequence[TaskModel], stems: tuple[str, ...], *, runtime: Runtime, method: str
) -> tuple[nn.Module, Any]:
    """Load resolved separators: ``(module, config)`` for
    :func:`~audiotool.tasks.separate.separate_tensor` (one model, or an :class:`EnsembleModule` with
    an :class:`EnsembleConfig`)."""
    loaded = [m.load(runtime) for m in members]
    if len(loaded) == 1:
        return loaded[0].model, loaded[0].config
    config = EnsembleConfig(members=tuple(loaded), stems=stems, method=method)
    return EnsembleModule([m.model for m in loaded]), config


def combine_stems(estimates: Sequence[Tensor], method: str) -> Tensor:
    """Combine ``K`` estimates ``(C, T)`` of one stem into one ``(C, T)``.

    ``avg``: mean; ``median``: sample-wise median (mean of the two middle values for even K);
    ``max_spec`` / ``min_spec``: per STFT bin (2048-point Hann, hop 512) the complex value of
    the estimate with the largest / smallest magnitude, inverted with the iSTFT.
    """
    stack = torch.stack(list(estimates))
    if method == "avg":
        return stack.mean(0)
    if method == "median":
        ordered = stack.sort(0).values
        k = ordered.shape[0]
        return ordered[k // 2] if k % 2 else (ordered[k // 2 - 1] + ordered[k // 2]) / 2
    if method in ("max_spec", "min_spec"):
        k, c, t = stack.shape
        n_fft = 2048
        window = torch.hann_window(n_fft, device=stack.device)
        spec = torch.stft(
            stack.reshape(k * c, t), n_fft, 512, window=window, return_complex=True
        ).view(k, c, n_fft // 2 + 1, -1)
        mag = spec.abs()
        pick = (mag.argmax(0) if method == "max_spec" else mag.argmin(0))[None]
        chosen = torch.gather(spec, 0, pick)[0]
        return torch.istft(chosen, n_fft, 512, window=window, length=t)
    raise UsageError(f"--ensemble must be one of {list(ENSEMBLE_METHODS)}, got '{method}'")

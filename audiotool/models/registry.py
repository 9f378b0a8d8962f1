"""The fixed registry of architecture families.

``config.json`` names its family by a short string ("latent_diffusion", "bandsplit", ...). That
string only selects an entry of the table below, which is code: no class is ever imported from
a name found in a config or a downloaded file.

Each family module defines ``FAMILY: ModelFamily`` (its config dataclass, a builder and its
named presets). Modules are imported lazily so that ``audiotool models list`` stays fast and
torch-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from audiotool.errors import ConfigError
from audiotool.models._config import ModelConfig

if TYPE_CHECKING:
    from torch import nn

C = TypeVar("C", bound=ModelConfig)

TASKS = ("upsample", "separate", "embed", "reconstruct")


@dataclasses.dataclass(frozen=True)
class ModelFamily(Generic[C]):
    """One architecture family.

    Attributes:
        name: registry key, also written as ``family`` in ``config.json``.
        task: the job the family serves (one of :data:`TASKS`).
        config_cls: the family's frozen config dataclass.
        build: makes a freshly initialised ``nn.Module`` from a config.
        presets: named configs (``"tiny"``, ``"audiosr"``, ...).
    """

    name: str
    task: str
    config_cls: type[C]
    build: Callable[[C], nn.Module]
    presets: Mapping[str, Callable[[], C]] = dataclasses.field(default_factory=dict)

    def preset(self, name: str) -> C:
        """The config of a named preset."""
        if name not in self.presets:
            raise ConfigError(
                f"unknown preset '{name}' for family '{self.name}'",
                hint=f"must be one of {sorted(self.presets)}",
            )
        return self.presets[name]()


def _latent_diffusion() -> ModelFamily[Any]:
    from audiotool.models.latent_diffusion import FAMILY

    return FAMILY


def _bandsplit() -> ModelFamily[Any]:
    from audiotool.models.separation import FAMILY

    return FAMILY


def _hdemucs() -> ModelFamily[Any]:
    from audiotool.models.hdemucs import FAMILY

    return FAMILY


def _htdemucs() -> ModelFamily[Any]:
    from audiotool.models.htdemucs import FAMILY

    return FAMILY


def _roformer() -> ModelFamily[Any]:
    from audiotool.models.roformer import FAMILY

    return FAMILY


def _audio_branch() -> ModelFamily[Any]:
    from audiotool.models.audio_branch import FAMILY

    return FAMILY


def _codec() -> ModelFamily[Any]:
    from audiotool.models.codec import FAMILY

    return FAMILY


def _rae() -> ModelFamily[Any]:
    from audiotool.models.rae import FAMILY

    return FAMILY


_LOADERS: dict[str, Callable[[], ModelFamily[Any]]] = {
    "latent_diffusion": _latent_diffusion,
    "bandsplit": _bandsplit,
    "hdemucs": _hdemucs,
    "htdemucs": _htdemucs,
    "roformer": _roformer,
    "audio_branch": _audio_branch,
    "rae": _rae,
    "codec": _codec,
}

#: registered family names -> task (kept in sync with the modules; no torch needed to read)
FAMILY_TASKS: dict[str, str] = {
    "latent_diffusion": "upsample",
    "bandsplit": "separate",
    "hdemucs": "separate",
    "htdemucs": "separate",
    "roformer": "separate",
    "audio_branch": "embed",
    "rae": "reconstruct",
    "codec": "reconstruct",
}


def family_names() -> list[str]:
    """All registered family names."""
    return sorted(_LOADERS)


def get_family(name: str) -> ModelFamily[Any]:
    """The family registered under ``name``.

    Raises:
        ConfigError: for a name that is not in the registry.
    """
    loader = _LOADERS.get(name)
    if loader is None:
        raise ConfigError(
            f"unknown model family '{name}'",
            hint=f"this version of audiotool knows {family_names()}; upgrade audiotool or fix "
            "the 'family' field of config.json",
        )
    family = loader()
    if family.name != name:  # internal invariant of the table above
        raise AssertionError(f"family module for {name!r} declares {family.name!r}")
    return family


def config_from_dict(data: dict[str, Any], *, source: str = "config.json") -> ModelConfig:
    """Parse a ``config.json`` dict into its family's config dataclass."""
    if not isinstance(data, dict) or "family" not in data:
        raise ConfigError(f"{source}: no 'family' field", hint="is this an audiotool model folder?")
    family = get_family(str(data["family"]))
    return family.config_cls.from_dict(data, source=source)

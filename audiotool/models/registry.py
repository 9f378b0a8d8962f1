"""The fixed registry of architecture families.

``config.json`` names its family by a short string ("latent_diffusion", "bandsplit", ...). That
string only selects a line of :data:`_MODULES` below, which is code: no class is ever imported
from a name found in a config or a downloaded file.

A family is two things in two modules: its config dataclass (a
:class:`~audiotool.models._config.ModelConfig` subclass whose ``family`` / ``task`` class
attributes name it, in a module that does not import torch) and ``FAMILY``, its
:class:`~audiotool.models._config.ModelFamily` (builder and presets, in the module that
defines the model). Both are imported on first use, so reading a ``config.json`` stays fast and
torch-free. To register a family, add one line to :data:`_MODULES`.
"""

from __future__ import annotations

import importlib
from typing import Any

from audiotool.errors import ConfigError
from audiotool.models._config import ModelConfig, ModelFamily

_CONFIGS = "audiotool.models.configs"

#: family name -> (module holding its config class, torch-free; module defining ``FAMILY``)
_MODULES: dict[str, tuple[str, str]] = {
    "latent_diffusion": (_CONFIGS, "audiotool.models.latent_diffusion"),
    "bandsplit": (_CONFIGS, "audiotool.models.separation"),
    "hdemucs": (_CONFIGS, "audiotool.models.hdemucs"),
    "htdemucs": ("audiotool.models.htdemucs", "audiotool.models.htdemucs"),
    "roformer": ("audiotool.models.roformer", "audiotool.models.roformer"),
    "audio_branch": (_CONFIGS, "audiotool.models.audio_branch"),
    "rae": (_CONFIGS, "audiotool.models.rae"),
    "codec": (_CONFIGS, "audiotool.models.codec"),
}


def family_names() -> list[str]:
    """All registered family names."""
    return sorted(_MODULES)


def _modules(name: str) -> tuple[str, str]:
    modules = _MODULES.get(name)
    if modules is None:
        raise ConfigError(
            f"unknown model family '{name}'",
            hint=f"this version of audiotool knows {family_names()}; upgrade audiotool or fix "
            "the 'family' field of config.json",
        )
    return modules


def config_class(name: str) -> type[ModelConfig]:
    """The config dataclass of family ``name`` (imports only its config module).

    Raises:
        ConfigError: for a name that is not in the registry.
    """
    module = importlib.import_module(_modules(name)[0])
    found = [
        v
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, ModelConfig) and v.family == name
    ]
    if len(found) != 1:  # internal invariant of the table above
        raise AssertionError(f"{module.__name__} defines {len(found)} configs of family {name!r}")
    return found[0]


def get_family(name: str) -> ModelFamily[Any]:
    """The family registered under ``name`` (imports its model module, hence torch).

    Raises:
        ConfigError: for a name that is not in the registry.
    """
    family = importlib.import_module(_modules(name)[1]).FAMILY
    if not isinstance(family, ModelFamily) or family.name != name:  # invariant of the table
        raise AssertionError(f"the FAMILY of {name!r}'s module is {family!r}")
    return family


def config_from_dict(data: dict[str, Any], *, source: str = "config.json") -> ModelConfig:
    """Parse a ``config.json`` dict into its family's config dataclass (no torch imported)."""
    if not isinstance(data, dict) or "family" not in data:
        raise ConfigError(f"{source}: no 'family' field", hint="is this an audiotool model folder?")
    return config_class(str(data["family"])).from_dict(data, source=source)

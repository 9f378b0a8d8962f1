"""Base class for the per-family config dataclasses (what ``config.json`` holds).

A family's config is a frozen dataclass of plain JSON types (int, float, str, bool, tuples
and optional values of those). ``config.json`` is ``{"family": ..., "format_version": 1,
**config.to_dict()}``. Loading is strict: unknown keys and wrong types are errors that name
the key, so a typo in a hand-edited config never passes silently.

This module does not import torch (``audiotool models list`` reads configs without it).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

from audiotool.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

FORMAT_VERSION = 1
#: the jobs a family can serve (``ModelConfig.task``)
TASKS = ("upsample", "separate", "embed", "reconstruct")

C = TypeVar("C", bound="ModelConfig")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Common fields of every family config.

    Subclasses set the class variables ``family`` (registry name) and ``task`` (one of
    :data:`TASKS`) and add their own typed fields (all with defaults, so a preset is just
    keyword overrides).
    """

    family: ClassVar[str] = ""
    task: ClassVar[str] = ""

    sample_rate: int = 16000

    def to_dict(self) -> dict[str, Any]:
        """Fields as JSON-ready values (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            out[f.name] = _to_json(getattr(self, f.name))
        return out

    def to_json_dict(self) -> dict[str, Any]:
        """What ``config.json`` holds: family, task and format version plus the fields."""
        return {
            "family": self.family,
            "task": self.task,
            "format_version": FORMAT_VERSION,
            **self.to_dict(),
        }

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, source: str = "config") -> C:
        """Build a config from a dict, rejecting unknown keys and wrongly typed values.

        Args:
            data: the field values (``family`` / ``task`` / ``format_version`` are ignored).
            source: where the dict came from, for error messages.
        """
        data = {k: v for k, v in data.items() if k not in ("family", "task", "format_version")}
        hints = get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{source}: unknown parameter(s) {unknown} for family '{cls.family}'",
                hint=f"known parameters: {sorted(names)}",
            )
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            kwargs[name] = _coerce(value, hints[name], f"{source}: parameter '{name}'")
        try:
            return cls(**kwargs)
        except ConfigError as exc:  # a check of the class's __post_init__
            raise ConfigError(f"{source}: {exc.message}", hint=exc.hint) from exc
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {exc}") from exc

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class ModelFamily(Generic[C]):
    """One architecture family: its config class, a builder and its named presets.

    The family's name and task are its config class's (``config_cls.family`` / ``.task``).

    Attributes:
        config_cls: the family's frozen config dataclass.
        build: makes a freshly initialised ``nn.Module`` from a config.
        presets: named configs (``"tiny"``, ``"audiosr"``, ...).
    """

    config_cls: type[C]
    build: Callable[[C], nn.Module]
    presets: Mapping[str, Callable[[], C]] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        """Registry key, written as ``family`` in ``config.json``."""
        return self.config_cls.family

    @property
    def task(self) -> str:
        """The job the family serves (one of :data:`TASKS`)."""
        return self.config_cls.task

    def preset(self, name: str) -> C:
        """The config of a named preset."""
        if name not in self.presets:
            raise ConfigError(
                f"unknown preset '{name}' for family '{self.name}'",
                hint=f"must be one of {sorted(self.presets)}",
            )
        return self.presets[name]()


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    return value


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lists to tuples."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if origin is typing.Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{where}: must be one of {list(get_args(tp))}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{where}: unsupported annotation {tp}")

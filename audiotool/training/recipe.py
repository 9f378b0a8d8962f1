"""Training recipes: strict YAML -> frozen dataclasses.

    task: upsample
    model: {family: latent_diffusion, preset: tiny, overrides: {model_channels: 24}}
    data: {clip_seconds: 2.56, extra: {input_rates: [8000, 12000, 16000, 24000]}}
    train: {steps: 20000, batch_size: 8, lr: 2.0e-4, ...}

Unknown keys are errors naming the key and the file; the model config goes through the family
config's strict ``from_dict``.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from audiotool.errors import ConfigError
from audiotool.models._config import ModelConfig


@dataclasses.dataclass(frozen=True)
class ModelSection:
    family: str
    preset: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DataSection:
    train: str = "train"
    val: str = "val"
    clip_seconds: float = 4.0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TrainSection:
    steps: int = 1000
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 100
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_start: int = 0
    amp: Literal["none", "bf16", "fp16"] = "none"
    val_every: int = 200
    val_batches: int = 8
    ckpt_every: int = 200
    log_every: int = 20
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Recipe:
    task: str
    model: ModelSection
    data: DataSection = dataclasses.field(default_factory=DataSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    notes: str = ""  # design notes for the model card (e.g. why a light first stage)
    source: str = "<dict>"

    def model_config(self) -> ModelConfig:
        """The family preset with the overrides applied (type-checked)."""
        from audiotool.models.registry import get_family

        family = get_family(self.model.family)
        if family.task != self.task:
            raise ConfigError(
                f"{self.source}: family '{family.name}' serves '{family.task}', not '{self.task}'"
            )
        base = family.preset(self.model.preset).to_dict()
        base.update(self.model.overrides)
        return family.config_cls.from_dict(base, source=f"{self.source}: model")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


_HINTS: dict[type, dict[str, Any]] = {}
_INF = float("inf")
_RANGES: dict[type, dict[str, tuple[float, float]]] = {
    TrainSection: {
        "steps": (1, _INF),
        "batch_size": (1, _INF),
        "lr": (1e-12, _INF),
        "weight_decay": (0, _INF),
        "betas": (0, 1),
        "warmup_steps": (0, _INF),
        "grad_clip": (0, _INF),
        "ema_decay": (0, 1),
        "ema_start": (0, _INF),
        "val_every": (1, _INF),
        "val_batches": (1, _INF),
        "ckpt_every": (1, _INF),
        "log_every": (1, _INF),
    },
    DataSection: {"clip_seconds": (1e-3, _INF)},
}


def _section(cls: type, data: Any, where: str) -> Any:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}", hint=f"known: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        default = getattr(cls(), f.name) if f.name not in ("family", "preset") else None
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}.{f.name}: expected true/false, got {value!r}")
        if isinstance(default, int | float) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}.{f.name}: expected a number, got {value!r}")
            value = (
                type(default)(value)
                if isinstance(default, float) or float(value) == int(value)
                else value
            )
        if isinstance(default, int) and not isinstance(default, bool) and value != int(value):
            raise ConfigError(f"{where}.{f.name}: expected a whole number, got {value!r}")
        if isinstance(default, tuple):
            if not isinstance(value, list | tuple) or len(value) != len(default):
                raise ConfigError(
                    f"{where}.{f.name}: expected {len(default)} numbers, got {value!r}"
                )
            value = tuple(value)
        if isinstance(default, dict) and not isinstance(value, dict):
            raise ConfigError(f"{where}.{f.name}: expected a mapping, got {value!r}")
        choices = typing.get_args(_HINTS[cls][f.name])
        if typing.get_origin(_HINTS[cls][f.name]) is Literal and value not in choices:
            raise ConfigError(f"{where}.{f.name}: must be one of {set(choices)}, got {value!r}")
        kwargs[f.name] = value
    section = cls(**kwargs)
    for name, (low, high) in _RANGES.get(cls, {}).items():
        v = getattr(section, name)
        values = v if isinstance(v, tuple) else (v,)
        if not all(low <= x < high for x in values):
            raise ConfigError(f"{where}.{name}: must be in [{low}, {high}), got {v!r}")
    return section


def recipe_from_dict(data: dict[str, Any], *, source: str = "<dict>") -> Recipe:
    """Parse a recipe mapping strictly."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe must be a mapping")
    unknown = sorted(set(data) - {"task", "model", "data", "train", "notes"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown}",
            hint="top-level keys are task, model, data, train, notes",
        )
    notes = data.get("notes", "")
    if not isinstance(notes, str):
        raise ConfigError(f"{source}: notes must be text, got {notes!r}")
    model = data.get("model")
    if not isinstance(model, dict) or "family" not in model or "preset" not in model:
        raise ConfigError(f"{source}: model needs 'family' and 'preset'")
    extra = sorted(set(model) - {"family", "preset", "overrides"})
    if extra:
        raise ConfigError(f"{source}: model: unknown key(s) {extra}")
    overrides = model.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: model.overrides must be a mapping, got {overrides!r}")
    recipe = Recipe(
        task=str(data.get("task", "")),
        model=ModelSection(str(model["family"]), str(model["preset"]), dict(overrides)),
        data=_section(DataSection, data.get("data"), f"{source}: data"),
        train=_section(TrainSection, data.get("train"), f"{source}: train"),
        notes=notes.strip(),
        source=source,
    )
    recipe.model_config()  # validate now, with a clear message
    return recipe


def load_recipe(path: Path) -> Recipe:
    """Read a YAML recipe (``yaml.safe_load``)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the recipe ({exc})") from exc
    return recipe_from_dict(data, source=str(path))

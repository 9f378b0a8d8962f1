"""Model specs -> local files -> config + strictly loaded weights.

A model spec is one of (tried in this order):

1. a local folder holding ``config.json`` + ``model.safetensors`` (our format), or a file in
   such a folder (``model.safetensors`` or ``config.json``);
2. a name from the bundled model zoo (``audiotool models list``);
3. ``org/name[@revision]``: a Hugging Face Hub repository, resolved with
   :func:`huggingface_hub.snapshot_download` (its cache, ``HF_HOME`` / ``HF_HUB_CACHE``,
   ``HF_HUB_OFFLINE`` and ``local_files_only`` are honoured; nothing is cached by hand).

Pickle files (``.bin``, ``.ckpt``, ``.pt``, ``.th``, ...) are never loaded here; the importers
of public checkpoints (``audiotool models convert``) read them with ``weights_only=True``.

Only the functions that build or load a model import torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiotool import __version__
from audiotool.errors import (
    ConfigError,
    ModelLoadError,
    ModelNotFoundError,
    UsageError,
    WeightMismatchError,
)
from audiotool.models._config import ModelConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".th", ".pkl", ".pickle")
_HUB_RE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")


# --------------------------------------------------------------------------- the zoo


def zoo_dir() -> Path:
    """The bundled model zoo: ``$AUDIOTOOL_ZOO``, the wheel's copy, or the repo's ``models/``."""
    env = os.environ.get("AUDIOTOOL_ZOO")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    installed = here / "_zoo"
    if installed.is_dir():
        return installed
    return here.parent / "models"


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One model of the bundled zoo (read from its ``config.json`` without torch)."""

    name: str
    path: Path
    family: str
    task: str
    sample_rate: int
    size_bytes: int
    default: bool
    description: str


def _zoo_index() -> dict[str, Any]:
    index = zoo_dir() / "index.json"
    if not index.is_file():
        return {}
    try:
        data = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{index}: cannot read the zoo index: {exc}") from exc
    return data if isinstance(data, dict) else {}


def zoo_entries() -> list[ZooEntry]:
    """All models of the zoo, sorted by task then name."""
    root = zoo_dir()
    if not root.is_dir():
        return []
    index = _zoo_index()
    defaults: dict[str, str] = index.get("defaults", {})
    descriptions: dict[str, str] = index.get("descriptions", {})
    entries = []
    for folder in sorted(p for p in root.iterdir() if (p / CONFIG_NAME).is_file()):
        cfg = _read_config_json(folder / CONFIG_NAME)
        weights = folder / WEIGHTS_NAME
        entries.append(
            ZooEntry(
                name=folder.name,
                path=folder,
                family=str(cfg.get("family", "?")),
                task=str(cfg.get("task", "?")),
                sample_rate=int(cfg.get("sample_rate", 0)),
                size_bytes=weights.stat().st_size if weights.is_file() else 0,
                default=defaults.get(str(cfg.get("task"))) == folder.name,
                description=descriptions.get(folder.name, ""),
            )
        )
    return sorted(entries, key=lambda e: (e.task, e.name))


def default_model(task: str) -> str:
    """The zoo name of the default model for ``task``.

    Raises:
        ModelNotFoundError: when the zoo has no default for the task.
    """
    defaults: dict[str, str] = _zoo_index().get("defaults", {})
    name = defaults.get(task)
    if not name or not (zoo_dir() / name / CONFIG_NAME).is_file():
        raise ModelNotFoundError(
            f"no bundled default model for '{task}'",
            hint="pass --model with a local folder, an org/name Hub repo or a zoo name "
            "(audiotool models list)",
        )
    return name


# --------------------------------------------------------------------------- resolution


@dataclasses.dataclass(frozen=True)
class ResolvedSpec:
    """Where a spec's files are.

    Attributes:
        spec: the spec as given.
        folder: local folder with ``config.json`` and ``model.safetensors``.
        source: ``"local"``, ``"zoo"`` or ``"hub"``.
        revision: the Hub commit the files come from (hub only).
    """

    spec: str
    folder: Path
    source: str
    revision: str | None = None

    @property
    def model_id(self) -> str:
        """A stable id for outputs: ``zoo:name``, ``org/name@sha`` or the folder path."""
        if self.source == "zoo":
            return f"zoo:{self.folder.name}"
        if self.source == "hub":
            repo = _HUB_RE.match(self.spec)
            base = repo.group("repo") if repo else self.spec
            return f"{base}@{self.revision}" if self.revision else base
        return str(self.folder)


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~"))
        or spec.count("/") > 1
        or "\\" in spec
        or spec.endswith((".json", ".safetensors", *PICKLE_SUFFIXES))
    )


def resolve(
    spec: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
) -> ResolvedSpec:
    """Find the files of a model spec (see the module docstring for the grammar).

    Args:
        spec: local path, zoo name or ``org/name[@revision]``.
        revision: Hub branch, tag or commit (conflicts with an ``@rev`` in the spec).
        cache_dir: Hub cache folder (default: ``HF_HUB_CACHE`` / ``HF_HOME``).
        local_files_only: never touch the network (default: huggingface_hub decides, from
            ``HF_HUB_OFFLINE``).

    Raises:
        ModelNotFoundError: nothing matches, the repo or revision does not exist, or the
            files are not cached while offline.
        ModelLoadError: the spec is a pickle file.
    """
    spec = spec.strip()
    if not spec:
        raise UsageError("empty model spec", hint="see `audiotool models list`")
    path = Path(spec).expanduser()
    if path.exists():
        return ResolvedSpec(spec=spec, folder=_local_folder(path, spec), source="local")
    if _looks_like_path(spec):
        raise ModelNotFoundError(
            f"model '{spec}': no such file or folder",
            hint="check the path, or give a zoo name (audiotool models list) or an org/name "
            "Hub repo",
        )
    zoo = zoo_dir() / spec
    if "/" not in spec and "@" not in spec:
        if (zoo / CONFIG_NAME).is_file():
            if revision:
                raise UsageError(f"--revision does not apply to the zoo model '{spec}'")
            return ResolvedSpec(spec=spec, folder=_check_folder(zoo, spec), source="zoo")
        names = [e.name for e in zoo_entries()]
        close = difflib.get_close_matches(spec, names, n=3)
        hint = f"did you mean {close}?" if close else f"zoo models: {names or 'none'}"
        raise ModelNotFoundError(
            f"model '{spec}' is not a local path, a zoo name or an org/name Hub repo",
            hint=hint,
        )
    match = _HUB_RE.match(spec)
    if not match:
        raise ModelNotFoundError(
            f"model '{spec}' is not a valid spec",
            hint="use a local folder, a zoo name, or org/name[@revision]",
        )
    repo_id, spec_rev = match.group("repo"), match.group("rev")
    if spec_rev and revision and spec_rev != revision:
        raise UsageError(
            f"model '{spec}' pins revision '{spec_rev}' but --revision is '{revision}'",
            hint="give the revision once",
        )
    return _resolve_hub(
        spec,
        repo_id,
        revision=spec_rev or revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
    )


def _local_folder(path: Path, spec: str) -> Path:
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise ModelLoadError(
                f"model '{spec}' is a pickle checkpoint, which audiotool never loads implicitly",
                hint="convert it once with `audiotool models convert FAMILY FILE -o DIR` "
                "(reads it with weights_only=True) and pass DIR",
            )
        if path.name not in (CONFIG_NAME, WEIGHTS_NAME):
            raise ModelNotFoundError(
                f"model '{spec}' is a file, not a model folder",
                hint=f"pass the folder holding {CONFIG_NAME} and {WEIGHTS_NAME}",
            )
        path = path.parent
    return _check_folder(path, spec)


def _check_folder(folder: Path, spec: str) -> Path:
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / n).is_file()]
    if missing:
        pickles = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES)
        hint = (
            f"found pickle file(s) {pickles}: convert them with `audiotool models convert`"
            if pickles
            else f"an audiotool model folder holds {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
        raise ModelNotFoundError(f"model '{spec}': {folder} has no {', '.join(missing)}", hint=hint)
    return folder


def _resolve_hub(
    spec: str,
    repo_id: str,
    *,
    revision: str | None,
    cache_dir: str | Path | None,
    local_files_only: bool | None,
) -> ResolvedSpec:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # huggingface_hub owns the cache location (HF_HUB_CACHE / HF_HOME) and offline mode
    # (HF_HUB_OFFLINE); both are only read here for the error message
    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    offline = bool(local_files_only) or constants.HF_HUB_OFFLINE
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=bool(local_files_only),
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
            library_name="audiotool",
            library_version=__version__,
        )
    except RevisionNotFoundError as exc:
        raise ModelNotFoundError(
            f"model '{spec}': revision '{revision}' does not exist",
            hint="check the branch, tag or commit on the repo's page",
        ) from exc
    except GatedRepoError as exc:
        raise ModelNotFoundError(
            f"model '{spec}' is gated", hint="accept its terms on the Hub and run `hf auth login`"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelNotFoundError(
            f"model '{spec}': no such Hub repository (or it is private)",
            hint="check the spelling; for a private repo run `hf auth login`",
        ) from exc
    except LocalEntryNotFoundError as exc:
        why = "offline mode is on" if offline else "the Hub cannot be reached"
        raise ModelNotFoundError(
            f"model '{spec}' is not in the cache {cache} and {why}",
            hint="run `audiotool models download "
            f"{spec}` on a machine with internet and copy the cache, or set HF_HOME to a "
            "cache that has it",
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise ModelNotFoundError(
            f"model '{spec}': download failed: {exc}",
            hint="retry, or use a local folder / HF_HUB_OFFLINE=1 with a filled cache",
        ) from exc
    folder_path = Path(folder)
    return ResolvedSpec(
        spec=spec,
        folder=_check_folder(folder_path, spec),
        source="hub",
        revision=folder_path.name,
    )


# --------------------------------------------------------------------------- config + weights


def _read_config_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable JSON config ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a JSON object")
    return data


def read_config(folder: Path) -> ModelConfig:
    """Parse ``folder/config.json`` into its family's config dataclass."""
    from audiotool.models.registry import config_from_dict

    path = folder / CONFIG_NAME
    return config_from_dict(_read_config_json(path), source=str(path))


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes), read without torch.

    Raises:
        ModelLoadError: if the file is not a valid safetensors file.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise ValueError("file shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            size = path.stat().st_size
            if n > size - 8 or n > 100_000_000:
                raise ValueError("header length exceeds the file")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
        if 8 + n + end > size:
            raise ValueError(f"truncated: data needs {8 + n + end} bytes, file has {size}")
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"{path}: corrupt or truncated safetensors file ({exc})",
            hint="re-download it (audiotool models download SPEC) or re-export the model",
        ) from exc
    return header


def count_parameters(path: Path) -> int:
    """Number of tensor elements stored in a safetensors file (no torch needed)."""
    total = 0
    for name, info in safetensors_header(path).items():
        if name == "__metadata__":
            continue
        n = 1
        for d in info["shape"]:
            n *= int(d)
        total += n
    return total


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised model of the config's family (fixed registry, no dynamic import).

    Raises:
        ConfigError: the config names an unknown family or describes a model that cannot be
            built (inconsistent sizes: the family's own checks, or torch's layers refusing
            their arguments).
    """
    from audiotool.models.registry import get_family

    family = get_family(config.family)
    try:
        return family.build(config)
    except (ValueError, AssertionError) as exc:  # torch layers check their arguments so
        raise ConfigError(
            f"a '{family.name}' model cannot be built from this config: {exc}",
            hint="fix the config's sizes (config.json or the recipe's overrides)",
        ) from exc


def load_weights(model: nn.Module, path: Path, *, device: str | torch.device = "cpu") -> None:
    """Load a safetensors file into ``model`` strictly.

    Raises:
        ModelLoadError: the file is corrupt.
        WeightMismatchError: keys are missing or unexpected, or shapes differ (all listed).
    """
    from safetensors.torch import load_file

    safetensors_header(path)  # clear error for truncated / non-safetensors files
    try:
        state = load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types
        raise ModelLoadError(
            f"{path}: cannot read weights ({exc})",
            hint="re-download it (audiotool models download SPEC) or re-export the model",
        ) from exc
    load_state_strict(model, state, source=str(path))


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` into ``model`` strictly, after :func:`check_state_dict` has listed every
    problem in one error (``source`` names where the weights came from)."""
    check_state_dict(model, state, source=source)
    model.load_state_dict(state, strict=True)


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Raise :class:`WeightMismatchError` listing every missing, unexpected or reshaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:8]) + (
                    f", ... ({len(keys)} in all)" if len(keys) > 8 else ""
                )
                parts.append(f"{label}: {shown}")
        raise WeightMismatchError(
            f"{source}: weights do not match the model built from config.json; " + "; ".join(parts),
            missing=missing,
            unexpected=unexpected,
            mismatched=mismatched,
            hint="the checkpoint and config.json come from different models; re-export both",
        )


@dataclasses.dataclass
class LoadedModel:
    """A model ready for inference, with where it came from."""

    model: nn.Module
    config: ModelConfig
    resolved: ResolvedSpec

    @property
    def model_id(self) -> str:
        return self.resolved.model_id


def load_model(
    spec: str | None,
    *,
    task: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Resolve ``spec``, build its family's model and load its weights strictly.

    Args:
        spec: model spec, or None for the zoo's default model of ``task``.
        task: when given, the model must serve this task.
        revision, cache_dir, local_files_only: see :func:`resolve`.
        device: where the weights go.

    Returns:
        The model in eval mode on ``device``, its config and its resolved spec.
    """
    if spec is None:
        if task is None:
            raise UsageError("a model spec or a task is needed")
        spec = default_model(task)
    resolved = resolve(
        spec, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
    )
    config = read_config(resolved.folder)
    if task is not None and config.task != task:
        raise UsageError(
            f"model '{spec}' is a '{config.task}' model ({config.family}), not a '{task}' model",
            hint=f"pick a {task} model (audiotool models list)",
        )
    model = build_model(config)
    load_weights(model, resolved.folder / WEIGHTS_NAME, device="cpu")
    model.to(device)
    model.eval()
    log.info("loaded %s (%s) from %s", spec, config.family, resolved.folder)
    return LoadedModel(model=model, config=config, resolved=resolved)


def save_pretrained(
    model: nn.Module,
    config: ModelConfig,
    folder: str | Path,
    *,
    card: str | None = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and (optionally) a ``README.md`` card.

    Each file is written to a temporary name in ``folder`` and renamed into place.
    """
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = out / f".{WEIGHTS_NAME}.tmp"
    save_file(state, str(tmp), metadata={"format": "pt", "family": config.family})
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, out / WEIGHTS_NAME)
    _write_text_atomic(out / CONFIG_NAME, json.dumps(config.to_json_dict(), indent=2) + "\n")
    if card is not None:
        _write_text_atomic(out / CARD_NAME, card)
    return out


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)

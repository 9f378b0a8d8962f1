"""Model specs -> local files -> config + strictly loaded weights.

A model spec is one of (tried in this order):

1. a local folder holding ``config.json`` + ``model.safetensors`` (our format), or a file in
   such a folder (``model.safetensors`` or ``config.json``);
2. a name from the bundled model zoo (``audiotool models list``);
3. ``org/name[@revision][:FILE]``: a Hugging Face Hub repository, resolved with
   :func:`huggingface_hub.snapshot_download` (its cache, ``HF_HOME`` / ``HF_HUB_CACHE``,
   ``HF_HUB_OFFLINE`` and ``local_files_only`` are honoured);
4. a short name a foreign layout publishes under (``htdemucs_ft`` -> ``adefossez/HTDemucs-ft``,
   see :func:`audiotool.importers.layouts.resolve_alias`); zoo names keep priority.

A repo or folder without our ``config.json`` is recognised by a foreign layout
(:mod:`audiotool.importers.layouts`: demucs, ...) from its file names and converted once; the
result (our format) is cached under ``$AUDIOTOOL_CACHE/converted`` (default
``~/.cache/audiotool``), keyed by repo, revision, ``FILE``, layout version and the hashes of
the files read, so later runs load it directly, offline. ``:FILE`` picks one checkpoint of a
repo (or folder) holding several.

Pickle files (``.bin``, ``.ckpt``, ``.pt``, ``.th``, ...) are never loaded here; the importers
of public checkpoints read them with ``weights_only=True`` or a restricted unpickler.

Only the functions that build or load a model import torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiotool import __version__
from audiotool.checkpoints import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    build_model,
    load_weights,
    save_pretrained,
)
from audiotool.errors import (
    ConfigError,
    ModelLoadError,
    ModelNotFoundError,
    UnknownModelError,
    UsageError,
)
from audiotool.models._config import ModelConfig
from audiotool.paths import write_text_atomically

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".th", ".pkl", ".pickle")
_HUB_RE = re.compile(
    r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?(?::(?P<file>[^:]+))?$"
)


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
        origin: for a converted foreign checkpoint, the folder (snapshot) it came from.
        layout: for a converted foreign checkpoint, the layout's name (``"demucs"``).
    """

    spec: str
    folder: Path
    source: str
    revision: str | None = None
    origin: Path | None = None
    layout: str | None = None

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
    if ":" in spec and _HUB_RE.match(spec):  # org/name[@rev]:FILE picks a file of a Hub repo
        return False
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
        return _resolve_local(path, spec, file=None)
    if ":" in spec:
        head, _, tail = spec.rpartition(":")
        if head and Path(head).expanduser().is_dir():
            return _resolve_local(Path(head).expanduser(), spec, file=tail)
    if _looks_like_path(spec):
        raise UnknownModelError(
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
        from audiotool.importers.layouts import resolve_alias

        hit = resolve_alias(spec)
        if hit is not None:
            return _resolve_hub(
                spec,
                hit[0],
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=_offline() if local_files_only is None else local_files_only,
                file=hit[1],
            )
        names = [e.name for e in zoo_entries()]
        close = difflib.get_close_matches(spec, names, n=3)
        hint = f"did you mean {close}?" if close else f"zoo models: {names or 'none'}"
        raise UnknownModelError(
            f"model '{spec}' is not a local path, a zoo name or an org/name Hub repo",
            hint=hint,
        )
    match = _HUB_RE.match(spec)
    if not match:
        raise UnknownModelError(
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
        local_files_only=_offline() if local_files_only is None else local_files_only,
        file=match.group("file"),
    )


def _offline() -> bool:
    """huggingface_hub's own offline switch (``HF_HUB_OFFLINE``, read by it at import)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_cache(cache_dir: str | Path | None) -> Path:
    """The Hub cache huggingface_hub uses (``HF_HUB_CACHE`` / ``HF_HOME``) unless given."""
    from huggingface_hub import constants

    return Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)


def _resolve_local(path: Path, spec: str, *, file: str | None) -> ResolvedSpec:
    """A local folder or file: ours, or a foreign layout converted once (``file`` picks one
    checkpoint of the folder; a foreign checkpoint file given directly is picked the same way)."""
    folder = path.parent if path.is_file() else path
    if path.is_file() and path.name not in (CONFIG_NAME, WEIGHTS_NAME):
        file = path.name
    ours = (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()
    if not ours or file is not None:
        from audiotool.importers.layouts import find_layout

        files = _list_files(folder)
        if file is not None and file not in files and f"{file}.yaml" not in files:
            raise ModelNotFoundError(f"model '{spec}': {folder} has no file '{file}'")
        layout = find_layout(folder, files)
        if layout is not None:
            needed = layout.needed(files, file)
            ids = {n: _local_file_id(folder / n) for n in needed}
            key = {"folder": str(folder.resolve()), "files": ids}
            converted = _converted(folder, layout, file, key, label=folder.name, spec=spec)
            return ResolvedSpec(
                spec=spec, folder=converted, source="local", origin=folder, layout=layout.name
            )
    return ResolvedSpec(spec=spec, folder=_local_folder(path, spec), source="local")


def _list_files(folder: Path) -> list[str]:
    """Relative POSIX paths of the files under ``folder`` (hidden ones and ``.cache`` left out)."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.append(rel.as_posix())
    return out


def _local_file_id(path: Path) -> str:
    """Identity of a local file for the conversion cache: HF blob name or size + mtime."""
    if not path.is_file():
        return "missing"
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs":
        return real.name
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def converted_cache_dir() -> Path:
    """Where converted foreign checkpoints live: ``$AUDIOTOOL_CACHE/converted`` (default
    ``~/.cache/audiotool/converted``; ``XDG_CACHE_HOME`` honoured)."""
    root = os.environ.get("AUDIOTOOL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "audiotool"
    )
    return Path(root).expanduser() / "converted"


def _converted(
    folder: Path,
    layout: Any,
    file: str | None,
    key: dict[str, Any],
    *,
    label: str,
    spec: str,
) -> Path:
    """The cached conversion of ``folder`` by ``layout``, made now if absent (atomically)."""
    import shutil
    import tempfile

    full = {"layout": layout.name, "version": layout.version, **key}
    digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:20]
    safe = re.sub(r"[^\w.-]+", "--", label).strip("-") or "model"
    out = converted_cache_dir() / safe / digest
    if (out / CONFIG_NAME).is_file() and (out / WEIGHTS_NAME).is_file():
        log.info("%s: using the converted copy in %s", spec, out)
        return out
    log.info("%s: converting the %s checkpoint once into %s", spec, layout.name, out)
    imported = layout.convert(folder, file=file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=out.parent))
    try:
        save_pretrained(imported.model, imported.config, tmp, card=imported.card)
        write_text_atomically(tmp / "source.json", json.dumps({"spec": spec, **full}, indent=2))
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished first
            if not (out / CONFIG_NAME).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


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
    local_files_only: bool,
    file: str | None = None,
) -> ResolvedSpec:
    cache = _hub_cache(cache_dir)
    folder = _snapshot(
        spec,
        repo_id,
        revision=revision,
        cache=cache,
        local_files_only=local_files_only,
        patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
    )
    commit = folder.name
    if file is None and (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file():
        return ResolvedSpec(spec=spec, folder=folder, source="hub", revision=commit)
    from audiotool.importers.layouts import find_layout

    files = _list_files(folder) if local_files_only else _repo_files(spec, repo_id, commit)
    if file is not None and file not in files and not local_files_only:
        raise ModelNotFoundError(
            f"model '{spec}': the repo has no file '{file}'",
            hint=f"it holds {', '.join(files[:12])}",
        )
    layout = find_layout(folder, files)
    if layout is None:
        return ResolvedSpec(
            spec=spec, folder=_check_folder(folder, spec), source="hub", revision=commit
        )
    needed = layout.needed(files, file)
    if not local_files_only:
        folder = _snapshot(
            spec,
            repo_id,
            revision=commit,
            cache=cache,
            local_files_only=False,
            patterns=needed,
        )
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        raise ModelNotFoundError(
            f"model '{spec}': {', '.join(missing)} not in the cache {cache} and offline mode is on",
            hint=f"run `audiotool models download {spec}` on a machine with internet",
        )
    key = {
        "repo": repo_id,
        "revision": commit,
        "files": {n: _local_file_id(folder / n) for n in needed},
    }
    converted = _converted(folder, layout, file, key, label=repo_id, spec=spec)
    return ResolvedSpec(
        spec=spec,
        folder=converted,
        source="hub",
        revision=commit,
        origin=folder,
        layout=layout.name,
    )


def _repo_files(spec: str, repo_id: str, revision: str) -> list[str]:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return sorted(
            HfApi(library_name="audiotool", library_version=__version__).list_repo_files(
                repo_id, revision=revision
            )
        )
    except (HfHubHTTPError, OSError) as exc:
        raise ModelNotFoundError(
            f"model '{spec}': cannot list the repo's files: {exc}",
            hint="retry, or use HF_HUB_OFFLINE=1 with a filled cache",
        ) from exc


def _snapshot(
    spec: str,
    repo_id: str,
    *,
    revision: str | None,
    cache: Path,
    local_files_only: bool,
    patterns: list[str],
) -> Path:
    """:func:`huggingface_hub.snapshot_download` of ``patterns``, errors mapped to ours."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=str(cache),
            local_files_only=local_files_only,
            allow_patterns=patterns,
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
        why = "offline mode is on" if local_files_only else "the Hub cannot be reached"
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
    return Path(folder)


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


@dataclasses.dataclass
class LoadedModel:
    """A model ready for inference, with where it came from."""

    model: nn.Module
    config: ModelConfig
    resolved: ResolvedSpec

    @property
    def model_id(self) -> str:
        return self.resolved.model_id


def resolve_model(
    spec: str | None,
    *,
    task: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
) -> tuple[ResolvedSpec, ModelConfig]:
    """Resolve ``spec`` and read its config, without building the model (cheap: a command can
    validate its options and plan its outputs before loading weights). See :func:`load_model`.
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
    return resolved, config


def load_resolved(
    resolved: ResolvedSpec, config: ModelConfig, *, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Build the model of a resolved spec and load its weights strictly (eval mode)."""
    model = build_model(config)
    load_weights(model, resolved.folder / WEIGHTS_NAME, device="cpu")
    model.to(device)
    model.eval()
    log.info("loaded %s (%s) from %s", resolved.spec, config.family, resolved.folder)
    return LoadedModel(model=model, config=config, resolved=resolved)


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
    resolved, config = resolve_model(
        spec,
        task=task,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
    )
    return load_resolved(resolved, config, device=device)

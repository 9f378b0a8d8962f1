"""Import demucs' published checkpoints (Hugging Face layout, and legacy ``.th`` files).

Hub layout (one repo per named model, e.g. ``adefossez/HTDemucs-ft``): ``NAME.yaml`` is the
bag (``models``: signatures, optional ``weights``: per-member per-stem weights, optional
``segment``); each ``SIG.safetensors`` holds one model's plain state dict, with metadata
``klass`` (``"demucs.htdemucs.HTDemucs"``), ``args`` and ``kwargs`` (JSON; a fraction is
``{"_type": "fraction", "numerator": n, "denominator": d}``). A ``structure`` entry marks a
diffq-quantized model.

``klass`` only selects a row of :data:`SUPPORTED` (no import from a name found in a file).
Legacy ``.th`` files (a pickle of ``{klass, args, kwargs, state}``) are read with a restricted
unpickler: class references are recorded as names, only tensors and plain data are admitted.
Everything refused raises :class:`UnsupportedCheckpointError` (one line, exit code 2).
"""

from __future__ import annotations

import json
import pickle
from collections import OrderedDict
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from audiotool.errors import ConfigError, UnsupportedCheckpointError, WeightMismatchError
from audiotool.importers.layouts import ImportedModel, Layout

NAMESPACE = "adefossez"

#: names demucs publishes on the Hub (``demucs/remote/*.yaml`` of demucs 4.1.0)
DEMUCS_NAMES = (
    "htdemucs",
    "htdemucs_ft",
    "htdemucs_6s",
    "hdemucs_mmi",
    "mdx",
    "mdx_extra",
    "mdx_q",
    "mdx_extra_q",
    "repro_mdx_a",
    "repro_mdx_a_hybrid_only",
    "repro_mdx_a_time_only",
)

#: demucs class name -> audiotool family
SUPPORTED = {"demucs.htdemucs.HTDemucs": "htdemucs"}
SUPPORTED_MODELS = "htdemucs, htdemucs_ft, htdemucs_6s"

# HTDemucs constructor arguments: kept in the config (demucs name -> config field) ...
_FIELDS = {
    "sources": "stems",
    "samplerate": "sample_rate",
    **{
        name: name
        for name in (
            "audio_channels channels channels_time growth nfft depth rewrite freq_emb emb_scale "
            "kernel_size time_stride stride context context_enc norm_starts norm_groups "
            "dconv_mode dconv_depth dconv_comp bottom_channels t_layers t_hidden_scale t_heads "
            "t_norm_in t_norm_first t_norm_out t_max_period t_layer_scale t_gelu "
            "t_weight_pos_embed t_cross_first"
        ).split()
    },
}
# ... required to have these values (other values change inference in ways not implemented)
_REQUIRED: dict[str, Any] = {
    "cac": True,
    "wiener_iters": 0,
    "multi_freqs": None,
    "t_emb": "sin",
    "t_sparse_self_attn": False,
    "t_sparse_cross_attn": False,
    "t_auto_sparsity": False,
    "t_sin_random_shift": 0,
    "t_norm_in_group": False,
    "t_group_norm": False,
    "use_train_segment": True,
}
# ... or only used in training
_TRAINING = set(
    (
        "end_iters wiener_residual multi_freqs_depth emb_smooth dconv_init t_dropout "
        "t_max_positions t_weight_decay t_lr t_cape_mean_normalize t_cape_augment "
        "t_cape_glob_loc_scale t_mask_type t_mask_random_seed t_sparse_attn_window "
        "t_global_window t_sparsity rescale segment"
    ).split()
)
#: HTDemucs' leading positional parameters, in order
_POSITIONAL = (
    "sources audio_channels channels channels_time growth nfft wiener_iters end_iters "
    "wiener_residual cac depth"
).split()


# --------------------------------------------------------------------------- names


def hf_repo_name(name: str) -> str:
    """demucs name -> Hub repo name: ``htdemucs`` -> ``HTDemucs``, ``htdemucs_X`` ->
    ``HTDemucs-X``, other ``N`` -> ``Demucs-N``."""
    if name == "htdemucs":
        return "HTDemucs"
    if name.startswith("htdemucs_"):
        return "HTDemucs-" + name[len("htdemucs_") :]
    return "Demucs-" + name


def alias(name: str) -> tuple[str, str | None] | None:
    """``htdemucs_ft`` -> ``("adefossez/HTDemucs-ft", "htdemucs_ft.yaml")``, for published
    names only."""
    if name not in DEMUCS_NAMES:
        return None
    return f"{NAMESPACE}/{hf_repo_name(name)}", f"{name}.yaml"


# --------------------------------------------------------------------------- layout


def detect(folder: Path, files: Sequence[str]) -> bool:
    """A bag YAML next to safetensors files, or a legacy ``.th`` file."""
    top = [f for f in files if "/" not in f]
    has_yaml = any(f.endswith((".yaml", ".yml")) for f in top)
    has_st = any(f.endswith(".safetensors") for f in top)
    return (has_yaml and has_st) or any(f.endswith(".th") for f in top)


def needed(files: Sequence[str], file: str | None) -> list[str]:
    """The chosen ``.th`` file, or the bag YAML(s) and every top-level safetensors file."""
    if file is not None and file.endswith(".th"):
        return [file]
    yamls = [_yaml_name(file)] if file else [f for f in files if f.endswith((".yaml", ".yml"))]
    return yamls + [f for f in files if "/" not in f and f.endswith(".safetensors")]


def _yaml_name(file: str) -> str:
    return file if file.endswith((".yaml", ".yml")) else f"{file}.yaml"


def convert(folder: Path, *, file: str | None = None) -> ImportedModel:
    """Convert the bag ``file`` (``NAME.yaml`` or ``NAME``; default: the only YAML in
    ``folder``) or the legacy checkpoint ``file`` (``.th``)."""
    if file is not None and file.endswith(".th"):
        return convert_th(folder / file)
    if file is None:
        yamls = sorted(p.name for p in folder.glob("*.y*ml"))
        if len(yamls) != 1:
            raise UnsupportedCheckpointError(
                f"{folder}: {'no' if not yamls else 'several'} demucs bag YAML files "
                f"({', '.join(yamls)})",
                hint="pick one with ORG/NAME:FILE.yaml",
            )
        file = yamls[0]
    return convert_bag(folder / _yaml_name(file))


LAYOUT = Layout(
    name="demucs",
    detect=detect,
    needed=needed,
    convert=convert,
    alias=alias,
    version=1,
)


# --------------------------------------------------------------------------- reading


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get("_type") == "fraction":
            return Fraction(int(value["numerator"]), int(value["denominator"]))
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def read_safetensors(path: Path) -> tuple[str, list[Any], dict[str, Any], dict[str, Any]]:
    """``(klass, args, kwargs, state)`` of one demucs safetensors file."""
    from safetensors import safe_open

    from audiotool.hub import safetensors_header

    if not path.is_file():
        raise UnsupportedCheckpointError(f"{path}: missing (listed in the bag YAML)")
    meta = safetensors_header(path).get("__metadata__") or {}
    if "structure" in meta:
        raise UnsupportedCheckpointError(
            f"{path.name}: quantized (diffq) demucs models are not supported",
            hint=f"use one of {SUPPORTED_MODELS}",
        )
    if "klass" not in meta:
        raise UnsupportedCheckpointError(f"{path.name}: no 'klass' metadata, not a demucs model")
    try:
        args = _decode(json.loads(meta.get("args", "[]")))
        kwargs = _decode(json.loads(meta.get("kwargs", "{}")))
    except json.JSONDecodeError as exc:
        raise UnsupportedCheckpointError(f"{path.name}: bad args/kwargs metadata ({exc})") from exc
    with safe_open(str(path), framework="pt") as fh:
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    return str(meta["klass"]), list(args), dict(kwargs), state


def _model_config(klass: str, args: list[Any], kwargs: dict[str, Any], where: str) -> Any:
    """The :class:`HTDemucsConfig` for a demucs ``klass(*args, **kwargs)``."""
    from audiotool.models.htdemucs import HTDemucsConfig

    if klass not in SUPPORTED:
        raise UnsupportedCheckpointError(
            f"{where}: demucs class '{klass}' is not supported",
            hint=f"audiotool reads {', '.join(SUPPORTED)} ({SUPPORTED_MODELS})",
        )
    if len(args) > len(_POSITIONAL):
        raise UnsupportedCheckpointError(f"{where}: {len(args)} positional arguments")
    params = dict(zip(_POSITIONAL, args, strict=False))
    twice = sorted(set(params) & set(kwargs))
    if twice:
        raise UnsupportedCheckpointError(f"{where}: arguments given twice: {twice}")
    params.update(kwargs)
    data: dict[str, Any] = {}
    for name, value in params.items():
        if name in _FIELDS:
            data[_FIELDS[name]] = list(value) if name == "sources" else value
        elif name in _REQUIRED:
            want = _REQUIRED[name]
            if (bool(value) if want is None else value) != (False if want is None else want):
                raise UnsupportedCheckpointError(
                    f"{where}: {name}={value!r} is not supported (needs {want!r})"
                )
        elif name not in _TRAINING:
            raise UnsupportedCheckpointError(f"{where}: unknown HTDemucs argument '{name}'")
    if "stems" not in data:
        raise UnsupportedCheckpointError(f"{where}: no 'sources' argument")
    rate = int(data.get("sample_rate", 44100))
    segment = params.get("segment", 10)
    data["segment_samples"] = int(Fraction(segment) * rate)
    try:
        return HTDemucsConfig.from_dict(data, source=where)
    except ConfigError as exc:
        raise UnsupportedCheckpointError(exc.message) from exc


def _load(model: Any, state: dict[str, Any], where: str) -> None:
    from audiotool.hub import load_state_strict

    try:
        load_state_strict(model, state, source=where)
    except WeightMismatchError as exc:
        raise UnsupportedCheckpointError(exc.message) from exc


def convert_bag(path: Path) -> ImportedModel:
    """Convert a demucs bag (``NAME.yaml`` and its ``SIG.safetensors`` siblings)."""
    import dataclasses

    import yaml

    from audiotool.models.htdemucs import build_model

    if not path.is_file():
        raise UnsupportedCheckpointError(f"{path}: no such demucs bag YAML")
    try:
        bag = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UnsupportedCheckpointError(f"{path.name}: unreadable bag YAML ({exc})") from exc
    sigs = bag.get("models") if isinstance(bag, dict) else None
    if not isinstance(sigs, list) or not sigs or not all(isinstance(s, str) for s in sigs):
        raise UnsupportedCheckpointError(f"{path.name}: 'models' must be a list of signatures")
    members = []
    for sig in sigs:
        klass, args, kwargs, state = read_safetensors(path.parent / f"{sig}.safetensors")
        members.append((_model_config(klass, args, kwargs, f"{sig}.safetensors"), state))
    cfg = members[0][0]
    if any(m[0] != cfg for m in members[1:]):
        raise UnsupportedCheckpointError(
            f"{path.name}: the bag mixes architectures; audiotool bags share one"
        )
    n_stems = len(cfg.stems)
    weights = bag.get("weights")
    if weights is None:
        weights = [[1.0] * n_stems for _ in sigs]
    if len(weights) != len(sigs) or any(len(w) != n_stems for w in weights):
        raise UnsupportedCheckpointError(
            f"{path.name}: 'weights' needs {len(sigs)} rows of {n_stems} numbers"
        )
    segment = bag.get("segment")
    if segment is not None:  # demucs: a bag segment only ever shortens an HT model's
        seg = int(cfg.sample_rate * segment)
        if seg <= cfg.segment_samples:
            cfg = dataclasses.replace(cfg, segment_samples=seg)
    if len(sigs) > 1:
        try:
            cfg = dataclasses.replace(
                cfg, bag_weights=tuple(tuple(float(x) for x in w) for w in weights)
            )
        except ValueError as exc:
            raise UnsupportedCheckpointError(f"{path.name}: {exc}") from exc
        state = {f"models.{k}.{n}": t for k, (_, st) in enumerate(members) for n, t in st.items()}
    else:
        state = members[0][1]
    model = build_model(cfg)
    _load(model, state, path.name)
    return ImportedModel(model=model, config=cfg, card=_card(path.stem, sigs, cfg))


def _card(name: str, sigs: Sequence[str], cfg: Any) -> str:
    return (
        "---\nlibrary_name: audiotool\ntags: [audiotool, separate, htdemucs]\n---\n\n"
        f"# {name} (demucs, converted)\n\n"
        f"Converted by audiotool from demucs' published checkpoint(s) {', '.join(sigs)}.\n"
        f"Stems: {', '.join(cfg.stems)}; {cfg.sample_rate} Hz; segment "
        f"{cfg.segment_samples / cfg.sample_rate:.2f} s.\n\n"
        "The weights keep their original licence (see the source repository); audiotool does "
        "not redistribute them.\n"
    )


# --------------------------------------------------------------------------- legacy .th


class ClassRef:
    """A class named in a pickle, recorded by name and never imported or called."""

    def __init__(self, module: str, name: str) -> None:
        self.qualname = f"{module}.{name}"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsupportedCheckpointError(f"the checkpoint instantiates '{self.qualname}'")


def _allowed() -> dict[tuple[str, str], Any]:
    import torch

    return {
        ("collections", "OrderedDict"): OrderedDict,
        ("fractions", "Fraction"): Fraction,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch", "Size"): torch.Size,
    }


class RestrictedUnpickler(pickle.Unpickler):
    """Admits tensors and plain data; ``demucs.*`` classes become :class:`ClassRef`; any
    other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed().get((module, name))
        if allowed is not None:
            return allowed
        if module == "demucs" or module.startswith("demucs."):
            return ClassRef(module, name)
        raise UnsupportedCheckpointError(
            f"the checkpoint references '{module}.{name}', which audiotool does not load",
            hint="only tensors and plain data are admitted in a .th file",
        )


class _RestrictedPickle:
    """Stands in for the ``pickle`` module in ``torch.load(pickle_module=...)``."""

    Unpickler = RestrictedUnpickler
    __name__ = "audiotool_restricted_pickle"

    @staticmethod
    def load(fh: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(fh, **kwargs).load()


def read_th(path: Path) -> dict[str, Any]:
    """The ``{klass, args, kwargs, state}`` package of a legacy demucs ``.th`` file, with
    ``klass`` as its qualified name."""
    import torch

    try:
        package = torch.load(
            str(path), map_location="cpu", pickle_module=_RestrictedPickle, weights_only=False
        )
    except UnsupportedCheckpointError as exc:
        raise UnsupportedCheckpointError(f"{path.name}: {exc.message}", hint=exc.hint) from exc
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError) as exc:
        raise UnsupportedCheckpointError(
            f"{path.name}: not a readable demucs checkpoint ({str(exc).splitlines()[0]})"
        ) from exc
    if not isinstance(package, dict) or not {"klass", "state"} <= set(package):
        raise UnsupportedCheckpointError(f"{path.name}: not a demucs package (klass/state)")
    klass = package["klass"]
    if not isinstance(klass, ClassRef):
        raise UnsupportedCheckpointError(f"{path.name}: 'klass' is not a class reference")
    state = package["state"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnsupportedCheckpointError(
            f"{path.name}: the state is not a plain state dict (quantized?)",
            hint=f"use one of {SUPPORTED_MODELS}",
        )
    return {
        "klass": klass.qualname,
        "args": list(package.get("args") or []),
        "kwargs": dict(package.get("kwargs") or {}),
        "state": dict(state),
    }


def convert_th(path: Path) -> ImportedModel:
    """Convert one legacy demucs ``.th`` checkpoint."""
    from audiotool.models.htdemucs import build_model

    if not path.is_file():
        raise UnsupportedCheckpointError(f"{path}: no such file")
    pkg = read_th(path)
    cfg = _model_config(pkg["klass"], pkg["args"], pkg["kwargs"], path.name)
    model = build_model(cfg)
    _load(model, pkg["state"], path.name)
    return ImportedModel(model=model, config=cfg, card=_card(path.stem, [path.stem], cfg))

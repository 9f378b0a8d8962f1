"""Import demucs' published checkpoints (Hugging Face layout, and legacy ``.th`` files).

Hub layout (one repo per named model, e.g. ``adefossez/HTDemucs-ft``): ``NAME.yaml`` is the
bag (``models``: signatures, optional ``weights``: per-member per-stem weights, optional
``segment``); each ``SIG.safetensors`` holds one model's plain state dict, with metadata
``klass`` (``"demucs.htdemucs.HTDemucs"``, ``"demucs.hdemucs.HDemucs"``), ``args`` and
``kwargs`` (JSON; a fraction is
``{"_type": "fraction", "numerator": n, "denominator": d}``). A ``structure`` entry marks a
diffq-quantized model.

``klass`` only selects a row of :data:`SUPPORTED` (no import from a name found in a file).
v4 ``HTDemucs`` maps onto audiotool's ``htdemucs`` family (same module names). v3 ``HDemucs``
maps onto the ``hdemucs`` family, i.e. torchaudio's port of the same network: the arguments
torchaudio's constructor has are passed on, those it cannot represent must have the one value
it hard-codes (:data:`_HD_REQUIRED`), and the state-dict keys are renamed by
:data:`_HD_KEYS`; the two compute the same function.
Legacy ``.th`` files (a pickle of ``{klass, args, kwargs, state}``) are read with a restricted
unpickler: class references are recorded as names, only tensors and plain data are admitted.
Everything refused raises :class:`UnsupportedCheckpointError` (one line, exit code 2).
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections import OrderedDict
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from audiotool.errors import ConfigError, UnsupportedCheckpointError, WeightMismatchError
from audiotool.importers import ImportedModel, Layout

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
SUPPORTED = {"demucs.htdemucs.HTDemucs": "htdemucs", "demucs.hdemucs.HDemucs": "hdemucs"}
SUPPORTED_MODELS = "htdemucs, htdemucs_ft, htdemucs_6s, hdemucs_mmi"


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


@dataclasses.dataclass(frozen=True)
class _ClassTable:
    """How one demucs class's constructor arguments become a family config.

    Attributes:
        fields: demucs argument -> config field (kept).
        required: arguments whose other values change inference in ways not implemented.
        ignored: arguments that do not change inference (training, initialisation, or code
            paths a required value switches off).
        positional: the constructor's parameters in order (for ``args``).
        default_segment: the constructor's ``segment`` default, in seconds.
    """

    fields: dict[str, str]
    required: dict[str, Any]
    ignored: frozenset[str]
    positional: tuple[str, ...]
    default_segment: int


def _same(text: str) -> dict[str, str]:
    return {"sources": "stems", "samplerate": "sample_rate", **{n: n for n in text.split()}}


_HT = _ClassTable(
    fields=_same(
        "audio_channels channels channels_time growth nfft depth rewrite freq_emb emb_scale "
        "kernel_size time_stride stride context context_enc norm_starts norm_groups "
        "dconv_mode dconv_depth dconv_comp bottom_channels t_layers t_hidden_scale t_heads "
        "t_norm_in t_norm_first t_norm_out t_max_period t_layer_scale t_gelu "
        "t_weight_pos_embed t_cross_first"
    ),
    required={
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
    },
    ignored=frozenset(
        _names(
            "end_iters wiener_residual multi_freqs_depth emb_smooth dconv_init t_dropout "
            "t_max_positions t_weight_decay t_lr t_cape_mean_normalize t_cape_augment "
            "t_cape_glob_loc_scale t_mask_type t_mask_random_seed t_sparse_attn_window "
            "t_global_window t_sparsity rescale segment"
        )
    ),
    positional=_names(
        "sources audio_channels channels channels_time growth nfft wiener_iters end_iters "
        "wiener_residual cac depth"
    ),
    default_segment=10,
)

#: v3 HDemucs -> torchaudio's HDemucs: torchaudio hard-codes these (CaC, hybrid with the
#: fixed padding, 1x1 rewrite convs, DConv in the encoder only, one channel count for both
#: branches, no band split)
_HD_REQUIRED: dict[str, Any] = {
    "cac": True,
    "hybrid": True,
    "hybrid_old": False,
    "rewrite": True,
    "dconv_mode": 1,
    "multi_freqs": None,
    "channels_time": None,
}
_HD = _ClassTable(
    fields=_same(
        "audio_channels channels growth nfft depth freq_emb emb_scale kernel_size time_stride "
        "stride context context_enc norm_starts norm_groups dconv_depth dconv_comp dconv_attn "
        "dconv_lstm"
    ),
    required=_HD_REQUIRED,
    # wiener_*/end_iters only act without CaC; the rest are training or initialisation
    ignored=frozenset(
        _names(
            "wiener_iters end_iters wiener_residual multi_freqs_depth emb_smooth dconv_init "
            "rescale segment"
        )
    ),
    positional=_names(
        "sources audio_channels channels channels_time growth nfft wiener_iters end_iters "
        "wiener_residual cac depth rewrite hybrid hybrid_old multi_freqs multi_freqs_depth "
        "freq_emb emb_scale emb_smooth kernel_size time_stride stride context context_enc "
        "norm_starts norm_groups dconv_mode dconv_depth dconv_comp dconv_attn dconv_lstm "
        "dconv_init rescale samplerate segment"
    ),
    default_segment=40,
)
_TABLES = {"htdemucs": _HT, "hdemucs": _HD}

#: demucs HDemucs module -> torchaudio HDemucs module (under our wrapper's ``model.``)
_HD_KEYS = {
    "encoder": "freq_encoder",
    "decoder": "freq_decoder",
    "tencoder": "time_encoder",
    "tdecoder": "time_decoder",
    "freq_emb": "freq_emb",
}


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

    from audiotool.checkpoints import safetensors_header

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


def _family(klass: str, where: str) -> str:
    if klass not in SUPPORTED:
        raise UnsupportedCheckpointError(
            f"{where}: demucs class '{klass}' is not supported",
            hint=f"audiotool reads {', '.join(SUPPORTED)} ({SUPPORTED_MODELS})",
        )
    return SUPPORTED[klass]


def _segment_samples(rate: int, segment: Any, where: str) -> int:
    """demucs' ``int(samplerate * segment)`` (``segment`` in seconds: int, float, fraction)."""
    if isinstance(segment, bool) or not isinstance(segment, int | float | Fraction):
        raise UnsupportedCheckpointError(f"{where}: segment={segment!r} is not a number")
    samples = int(rate * segment)
    if samples <= 0:
        raise UnsupportedCheckpointError(f"{where}: segment={segment!r} is not positive")
    return samples


def _model_config(klass: str, args: list[Any], kwargs: dict[str, Any], where: str) -> Any:
    """The family config (:class:`HTDemucsConfig` or :class:`HDemucsConfig`) of a demucs
    ``klass(*args, **kwargs)``."""
    from audiotool.models.configs import HDemucsConfig
    from audiotool.models.htdemucs import HTDemucsConfig

    family = _family(klass, where)
    table = _TABLES[family]
    name = klass.rsplit(".", 1)[-1]
    if len(args) > len(table.positional):
        raise UnsupportedCheckpointError(f"{where}: {len(args)} positional arguments")
    params = dict(zip(table.positional, args, strict=False))
    twice = sorted(set(params) & set(kwargs))
    if twice:
        raise UnsupportedCheckpointError(f"{where}: arguments given twice: {twice}")
    params.update(kwargs)
    if family == "hdemucs" and params.get("channels_time") == params.get("channels", 48):
        params["channels_time"] = None  # one channel count for both branches, as torchaudio
    data: dict[str, Any] = {}
    for arg, value in params.items():
        if arg in table.fields:
            data[table.fields[arg]] = list(value) if arg == "sources" else value
        elif arg in table.required:
            want = table.required[arg]
            if (bool(value) if want is None else value) != (False if want is None else want):
                raise UnsupportedCheckpointError(
                    f"{where}: {name} {arg}={value!r} is not supported (needs {want!r})"
                )
        elif arg not in table.ignored:
            raise UnsupportedCheckpointError(f"{where}: unknown {name} argument '{arg}'")
    if "stems" not in data:
        raise UnsupportedCheckpointError(f"{where}: no 'sources' argument")
    rate = data.get("sample_rate", 44100)
    if isinstance(rate, bool) or not isinstance(rate, int):
        raise UnsupportedCheckpointError(f"{where}: samplerate={rate!r} is not an integer")
    data["segment_samples"] = _segment_samples(
        rate, params.get("segment", table.default_segment), where
    )
    if family == "hdemucs":
        _check_torchaudio_port(data, where)
    try:
        if family == "hdemucs":
            return HDemucsConfig.from_dict(data, source=where)
        return HTDemucsConfig.from_dict(data, source=where)
    except ConfigError as exc:
        raise UnsupportedCheckpointError(exc.message) from exc


def _check_torchaudio_port(data: dict[str, Any], where: str) -> None:
    """Refuse HDemucs shapes on which torchaudio's port differs from demucs (its decoder pads
    ``(kernel - stride) // 2`` where demucs pads ``kernel // 4``; it special-cases nfft 2048;
    its channel growth is an integer)."""
    kernel, stride = data.get("kernel_size", 8), data.get("stride", 4)
    time_stride = data.get("time_stride", 2)
    if (kernel - stride) % 2 or (kernel - stride) // 2 != kernel // 4 or time_stride % 2:
        raise UnsupportedCheckpointError(
            f"{where}: HDemucs kernel_size={kernel}, stride={stride}, time_stride={time_stride}"
            " is not supported (torchaudio's port pads its decoder differently)"
        )
    if data.get("nfft", 4096) == 2048:
        raise UnsupportedCheckpointError(f"{where}: HDemucs nfft=2048 is not supported")
    growth = data.get("growth", 2)
    if isinstance(growth, float):
        if not growth.is_integer():
            raise UnsupportedCheckpointError(f"{where}: HDemucs growth={growth} is not supported")
        data["growth"] = int(growth)


def _member_state(family: str, state: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A member's demucs state dict under our key names (``prefix`` + family key). Keys
    outside the mapping are kept as they are, for the strict load to report."""
    if family == "htdemucs":
        return {prefix + k: t for k, t in state.items()}
    from audiotool.models.hdemucs import PREFIX

    out = {}
    for key, t in state.items():
        head, dot, rest = key.partition(".")
        new = PREFIX + _HD_KEYS[head] + dot + rest if head in _HD_KEYS else key
        out[prefix + new] = t
    return out


def _fill_unused(model: Any, state: dict[str, Any]) -> None:
    """torchaudio's HDemucs builds a norm in its merge layer (the "empty" time-encoder layer)
    that it never applies; demucs builds none. Give those parameters their built values."""
    from audiotool.models.hdemucs import HDemucsSeparator

    for name, module in model.named_modules():
        if not isinstance(module, HDemucsSeparator):
            continue
        base = f"{name}.model" if name else "model"
        for idx, layer in enumerate(module.model.time_encoder):
            if layer.empty:
                for key, t in layer.norm1.state_dict().items():
                    state.setdefault(f"{base}.time_encoder.{idx}.norm1.{key}", t)


def _build_and_load(cfg: Any, state: dict[str, Any], where: str) -> Any:
    from audiotool.checkpoints import load_state_strict
    from audiotool.models import hdemucs, htdemucs

    if cfg.family == "hdemucs":
        model = hdemucs.build_model(cfg)
        state = dict(state)
        _fill_unused(model, state)
    else:
        model = htdemucs.build_model(cfg)
    try:
        load_state_strict(model, state, source=where)
    except WeightMismatchError as exc:
        raise UnsupportedCheckpointError(exc.message) from exc
    return model


def convert_bag(path: Path) -> ImportedModel:
    """Convert a demucs bag (``NAME.yaml`` and its ``SIG.safetensors`` siblings)."""
    import yaml

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
    families = sorted({m[0].family for m in members})
    if len(families) > 1:
        raise UnsupportedCheckpointError(
            f"{path.name}: the bag mixes demucs classes ({', '.join(families)}); audiotool "
            "bags share one architecture"
        )
    segment = bag.get("segment")
    if segment is not None:
        # demucs' BagOfModels: the bag segment replaces every member's, except that an HT
        # model's is only ever shortened
        seg = _segment_samples(cfg.sample_rate, segment, path.name)
        members = [
            (dataclasses.replace(c, segment_samples=seg), st)
            if c.family != "htdemucs" or seg <= c.segment_samples
            else (c, st)
            for c, st in members
        ]
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
    if len(sigs) > 1:
        try:
            cfg = dataclasses.replace(
                cfg, bag_weights=tuple(tuple(float(x) for x in w) for w in weights)
            )
        except ValueError as exc:
            raise UnsupportedCheckpointError(f"{path.name}: {exc}") from exc
        state = {
            k: t
            for i, (_, st) in enumerate(members)
            for k, t in _member_state(cfg.family, st, f"models.{i}.").items()
        }
    else:
        state = _member_state(cfg.family, members[0][1])
    model = _build_and_load(cfg, state, path.name)
    return ImportedModel(model=model, config=cfg, card=_card(path.stem, sigs, cfg))


def _card(name: str, sigs: Sequence[str], cfg: Any) -> str:
    return (
        f"---\nlibrary_name: audiotool\ntags: [audiotool, separate, {cfg.family}]\n---\n\n"
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
    if not path.is_file():
        raise UnsupportedCheckpointError(f"{path}: no such file")
    pkg = read_th(path)
    cfg = _model_config(pkg["klass"], pkg["args"], pkg["kwargs"], path.name)
    model = _build_and_load(cfg, _member_state(cfg.family, pkg["state"]), path.name)
    return ImportedModel(model=model, config=cfg, card=_card(path.stem, [path.stem], cfg))

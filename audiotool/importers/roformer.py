"""Import BS-RoFormer / Mel-Band-RoFormer checkpoints shared for MSST / python-audio-separator.

A model is a state-dict pickle (``.ckpt`` / ``.pth``; bare, under ``"state_dict"``, and/or with
a ``model.`` / ``module.`` key prefix) plus an MSST-style YAML:

- ``model``: the constructor arguments (``dim``, ``depth``, ``stereo``, ``num_stems``,
  ``freqs_per_bands`` (BS) or ``num_bands`` (Mel), ``dim_head``, ``heads``, STFT settings ...);
- ``audio``: ``sample_rate``, ``num_channels``, ``chunk_size`` (and ``hop_length``);
- ``training``: ``instruments`` and ``target_instrument`` (the stem names);
- ``inference``: ``num_overlap``, ``dim_t``.

The pickle is read with ``torch.load(weights_only=True)``; the YAML with a safe loader that
also accepts ``!!python/tuple`` (common in these files) and nothing else of Python's. Every
disagreement — stems vs. mask estimators, channels, keys or shapes, an option this
implementation does not have — is refused with one line (:class:`UnsupportedCheckpointError`,
exit code 2), before anything is written.

Chunking (as python-audio-separator 0.47.1 runs these models): ``chunk_size =
stft_hop_length * (inference.dim_t - 1)`` when ``dim_t`` is given, else ``audio.chunk_size``;
``num_overlap`` from ``inference`` (default 8).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from audiotool.errors import (
    CheckpointMismatchError,
    ConfigError,
    ModelLoadError,
    UnsupportedCheckpointError,
    UsageError,
    WeightMismatchError,
)
from audiotool.importers import ImportedModel, Layout, load_pickle_state
from audiotool.models.roformer import RoformerConfig, build_model

CHECKPOINT_SUFFIXES = (".ckpt", ".pth")
YAML_SUFFIXES = (".yaml", ".yml")

#: constructor arguments that only matter for training (or for devices) — read and ignored
IGNORED_MODEL_KEYS = frozenset(
    {
        "attn_dropout",
        "ff_dropout",
        "flash_attn",
        "sage_attention",
        "use_torch_checkpoint",
        "zero_dc",  # stored but unused by the reference's forward
        "skip_connection",  # idem
        "dim_freqs_in",
        "multi_stft_resolution_loss_weight",
        "multi_stft_resolutions_window_sizes",
        "multi_stft_hop_size",
        "multi_stft_normalized",
    }
)
#: model keys copied into RoformerConfig as they are
COPIED_MODEL_KEYS = (
    "dim",
    "depth",
    "time_transformer_depth",
    "freq_transformer_depth",
    "heads",
    "dim_head",
    "stft_n_fft",
    "stft_hop_length",
    "stft_win_length",
    "stft_normalized",
    "mask_estimator_depth",
)
OTHER_MODEL_KEYS = frozenset(
    {
        "stereo",
        "num_stems",
        "freqs_per_bands",
        "num_bands",
        "sample_rate",
        "mlp_expansion_factor",
        "match_input_audio_length",
        "linear_transformer_depth",
    }
)


# --------------------------------------------------------------------------- YAML


def read_yaml(path: Path) -> dict[str, Any]:
    """An MSST YAML as a dict (safe loading; ``!!python/tuple`` becomes a tuple)."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    def _tuple(loader: yaml.SafeLoader, node: yaml.Node) -> tuple[Any, ...]:
        assert isinstance(node, yaml.SequenceNode)
        return tuple(loader.construct_sequence(node, deep=True))

    _Loader.add_constructor("tag:yaml.org,2002:python/tuple", _tuple)
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_Loader)  # a SafeLoader subclass
    except OSError as exc:
        raise UnsupportedCheckpointError(
            f"{path}: cannot read the config ({exc.strerror})"
        ) from exc
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnsupportedCheckpointError(f"{path}: not a readable YAML config ({first})") from exc
    if not isinstance(data, dict):
        raise UnsupportedCheckpointError(f"{path}: the config is not a YAML mapping")
    return data


def looks_like_roformer(data: dict[str, Any]) -> bool:
    """An MSST config whose ``model`` section has the arguments of a (BS or Mel) RoFormer."""
    model = data.get("model")
    if not isinstance(model, dict):
        return False
    has_bands = "freqs_per_bands" in model or "num_bands" in model
    has_axes = "time_transformer_depth" in model or "freq_transformer_depth" in model
    return has_bands and has_axes and "dim" in model and "depth" in model


def _section(data: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    value = data.get(name) or {}
    if not isinstance(value, dict):
        raise UnsupportedCheckpointError(f"{source}: '{name}' must be a mapping")
    return value


def config_from_yaml(
    data: dict[str, Any], state: dict[str, Tensor], *, source: str = "config"
) -> RoformerConfig:
    """The :class:`RoformerConfig` an MSST config describes, checked against the checkpoint's
    stems (``state`` keys without wrapper or prefix)."""
    model = _section(data, "model", source)
    audio = _section(data, "audio", source)
    training = _section(data, "training", source)
    inference = _section(data, "inference", source)
    if not looks_like_roformer(data):
        raise UnsupportedCheckpointError(
            f"{source}: the 'model' section is not a BS-/Mel-Band-RoFormer's (it needs dim, "
            "depth, time/freq_transformer_depth and freqs_per_bands or num_bands)"
        )
    unknown = sorted(set(model) - IGNORED_MODEL_KEYS - OTHER_MODEL_KEYS - set(COPIED_MODEL_KEYS))
    if unknown:
        raise UnsupportedCheckpointError(
            f"{source}: model option(s) {unknown} are not supported by audiotool's RoFormer",
            hint="only the arguments of python-audio-separator's BSRoformer/MelBandRoformer are",
        )
    if int(model.get("linear_transformer_depth", 0) or 0) > 0:
        raise UnsupportedCheckpointError(
            f"{source}: linear_transformer_depth > 0 (linear-attention layers) is not supported"
        )

    variant = "mel" if "num_bands" in model else "bs"
    channels = 2 if model.get("stereo", False) else 1
    yaml_channels = audio.get("num_channels")
    if yaml_channels is not None and int(yaml_channels) != channels:
        raise UnsupportedCheckpointError(
            f"{source}: audio.num_channels is {yaml_channels} but model.stereo is "
            f"{bool(model.get('stereo', False))}"
        )
    rate = int(audio.get("sample_rate", 44100))
    if variant == "mel" and int(model.get("sample_rate", rate)) != rate:
        raise UnsupportedCheckpointError(
            f"{source}: model.sample_rate {model['sample_rate']} differs from "
            f"audio.sample_rate {rate}"
        )

    stems = _stems(model, training, state, source)
    fields: dict[str, Any] = {k: model[k] for k in COPIED_MODEL_KEYS if k in model}
    if variant == "bs":
        if "freqs_per_bands" in model:
            fields["freqs_per_bands"] = tuple(int(f) for f in model["freqs_per_bands"])
        if "mlp_expansion_factor" in model:
            fields["mlp_expansion_factor"] = int(model["mlp_expansion_factor"])
    else:  # the reference's Mel mask estimators always use a factor of 4
        fields["num_bands"] = int(model["num_bands"])
        fields["match_input_audio_length"] = bool(model.get("match_input_audio_length", False))

    hop = int(model.get("stft_hop_length", audio.get("hop_length", 512)))
    if inference.get("dim_t") is not None:
        chunk = hop * (int(inference["dim_t"]) - 1)
    elif audio.get("chunk_size") is not None:
        chunk = int(audio["chunk_size"])
    else:
        raise UnsupportedCheckpointError(
            f"{source}: neither inference.dim_t nor audio.chunk_size given"
        )
    try:
        return RoformerConfig.from_dict(
            {
                **fields,
                "variant": variant,
                "sample_rate": rate,
                "stems": list(stems),
                "audio_channels": channels,
                "chunk_size": chunk,
                "num_overlap": int(inference.get("num_overlap", 8)),
            },
            source=source,
        )
    except ModelLoadError:
        raise
    except Exception as exc:  # ConfigError: wrong type of a value
        raise UnsupportedCheckpointError(str(exc)) from exc


def _stems(
    model: dict[str, Any], training: dict[str, Any], state: dict[str, Tensor], source: str
) -> tuple[str, ...]:
    """Stem names from ``training``, checked against ``num_stems`` and the mask estimators."""
    in_ckpt = {int(m.group(1)) for k in state if (m := re.match(r"mask_estimators\.(\d+)\.", k))}
    n_ckpt = len(in_ckpt)
    num_stems = int(model.get("num_stems", 1))
    target = training.get("target_instrument")
    instruments = [str(s) for s in (training.get("instruments") or [])]
    if target:
        stems: tuple[str, ...] = (str(target),)
        described = f"training.target_instrument '{target}'"
    else:
        stems = tuple(instruments)
        described = f"training.instruments {instruments}"
    if not stems:
        raise UnsupportedCheckpointError(
            f"{source}: no stem names (training.instruments / target_instrument)"
        )
    if len(set(stems)) != len(stems):
        raise UnsupportedCheckpointError(f"{source}: {described} names a stem twice")
    if len(stems) != num_stems or len(stems) != n_ckpt:
        raise UnsupportedCheckpointError(
            f"{source}: {described} gives {len(stems)} stem(s) but model.num_stems is "
            f"{num_stems} and the checkpoint has {n_ckpt} mask estimator(s)",
            hint="for a one-stem model set training.target_instrument",
        )
    return stems


# --------------------------------------------------------------------------- checkpoints


def unwrap_state(data: dict[str, Any], *, source: str) -> dict[str, Tensor]:
    """The tensors of a checkpoint: under ``"state_dict"`` if present, minus a ``model.`` /
    ``module.`` prefix carried by every key."""
    inner = data.get("state_dict")
    if isinstance(inner, dict):
        data = inner
    state = {k: v for k, v in data.items() if isinstance(v, Tensor)}
    if not state:
        raise UnsupportedCheckpointError(f"{source}: the checkpoint holds no tensors")
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def convert(ckpt: Path, config_yaml: Path) -> tuple[RoformerConfig, dict[str, Tensor]]:
    """Read a RoFormer checkpoint + MSST YAML into our config and a state dict that loads
    strictly into :func:`audiotool.models.roformer.build_model` of that config.

    Raises:
        UnsupportedCheckpointError: a pickle that needs code, a config that disagrees with the
            checkpoint or that this implementation does not support (one line, exit code 2);
            :class:`CheckpointMismatchError` (listing the keys) for keys or shapes.
    """
    ckpt, config_yaml = Path(ckpt), Path(config_yaml)
    data = read_yaml(config_yaml)
    try:
        raw = load_pickle_state(ckpt)
    except UnsupportedCheckpointError:
        raise
    except ModelLoadError as exc:
        raise UnsupportedCheckpointError(exc.message, hint=exc.hint) from exc
    state = unwrap_state(raw, source=str(ckpt))
    cfg = config_from_yaml(data, state, source=str(config_yaml))
    try:
        with torch.device("meta"):
            model = build_model(cfg)
    except ConfigError as exc:  # e.g. bands that do not cover the STFT bins
        raise UnsupportedCheckpointError(f"{config_yaml}: {exc.message}", hint=exc.hint) from exc
    from audiotool.checkpoints import check_state_dict

    try:
        check_state_dict(model, state, source=f"{ckpt} with {config_yaml.name}")
    except WeightMismatchError as exc:
        raise CheckpointMismatchError(
            exc.message.replace("the model built from config.json", "the YAML's model"),
            missing=exc.missing,
            unexpected=exc.unexpected,
            mismatched=exc.mismatched,
            hint="the checkpoint and the YAML describe different models",
        ) from exc
    return cfg, state


def import_roformer(ckpt: Path, config_yaml: Path, out_dir: Path) -> Path:
    """Convert and write our format (config.json + model.safetensors + README.md card)."""
    from audiotool.checkpoints import load_state_strict, save_pretrained

    cfg, state = convert(ckpt, config_yaml)
    model = build_model(cfg)
    load_state_strict(model, state, source=str(ckpt))
    how = f"`audiotool models convert roformer {Path(ckpt).name} --config {Path(config_yaml).name}`"
    return save_pretrained(model, cfg, out_dir, card=_card(cfg, how))


def _card(cfg: RoformerConfig, how: str) -> str:
    name = "Mel-Band-RoFormer" if cfg.variant == "mel" else "BS-RoFormer"
    return (
        "---\nlibrary_name: audiotool\npipeline_tag: audio-to-audio\ntags: [source-separation,"
        " roformer]\n---\n\n"
        f"# {name} (converted)\n\n"
        f"Converted with {how} from an MSST / python-audio-separator checkpoint "
        f"({cfg.sample_rate} Hz, {'stereo' if cfg.audio_channels == 2 else 'mono'}, stems "
        f"{list(cfg.stems)}; chunks of {cfg.chunk_size} samples, num_overlap "
        f"{cfg.num_overlap}). The weights keep their original licence; audiotool does not "
        "redistribute them.\n"
    )


# --------------------------------------------------------------------------- Hub folders


def _yaml_configs(folder: Path, files: Sequence[str]) -> list[str]:
    """The files among ``files`` that are RoFormer-looking MSST YAMLs present under ``folder``."""
    out = []
    for name in files:
        path = Path(folder) / name
        if not name.lower().endswith(YAML_SUFFIXES) or not path.is_file():
            continue
        try:
            data = read_yaml(path)
        except UnsupportedCheckpointError:
            continue
        if looks_like_roformer(data):
            out.append(name)
    return sorted(out)


def _checkpoints(files: Sequence[str]) -> list[str]:
    return sorted(f for f in files if f.lower().endswith(CHECKPOINT_SUFFIXES))


def detect(folder: Path, files: list[str]) -> bool:
    """Whether a folder / repo holds a RoFormer checkpoint: a ``.ckpt`` / ``.pth`` and an
    MSST YAML whose ``model`` section looks like a RoFormer's.

    Args:
        folder: where the files are (only YAMLs are opened; checkpoints are matched by name).
        files: paths relative to ``folder`` (e.g. a Hub repo's file list).
    """
    return bool(_checkpoints(files)) and bool(_yaml_configs(folder, files))


def _relative_files(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in Path(folder).rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _pick_yaml(ckpt: str, yamls: list[str]) -> str:
    stem = Path(ckpt).stem
    names = (stem, f"config_{stem}", f"{stem}_config", f"{stem}.ckpt")
    by_name = [y for y in yamls if Path(y).stem in names]
    if len(by_name) == 1:
        return by_name[0]
    if len(yamls) == 1:
        return yamls[0]
    raise UsageError(
        f"cannot tell which YAML goes with {ckpt}: {', '.join(yamls) or 'none found'}",
        hint="name the YAML like the checkpoint, or convert with "
        "`audiotool models convert roformer CKPT --config YAML`",
    )


def convert_folder(
    folder: Path, *, file: str | None = None
) -> tuple[RoformerConfig, dict[str, Tensor]]:
    """:func:`convert` the RoFormer checkpoint of a folder (e.g. a downloaded Hub repo).

    Args:
        folder: holds one or more ``.ckpt`` / ``.pth`` and MSST YAMLs.
        file: the checkpoint to use (path relative to ``folder`` or a bare file name) when
            there are several; its YAML is the one named like it, or the only RoFormer YAML.

    Raises:
        UsageError: no checkpoint, several and no ``file`` (or an unknown one), or no single
            YAML for it (the message lists the choices).
    """
    folder = Path(folder)
    files = _relative_files(folder)
    ckpts = _checkpoints(files)
    if file is not None:
        chosen = [c for c in ckpts if file in (c, Path(c).name)]
        if len(chosen) != 1:
            raise UsageError(
                f"{folder}: no single checkpoint named {file!r}",
                hint=f"choose one of {', '.join(ckpts) or '(none)'}",
            )
        ckpt = chosen[0]
    elif len(ckpts) == 1:
        ckpt = ckpts[0]
    else:
        raise UsageError(
            f"{folder}: {'no' if not ckpts else len(ckpts)} RoFormer checkpoints (.ckpt/.pth)"
            + (f": {', '.join(ckpts)}" if ckpts else ""),
            hint="pick one by name" if ckpts else "is this a RoFormer model folder?",
        )
    yaml_name = _pick_yaml(ckpt, _yaml_configs(folder, files))
    return convert(folder / ckpt, folder / yaml_name)


# --------------------------------------------------------------------------- Hub layout


def _detect_names(folder: Path, files: Sequence[str]) -> bool:
    """A top-level ``.ckpt`` / ``.pth`` beside a YAML; where the YAMLs are already on disk
    (a local folder), one of them must look like a RoFormer's."""
    top = [f for f in files if "/" not in f]
    yamls = [f for f in top if f.lower().endswith(YAML_SUFFIXES)]
    if not _checkpoints(top) or not yamls:
        return False
    if all((Path(folder) / y).is_file() for y in yamls):
        return bool(_yaml_configs(folder, yamls))
    return True  # a Hub repo listed before download: decided by the names


def _needed(files: Sequence[str], file: str | None) -> list[str]:
    """The chosen checkpoint (``file``, or the only one) and the repo's top-level YAMLs."""
    top = [f for f in files if "/" not in f]
    ckpts = _checkpoints(top)
    if file is not None:
        chosen = [c for c in ckpts if file in (c, Path(c).name)]
    else:
        chosen = ckpts if len(ckpts) == 1 else []
    if len(chosen) != 1:
        raise UsageError(
            f"the repo holds {len(ckpts)} RoFormer checkpoints"
            + (f" and none named {file!r}" if file else ""),
            hint=f"pick one with org/name:FILE, one of {', '.join(ckpts) or '(none)'}",
        )
    return [chosen[0], *sorted(f for f in top if f.lower().endswith(YAML_SUFFIXES))]


def _convert_layout(folder: Path, *, file: str | None = None) -> ImportedModel:
    from audiotool.checkpoints import load_state_strict

    cfg, state = convert_folder(folder, file=file)
    model = build_model(cfg)
    load_state_strict(model, state, source=str(folder))
    return ImportedModel(model=model.eval(), config=cfg, card=_card(cfg, "audiotool's Hub import"))


LAYOUT = Layout(name="roformer", detect=_detect_names, needed=_needed, convert=_convert_layout)

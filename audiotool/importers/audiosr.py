"""Import AudioSR checkpoints (``haoheliu/audiosr_basic`` / ``audiosr_speech``).

The file is ``pytorch_model.bin``: a pickle whose ``"state_dict"`` holds the reference
``LatentDiffusion``'s tensors (``shared/reference/audiosr.md``, "Checkpoint format"). Keys map
one to one onto :func:`audiotool.models.latent_diffusion.build_audiosr`; the groups below are
ignored on purpose, and any other missing or unexpected key is an error that lists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from audiotool.errors import CheckpointMismatchError, ModelLoadError, UnsupportedCheckpointError
from audiotool.importers import ImportedModel, Layout, load_pickle_state
from audiotool.models.latent_diffusion import (
    LatentDiffusion,
    LatentDiffusionConfig,
    audiosr_config,
    build_model,
)

#: prefixes of reference tensors that inference never uses (CLAP, the EMA shadow copy)
IGNORED_PREFIXES = ("clap.", "model_ema.")
#: exact reference keys that are not used (the learned log-variance of the training loss)
IGNORED_KEYS = ("logvar",)
#: parts of the conditioning VAE we do not build: only its encoder + quant_conv are used
DROPPED_COND_PREFIXES = (
    "cond_stage_models.0.vae.decoder.",
    "cond_stage_models.0.vae.post_quant_conv.",
    "cond_stage_models.0.vae.vocoder.",
)
#: parameters that only exist with the global encoder (start from their initialisation)
GLOBAL_MARKERS = (".global_attn.", "model.diffusion_model.global_encoder.")


def _ignored(key: str) -> bool:
    return key.startswith(IGNORED_PREFIXES + DROPPED_COND_PREFIXES) or key in IGNORED_KEYS


def map_audiosr_state(
    state: dict[str, torch.Tensor], model: LatentDiffusion, *, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Strictly map a reference state dict onto ``model``'s keys.

    Returns the complete state dict for ``model`` (global-encoder parameters, when present,
    keep their initial values: zero output projections, so the output equals AudioSR's).

    Raises:
        WeightMismatchError: missing / unexpected / reshaped keys, all listed.
    """
    expected = model.state_dict()
    kept = {k: v for k, v in state.items() if not _ignored(k)}
    new_keys = {k for k in expected if any(m in k for m in GLOBAL_MARKERS)}
    missing = sorted(set(expected) - set(kept) - new_keys)
    unexpected = sorted(set(kept) - set(expected))
    reshaped = sorted(
        f"{k}: checkpoint {tuple(kept[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(kept) & set(expected)
        if tuple(kept[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or reshaped:
        parts = [
            f"{label}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", reshaped),
            )
            if keys
        ]
        raise CheckpointMismatchError(
            f"{source}: not an AudioSR checkpoint of the known layout; " + "; ".join(parts),
            missing=missing,
            unexpected=unexpected,
            mismatched=reshaped,
        )
    out = {k: v.to(expected[k].dtype) for k, v in kept.items()}
    for k in new_keys:
        out[k] = expected[k]
    return out


#: the checkpoint file of the Hub repos ``haoheliu/audiosr_basic`` and ``haoheliu/audiosr_speech``
CHECKPOINT_NAME = "pytorch_model.bin"
#: (config field, reference tensor, axis) the widths of a checkpoint are read from
_WIDTHS = (
    ("vae_ch", "first_stage_model.encoder.conv_in.weight", 0),
    ("model_channels", "model.diffusion_model.input_blocks.0.0.weight", 0),
    ("hifigan_channels", "first_stage_model.vocoder.conv_pre.weight", 0),
)


def infer_config(state: dict[str, torch.Tensor], *, source: str) -> LatentDiffusionConfig:
    """AudioSR's architecture with the widths found in ``state`` (the published checkpoints
    give AudioSR's own: 128 / 128 / 1536; everything else is AudioSR's fixed layout, which
    :func:`map_audiosr_state` then checks tensor by tensor).

    Raises:
        WeightMismatchError: a tensor the widths are read from is missing.
    """
    missing = [key for _, key, _ in _WIDTHS if key not in state]
    if missing:
        raise CheckpointMismatchError(
            f"{source}: not an AudioSR checkpoint (no {', '.join(missing)})", missing=missing
        )
    widths = {field: int(state[key].shape[axis]) for field, key, axis in _WIDTHS}
    return audiosr_config().replace(**widths)


def detect(folder: Path, files: Sequence[str]) -> bool:
    """A folder laid out like AudioSR's Hub repos: ``pytorch_model.bin`` and no ``config.json``
    (a ``transformers`` repo has one). The pickle itself is only read by :func:`convert_folder`.
    """
    return CHECKPOINT_NAME in files and "config.json" not in files


def convert_folder(
    folder: Path, *, file: str | None = None
) -> tuple[LatentDiffusionConfig, dict[str, torch.Tensor]]:
    """Convert the AudioSR checkpoint in ``folder`` (``file``, default ``pytorch_model.bin``).

    Returns:
        Our config (widths read from the checkpoint, ``scale_factor`` from its buffer) and the
        complete state dict of :func:`~audiotool.models.latent_diffusion.build_model` for it.
    """
    path = Path(folder) / (file or CHECKPOINT_NAME)
    try:
        state = load_pickle_state(path, key="state_dict")
    except UnsupportedCheckpointError:
        raise
    except ModelLoadError as exc:  # recognised by its file name only: say what was expected
        raise UnsupportedCheckpointError(
            f"{exc.message}; it was taken for an AudioSR checkpoint by its name",
            hint="audiotool reads AudioSR's pytorch_model.bin (haoheliu/audiosr_basic, "
            "audiosr_speech); other checkpoints need their own importer (audiotool models "
            "convert --help)",
        ) from exc
    cfg = infer_config(state, source=str(path))
    if "scale_factor" in state:
        cfg = cfg.replace(scale_factor=float(state["scale_factor"]))
    with torch.device("meta"):  # names and shapes only: no 258 M random parameters drawn
        shapes = build_model(cfg)
    return cfg, map_audiosr_state(state, shapes, source=str(path))


def convert_audiosr_checkpoint(
    path: Path, *, global_encoder: bool = False, config: LatentDiffusionConfig | None = None
) -> tuple[LatentDiffusion, LatentDiffusionConfig]:
    """Read an AudioSR ``pytorch_model.bin`` (``weights_only=True``) into our model.

    Args:
        path: the checkpoint.
        global_encoder: add the (untrained, zero-output) global encoder.
        config: the architecture (default: AudioSR's; tests pass a reduced one).
    """
    state = load_pickle_state(path, key="state_dict")
    cfg = config or audiosr_config(global_encoder=global_encoder)
    if "scale_factor" in state:
        cfg = cfg.replace(scale_factor=float(state["scale_factor"]))
    model = build_model(cfg)
    model.load_state_dict(map_audiosr_state(state, model, source=str(path)), strict=True)
    return model.eval(), cfg


def import_audiosr(path: Path, out_dir: Path, *, global_encoder: bool = False) -> Path:
    """Convert an AudioSR checkpoint and write it in audiotool's format to ``out_dir``."""
    from audiotool.checkpoints import save_pretrained

    model, cfg = convert_audiosr_checkpoint(Path(path), global_encoder=global_encoder)
    card = (
        "---\nlibrary_name: audiotool\npipeline_tag: audio-to-audio\ntags: [audio-super-resolution"
        ", audiosr]\n---\n\n# AudioSR (converted)\n\n"
        f"Converted with `audiotool models convert audiosr {Path(path).name}` from an AudioSR "
        "checkpoint (Liu et al. 2024, haoheliu/versatile_audio_super_resolution). Weights are "
        "the authors'; see their licence. Ignored at conversion: CLAP, the EMA copy, `logvar`, "
        "and the unused decoder/vocoder of the conditioning VAE."
        + (
            "\n\nThe global encoder was added untrained (zero output: results equal AudioSR's "
            "until it is fine-tuned)."
            if global_encoder
            else ""
        )
        + "\n"
    )
    return save_pretrained(model, cfg, out_dir, card=card)


# --------------------------------------------------------------------------- Hub layout

#: short names of the published repos (``--model audiosr-basic``)
ALIASES = {"audiosr-basic": "haoheliu/audiosr_basic", "audiosr-speech": "haoheliu/audiosr_speech"}


def alias(name: str) -> tuple[str, str | None] | None:
    """``audiosr-basic`` / ``audiosr-speech`` -> their Hub repos."""
    repo = ALIASES.get(name)
    return (repo, None) if repo else None


def _needed(files: Sequence[str], file: str | None) -> list[str]:
    return [file or CHECKPOINT_NAME]


def _convert_layout(folder: Path, *, file: str | None = None) -> ImportedModel:
    from audiotool.checkpoints import load_state_strict

    cfg, state = convert_folder(folder, file=file)
    model = build_model(cfg)
    load_state_strict(model, state, source=str(Path(folder) / (file or CHECKPOINT_NAME)))
    card = (
        "---\nlibrary_name: audiotool\npipeline_tag: audio-to-audio\ntags: [audio-super-"
        "resolution, audiosr]\n---\n\n# AudioSR (converted)\n\n"
        "Converted by audiotool's Hub import from an AudioSR checkpoint (Liu et al. 2024, "
        "haoheliu/versatile_audio_super_resolution), read with weights_only=True and mapped key "
        "by key. Ignored: CLAP, the EMA copy, `logvar`, the unused decoder/vocoder of the "
        "conditioning VAE. The weights keep their original licence; audiotool does not "
        "redistribute them.\n"
    )
    return ImportedModel(model=model.eval(), config=cfg, card=card)


LAYOUT = Layout(name="audiosr", detect=detect, needed=_needed, convert=_convert_layout, alias=alias)

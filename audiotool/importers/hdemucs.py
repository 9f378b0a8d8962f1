"""Import torchaudio-format HDemucs state dicts (e.g. the HDEMUCS_HIGH_MUSDB pipeline weights).

The file is read with ``torch.load(weights_only=True)``; it may be the bare state dict or a dict
holding it under ``"state_dict"`` / ``"model"``. The architecture (low / medium / high) is
inferred from the tensor names and shapes; the stem count from the output layer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from audiotool.checkpoints import load_state_strict
from audiotool.errors import ModelLoadError, WeightMismatchError
from audiotool.importers import load_pickle_state
from audiotool.models.hdemucs import PREFIX, PRESETS, HDemucsConfig, HDemucsSeparator


def _unwrap(data: dict[str, object]) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        inner = data.get(key)
        if isinstance(inner, dict):
            data = inner
    state = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ModelLoadError("the checkpoint holds no tensors")
    return state


def infer_config(
    state: dict[str, torch.Tensor], sources: tuple[str, ...] | None = None
) -> HDemucsConfig:
    """The preset whose layout matches ``state`` (torchaudio key names, no prefix)."""
    enc = state.get("freq_encoder.0.conv.weight")
    decoders = [
        int(k.split(".")[1])
        for k in state
        if k.startswith("freq_decoder.") and k.endswith(".conv_tr.weight")
    ]
    if enc is None or not decoders:
        raise ModelLoadError("not a torchaudio HDemucs state dict (no freq_encoder / decoder)")
    chans = int(enc.shape[1]) // 2  # complex-as-channels: re + im per audio channel
    out_w = state[f"freq_decoder.{max(decoders)}.conv_tr.weight"]
    n_src = int(out_w.shape[1]) // (2 * chans)
    candidates = []
    for name, make in PRESETS.items():
        base = make()
        stems = sources or (
            base.stems if n_src == len(base.stems) else tuple(f"source{i}" for i in range(n_src))
        )
        if len(stems) != n_src:
            raise WeightMismatchError(
                f"the checkpoint has {n_src} sources but {len(stems)} names were given"
            )
        cfg = base.replace(stems=tuple(stems), audio_channels=chans)
        with torch.device("meta"):
            model = HDemucsSeparator(cfg).model
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if shapes.keys() == state.keys() and all(
            shapes[k] == tuple(state[k].shape) for k in shapes
        ):
            candidates.append((name, cfg))
    if len(candidates) != 1:
        raise WeightMismatchError(
            "cannot tell which HDemucs layout this is ("
            + (
                "no preset matches"
                if not candidates
                else f"ambiguous: {[n for n, _ in candidates]}"
            )
            + ")",
            hint="only torchaudio's hdemucs_low / medium / high layouts are supported",
        )
    return candidates[0][1]


def convert_hdemucs_checkpoint(
    path: Path, *, sources: tuple[str, ...] | None = None
) -> tuple[HDemucsSeparator, HDemucsConfig]:
    """Read a torchaudio HDemucs checkpoint strictly into our wrapper."""
    state = _unwrap(load_pickle_state(path))
    cfg = infer_config(state, sources)
    model = HDemucsSeparator(cfg)
    prefixed = {PREFIX + k: v for k, v in state.items()}
    load_state_strict(model, prefixed, source=str(path))
    return model.eval(), cfg


def import_hdemucs(path: Path, out_dir: Path, *, sources: tuple[str, ...] | None = None) -> Path:
    """Convert and write our format (config.json + model.safetensors + card)."""
    from audiotool.checkpoints import save_pretrained

    model, cfg = convert_hdemucs_checkpoint(Path(path), sources=sources)
    card = (
        "---\nlibrary_name: audiotool\npipeline_tag: audio-to-audio\ntags: [source-separation,"
        " hdemucs]\n---\n\n# HDemucs (converted)\n\n"
        f"Converted with `audiotool models convert hdemucs {Path(path).name}` from a torchaudio "
        f"HDemucs state dict (nfft {cfg.nfft}, depth {cfg.depth}, stems {list(cfg.stems)}). "
        "The weights keep their original licence.\n"
    )
    return save_pretrained(model, cfg, out_dir, card=card)

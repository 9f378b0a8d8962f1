"""Tiny reference RoFormers for the parity tests, saved in the published checkpoint layout.

Reference implementation: lucidrains' ``bs-roformer`` **0.3.10** (PyPI, MIT; in the ``dev``
extra). Why this one and not python-audio-separator 0.47.1, the tool users load these
checkpoints with:

- audio-separator cannot be installed cleanly on a fresh CI machine: it needs ``diffq`` (an
  sdist compiled with Cython), ``samplerate==0.1.0``, ``onnx-weekly``, ``onnx2torch``,
  torchvision ..., and its package ``__init__`` imports the whole Separator.
- bs-roformer 0.3.10 is the version audio-separator's ``uvr_lib_v5/roformer`` files were taken
  from: its ``BSRoformer`` / ``MelBandRoformer`` have exactly the same state-dict keys and
  shapes (checked for BS and Mel, stereo, several stems), and with the same weights their
  forwards agree bit for bit (max |diff| = 0.0, checked with audio-separator's module files
  loaded without its package ``__init__``; both einsum and SDPA attention). Later versions of
  bs-roformer (0.4+) rename or add keys (``to_gates`` moved, hyper-connections from 0.6).
- ``rotary-embedding-torch`` is pinned ``<0.7`` as audio-separator pins it (the rotary
  ``freqs`` are part of the published state dicts).

Models are built with ``flash_attn=False`` (the einsum attention path): 0.3.10's flash path
calls ``torch.backends.cuda.sdp_kernel``, deprecated in recent torch; the maths is the same.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn

with warnings.catch_warnings():  # rotary-embedding-torch 0.6 uses torch.cuda.amp.autocast
    warnings.simplefilter("ignore", FutureWarning)
    from bs_roformer import BSRoformer, MelBandRoformer

RATE = 8000
HOP = 16
N_FFT = 64
FREQS_PER_BANDS = (4, 4, 8, 17)  # 33 bins = N_FFT // 2 + 1


def model_section(variant: str, *, stereo: bool, num_stems: int) -> dict[str, Any]:
    """The YAML ``model`` section of a tiny RoFormer."""
    section: dict[str, Any] = {
        "dim": 16,
        "depth": 2,
        "stereo": stereo,
        "num_stems": num_stems,
        "time_transformer_depth": 1,
        "freq_transformer_depth": 1,
        "dim_head": 8,
        "heads": 2,
        "attn_dropout": 0.1,
        "ff_dropout": 0.1,
        "flash_attn": False,
        "dim_freqs_in": N_FFT // 2 + 1,
        "stft_n_fft": N_FFT,
        "stft_hop_length": HOP,
        "stft_win_length": N_FFT,
        "stft_normalized": False,
        "mask_estimator_depth": 2,
        "multi_stft_resolution_loss_weight": 1.0,
        "multi_stft_resolutions_window_sizes": (256, 128),
        "multi_stft_hop_size": 32,
        "multi_stft_normalized": False,
    }
    if variant == "bs":
        section["freqs_per_bands"] = FREQS_PER_BANDS
    else:
        section["num_bands"] = 6
        section["sample_rate"] = RATE
    return section


def build_reference(
    variant: str, *, stereo: bool, num_stems: int, seed: int = 0
) -> tuple[nn.Module, dict[str, Any]]:
    """A reference model with seeded random weights (RMSNorm gains and biases included), in
    eval mode, and its YAML ``model`` section."""
    section = model_section(variant, stereo=stereo, num_stems=num_stems)
    kwargs = {k: v for k, v in section.items() if k != "dim_freqs_in"}
    torch.manual_seed(seed)
    ref = (BSRoformer if variant == "bs" else MelBandRoformer)(**kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if not name.endswith("rotary_embed.freqs"):
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return ref.eval(), section


def write_published(
    folder: Path,
    name: str,
    ref: nn.Module,
    section: dict[str, Any],
    *,
    instruments: list[str],
    target: str | None,
    wrap: bool = True,
    prefix: str = "model.",
    chunk: int = HOP * 40,
    num_overlap: int = 2,
) -> tuple[Path, Path]:
    """``NAME.ckpt`` (state dict, optionally under ``state_dict`` and with a key prefix) and
    ``NAME.yaml`` (MSST layout, ``freqs_per_bands`` as ``!!python/tuple``)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {prefix + k: v for k, v in ref.state_dict().items()}
    ckpt = folder / f"{name}.ckpt"
    torch.save({"state_dict": state, "epoch": 3} if wrap else state, ckpt)
    config = {
        "audio": {
            "chunk_size": chunk,
            "dim_f": 1024,
            "hop_length": HOP,
            "n_fft": N_FFT,
            "num_channels": 2 if section["stereo"] else 1,
            "sample_rate": RATE,
            "min_mean_abs": 0.0,
        },
        "model": section,
        "training": {
            "batch_size": 4,
            "instruments": instruments,
            "target_instrument": target,
            "lr": 1.0e-5,
        },
        "inference": {"batch_size": 1, "dim_t": chunk // HOP + 1, "num_overlap": num_overlap},
    }
    text = yaml.dump(config, sort_keys=False)  # tuples are written as !!python/tuple
    assert "!!python/tuple" in text or section.get("num_bands")
    yml = folder / f"{name}.yaml"
    yml.write_text(text)
    return ckpt, yml


def hamming(n: int) -> np.ndarray:
    """Symmetric Hamming window (scipy.signal.windows.hamming(n))."""
    if n == 1:
        return np.ones(1)
    k = np.arange(n)
    return 0.54 - 0.46 * np.cos(2 * np.pi * k / (n - 1))


def reference_demix(ref: nn.Module, mix: Tensor, *, chunk: int, num_overlap: int) -> Tensor:
    """python-audio-separator 0.47.1's RoFormer demix, written out for the test (its
    ``MDXCSeparator.demix`` cannot be called standalone: it is a method of a separator whose
    module imports the whole package and needs a loaded model config).

    As described in its source: step ``chunk // num_overlap``; chunk starts 0, step, ...
    while a chunk ends before the signal, then one chunk aligned to the end; each chunk run
    alone (batch of 1); its output weighted by a symmetric Hamming window of ``chunk``
    samples truncated to the output's length; the sum divided by the summed weights (clamped
    to 1e-10). ``mix`` ``(C, T)`` -> ``(S, C, T)``.
    """
    step = chunk // num_overlap
    length = mix.shape[-1]
    starts: list[int] = []
    offset = 0
    while offset < length:
        if offset + chunk >= length:
            tail = max(length - chunk, 0)
            if not starts or starts[-1] != tail:
                starts.append(tail)
            break
        starts.append(offset)
        offset += step
    window = torch.tensor(hamming(chunk), dtype=torch.float32)
    result: Tensor | None = None
    counter = torch.zeros(mix.shape)
    with torch.no_grad():
        for s in starts:
            part = mix[:, s : s + chunk]
            out = ref(part[None])[0]
            if out.dim() == 2:  # one stem: (C, t)
                out = out[None]
            if result is None:
                result = torch.zeros(out.shape[0], *mix.shape)
            n = min(part.shape[-1], out.shape[-1], chunk)
            result[..., s : s + n] += out[..., :n] * window[:n]
            counter[..., s : s + n] += window[:n]
    assert result is not None
    return result / counter.clamp(min=1e-10)

"""Build tiny demucs reference models (demucs' own classes) and write them in the layouts demucs
publishes: Hub repos (``NAME.yaml`` + ``SIG.safetensors`` with klass/args/kwargs metadata) in
a huggingface_hub cache, and legacy ``.th`` pickles."""

from __future__ import annotations

import hashlib
import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

STEMS4 = ["drums", "bass", "other", "vocals"]
STEMS6 = [*STEMS4, "guitar", "piano"]
RATE = 44100
SEGMENT = Fraction(1, 4)  # 11025 samples


def tiny_kwargs(sources: list[str] = STEMS4, **over: Any) -> dict[str, Any]:
    kw: dict[str, Any] = dict(
        sources=sources,
        channels=8,
        depth=2,
        nfft=512,
        t_layers=2,
        t_heads=2,
        dconv_mode=3,
        bottom_channels=16,
        segment=SEGMENT,
        samplerate=RATE,
    )
    kw.update(over)
    return kw


def make_htdemucs(seed: int, **kwargs: Any) -> torch.nn.Module:
    """demucs' HTDemucs with random (non-trivial) weights, in eval mode."""
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    model = HTDemucs(**tiny_kwargs(**kwargs))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def tiny_hdemucs_kwargs(sources: list[str] = STEMS4, **over: Any) -> dict[str, Any]:
    """A tiny v3 HDemucs: nfft 256 gives 3 frequency layers (hop 64 = 4**3, as the branches
    need), the merge layer at index 2 with a norm (norm_starts=2: torchaudio's port builds an
    unused one there), and a time layer at index 4 whose DConv has BLSTM + local attention."""
    kw: dict[str, Any] = dict(
        sources=sources,
        channels=8,
        depth=5,
        nfft=256,
        norm_starts=2,
        segment=SEGMENT,
        samplerate=RATE,
    )
    kw.update(over)
    return kw


def make_hdemucs(seed: int, **kwargs: Any) -> torch.nn.Module:
    """demucs' v3 HDemucs with random (non-trivial) weights, in eval mode."""
    from demucs.hdemucs import HDemucs

    torch.manual_seed(seed)
    model = HDemucs(**tiny_hdemucs_kwargs(**kwargs))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _encode(value: Any) -> Any:
    if isinstance(value, Fraction):
        return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def export_safetensors(
    model: torch.nn.Module,
    path: Path,
    *,
    klass: str | None = None,
    extra: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` as demucs 4.1's Hub export does: the state dict plus metadata
    ``klass``, ``args``, ``kwargs`` (JSON, fractions encoded)."""
    from safetensors.torch import save_file

    args, kwargs = model._init_args_kwargs
    cls = type(model)
    meta = {
        "klass": klass or f"{cls.__module__}.{cls.__name__}",
        "args": json.dumps(_encode(list(args))),
        "kwargs": json.dumps(_encode(dict(kwargs))),
        **(extra or {}),
    }
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=meta)
    return path


def bag_yaml(
    name: str,
    sigs: list[str],
    weights: list[list[float]] | None = None,
    segment: float | None = None,
) -> str:
    text = f"models: {sigs!r}\n"
    if weights is not None:
        text += "weights: [\n" + "".join(f"  {w!r},\n" for w in weights) + "]\n"
    if segment is not None:
        text += f"segment: {segment!r}\n"
    return text


def write_hub_repo(
    cache: Path, repo_id: str, files: dict[str, bytes], sha: str | None = None
) -> Path:
    """Put ``files`` into a huggingface_hub cache as it lays them out: blobs named by content
    hash, ``snapshots/<sha>/<name>`` symlinks, ``refs/main``. Returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    sha = sha or hashlib.sha1(repo_id.encode()).hexdigest()
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / name
        if link.exists() or link.is_symlink():
            link.unlink()
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs" / "main").write_text(sha)
    return snap


def publish(
    cache: Path,
    tmp: Path,
    repo_id: str,
    name: str,
    models: list[torch.nn.Module],
    weights: list[list[float]] | None = None,
    segment: float | None = None,
) -> list[str]:
    """Export ``models`` as the demucs bag ``name`` in Hub repo ``repo_id``; returns the
    signatures."""
    files: dict[str, bytes] = {}
    sigs = []
    for i, m in enumerate(models):
        sig = hashlib.sha1(f"{repo_id}{i}".encode()).hexdigest()[:8]
        path = export_safetensors(m, tmp / f"{sig}.safetensors")
        files[f"{sig}.safetensors"] = path.read_bytes()
        sigs.append(sig)
    files[f"{name}.yaml"] = bag_yaml(name, sigs, weights, segment).encode()
    write_hub_repo(cache, repo_id, files)
    return sigs


def reference_separate(
    models: list[torch.nn.Module],
    mix: torch.Tensor,
    *,
    weights: list[list[float]] | None = None,
    overlap: float = 0.25,
    bag_segment: float | None = None,
    segment: float | None = None,
) -> torch.Tensor:
    """demucs' own path: ``Separator`` normalisation + ``apply_model(split=True, shifts=0)``.
    ``bag_segment`` is the bag YAML's ``segment``, ``segment`` apply_model's (``--segment``).
    ``mix`` is ``(C, T)``; returns ``(S, C, T)``."""
    import copy

    from demucs.apply import BagOfModels, apply_model

    if bag_segment is not None:  # BagOfModels sets it on the models in place
        models = [copy.deepcopy(m) for m in models]
    bag = BagOfModels(models, weights, segment=bag_segment)
    ref = mix.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    with torch.no_grad():
        out = apply_model(
            bag,
            ((mix - mean) / std)[None],
            shifts=0,
            split=True,
            overlap=overlap,
            segment=segment,
        )
    return out[0] * std + mean

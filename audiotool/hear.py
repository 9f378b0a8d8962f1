"""HEAR-style Python API (hearbenchmark.com/hear-api) over audiotool embedders.

    import audiotool.hear as hear
    model = hear.load_model("embed-small")          # any audiotool spec of an embed model
    scene = hear.get_scene_embeddings(audio, model)  # audio: (n_sounds, n_samples) at 16 kHz
    frames, ms = hear.get_timestamp_embeddings(audio, model)

Timestamp embeddings are the encoder frames: one every 80 ms (the HEAR suggestion is <= 50 ms;
the audio branch's frame rate is 12.5 / s), timestamps at frame centres in milliseconds.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from audiotool.errors import ModelLoadError
from audiotool.hub import load_model as _load
from audiotool.models.audio_branch import AudioBranch, AudioBranchConfig
from audiotool.tasks.common import Runtime


class HearModel(nn.Module):
    """What :func:`load_model` returns: the network plus the HEAR attributes.

    An ``nn.Module`` (the HEAR API and heareval require one: heareval calls ``.to(device)``
    and rejects other types); ``forward`` is the wrapped embedder's.
    """

    def __init__(self, model: AudioBranch, config: AudioBranchConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.sample_rate: int = config.sample_rate
        self.scene_embedding_size: int = model.dim
        self.timestamp_embedding_size: int = model.dim

    def forward(self, wave: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, T)`` -> ``(segments (B, S, D), pooled (B, D))``."""
        return self.model(wave)


def load_model(model_file_path: str = "", *, device: str = "cpu") -> HearModel:
    """Load an embed model by audiotool spec (``""`` = the zoo's default)."""
    loaded = _load(model_file_path or None, task="embed", device=device)
    if not isinstance(loaded.model, AudioBranch) or not isinstance(
        loaded.config, AudioBranchConfig
    ):
        raise ModelLoadError(
            f"{model_file_path or 'the default embed model'} is not an audio-branch embedder"
        )
    return HearModel(loaded.model, loaded.config).eval()


def _runtime(model: HearModel) -> Runtime:
    dev = next(model.model.parameters()).device
    return Runtime(device=dev, dtype=None, batch_size=8, seed=0)


def get_timestamp_embeddings(audio: Tensor, model: HearModel) -> tuple[Tensor, Tensor]:
    """``(n, samples)`` -> embeddings ``(n, T, D)`` and timestamps in ms ``(n, T)``."""
    from audiotool.tasks.embed import embed_tensor

    outs = [
        embed_tensor(model.model, model.config, a[None], model.sample_rate, runtime=_runtime(model))
        for a in audio
    ]
    n_frames = max(o.frames.shape[0] for o in outs)
    emb = torch.zeros(len(outs), n_frames, model.timestamp_embedding_size)
    for i, o in enumerate(outs):
        emb[i, : o.frames.shape[0]] = torch.from_numpy(o.frames)
    step_ms = outs[0].frame_seconds * 1000 if outs else 80.0
    ts = (torch.arange(n_frames, dtype=torch.float32) + 0.5) * step_ms
    return emb, ts.expand(len(outs), -1).clone()


def get_scene_embeddings(audio: Tensor, model: HearModel) -> Tensor:
    """``(n, samples)`` -> ``(n, D)`` pooled clip embeddings."""
    from audiotool.tasks.embed import embed_tensor

    return torch.stack(
        [
            torch.from_numpy(
                embed_tensor(
                    model.model, model.config, a[None], model.sample_rate, runtime=_runtime(model)
                ).pooled
            )
            for a in audio
        ]
    )

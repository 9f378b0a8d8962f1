"""The audio branch (seed 002): log-mel -> subsampling -> Conformer -> segment pooling.

Legend: ``B`` batch, ``T`` samples (16 kHz), ``M`` mel bins (80), ``N`` mel frames (100/s),
``F`` encoder frames (N / 8 = 12.5/s), ``D`` model dim, ``S`` segments.

Gulati et al. 2020 ("Conformer: Convolution-augmented Transformer for Speech Recognition") as
``torchaudio.models.Conformer``, behind a FastConformer-style 8x convolutional subsampling
(Rekesh et al. 2023). :class:`SegmentAttentionPooling` turns the frame sequence into ``S``
temporal segment features and a pooled clip embedding.

Long files: :meth:`AudioBranch.frame_model` maps audio chunks to frames so the overlap-add
engine produces the whole file's frames; pooling then runs ONCE over all of them (no random
crops). Each encoder frame covers 1280 samples, so chunk and hop lengths must be multiples of
1280 samples (0.08 s).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiotool.engine.batching import per_item
from audiotool.errors import ConfigError
from audiotool.features import LogMel, frame_mask, sinusoidal_positions
from audiotool.models._config import ModelFamily
from audiotool.models.configs import AudioBranchConfig, PoolingType


class Subsampling(nn.Module):
    """Three stride-2 3x3 convs over (time, mel): ``(B, N, M)`` -> ``(B, ceil(N/8), D)``.

    With ``lengths`` (valid mel frames ``(B,)``) each stage's output is zeroed past the item's
    own length, which is exactly the zero padding a lone clip gets from the convolutions: a
    padded batch then gives the same valid frames as the clips one by one.
    """

    def __init__(self, *, n_mels: int, channels: int, dim: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.SiLU(),
        )
        freq = n_mels
        for _ in range(3):
            freq = (freq - 1) // 2 + 1
        self.out = nn.Linear(channels * freq, dim)

    @staticmethod
    def lengths(n: Tensor) -> Tensor:
        for _ in range(3):
            n = torch.div(n - 1, 2, rounding_mode="floor") + 1
        return n

    def forward(self, mel: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``(B, N, M)`` -> ``(B, ceil(N / 8), D)``."""
        h = mel[:, None]  # (B, 1, N, M)
        if lengths is None and not torch.is_grad_enabled() and h.shape[0] > 1:
            # at inference one item at a time: oneDNN picks another convolution algorithm for
            # another batch size, and a clip's frames would change in the last bits with the
            # clips batched beside it (--batch-size, packed files); the rest of the encoder is
            # row-independent, so this makes its output batch-invariant on the CPU
            h = per_item(self.convs, h)
        elif lengths is None:
            h = self.convs(h)
        else:
            n = lengths
            h = h * frame_mask(n, h.shape[2])[:, None, :, None].to(h.dtype)
            for i in range(0, len(self.convs), 2):
                h = self.convs[i + 1](self.convs[i](h))
                n = torch.div(n - 1, 2, rounding_mode="floor") + 1
                h = h * frame_mask(n, h.shape[2])[:, None, :, None].to(h.dtype)
        b, c, f, m = h.shape
        return self.out(h.permute(0, 2, 1, 3).reshape(b, f, c * m))


class SegmentAttentionPooling(nn.Module):
    """Pool ``(B, F, D)`` frames into ``S`` temporal segments ``(B, S, D)`` (seed 002).

    The valid frames of each item are split into ``S`` equal consecutive segments (frame ``f`` of
    ``L`` belongs to segment ``floor(f S / L)``); each segment is pooled by

    - ``attention``: a learnable query per segment attends (multi-head) to its frames;
    - ``max`` / ``avg``: max / mean over its frames;
    - ``learnable``: softmax-weighted mean with weights from a learned per-frame score.

    With ``temporal_encoding`` a sinusoidal encoding of the segment index is added to the
    result. Segments of clips shorter than ``S`` frames reuse the nearest frame.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_segments: int = 8,
        pooling: PoolingType = "attention",
        num_heads: int = 4,
        temporal_encoding: bool = True,
    ) -> None:
        super().__init__()
        if pooling not in ("attention", "max", "avg", "learnable"):
            raise ConfigError(
                f"pooling must be one of attention/max/avg/learnable, got {pooling!r}"
            )
        self.dim, self.num_segments, self.pooling = dim, num_segments, pooling
        self.temporal_encoding = temporal_encoding
        if pooling == "attention":
            self.queries = nn.Parameter(torch.randn(num_segments, dim) * dim**-0.5)
            self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        elif pooling == "learnable":
            self.score = nn.Sequential(nn.Linear(dim, dim // 2), nn.Tanh(), nn.Linear(dim // 2, 1))

    def segment_ids(self, frames: int, lengths: Tensor) -> Tensor:
        """``(B, F)`` segment index of every frame (-1 for padding)."""
        f = torch.arange(frames, device=lengths.device)[None, :]
        seg = torch.div(f * self.num_segments, lengths.clamp(min=1)[:, None], rounding_mode="floor")
        return torch.where(f < lengths[:, None], seg, torch.full_like(seg, -1))

    def forward(self, frames: Tensor, lengths: Tensor | None = None) -> Tensor:
        b, n, d = frames.shape
        if lengths is None:
            lengths = torch.full((b,), n, device=frames.device, dtype=torch.long)
        ids = self.segment_ids(n, lengths)  # (B, F)
        s = self.num_segments
        member = ids[:, None, :] == torch.arange(s, device=frames.device)[None, :, None]
        # short clips: an empty segment takes the frame nearest to its centre
        empty = ~member.any(-1)  # (B, S)
        if bool(empty.any()):
            centre = (torch.arange(s, device=frames.device)[None] + 0.5) * lengths[:, None] / s
            nearest = centre.floor().long().clamp(max=n - 1)
            fill = torch.zeros_like(member)
            fill.scatter_(2, nearest[..., None], True)
            member = torch.where(empty[..., None], fill, member)
        if self.pooling == "avg":
            w = member.float()
            out = torch.einsum("bsf,bfd->bsd", w, frames) / w.sum(-1, keepdim=True)
        elif self.pooling == "max":
            masked = frames[:, None].masked_fill(~member[..., None], float("-inf"))
            out = masked.max(dim=2).values
        elif self.pooling == "learnable":
            score = self.score(frames).squeeze(-1)[:, None, :].expand(b, s, n)
            w = torch.softmax(score.masked_fill(~member, float("-inf")), dim=-1)
            out = torch.einsum("bsf,bfd->bsd", w, frames)
        else:
            q = self.queries[None].expand(b, -1, -1)
            mask = ~member  # True = not allowed
            heads = self.attn.num_heads
            out, _ = self.attn(
                q,
                frames,
                frames,
                attn_mask=mask.repeat_interleave(heads, dim=0),
                need_weights=False,
            )
        if self.temporal_encoding:
            out = out + sinusoidal_positions(s, d, device=frames.device)[None]
        return out


class AudioBranch(nn.Module):
    """Clip embedder: ``(B, T)`` 16 kHz audio -> segment features ``(B, S, D)`` + pooled
    ``(B, D)``.

    Args:
        sample_rate, n_fft, win_length, hop, n_mels: the log-mel front-end.
        subsampling_channels: conv channels of the 8x subsampling.
        d_model / num_heads / ffn_dim / num_layers / conv_kernel: the Conformer.
        num_segments / pooling / temporal_encoding: :class:`SegmentAttentionPooling`.
        dropout: Conformer dropout.
        normalize: per-utterance mel normalisation (see :class:`LogMel`).

    Padding: ``lengths`` masks the subsampling stages, the attention keys and the input of every
    Conformer depthwise convolution (torchaudio masks only the attention), so a padded batch
    equals the clips one by one in eval mode. (In train mode BatchNorm statistics of the
    convolution module still see padded frames.)
    """

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        n_fft: int = 512,
        win_length: int = 400,
        hop: int = 160,
        n_mels: int = 80,
        subsampling_channels: int = 256,
        d_model: int = 512,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        num_layers: int = 4,
        conv_kernel: int = 31,
        num_segments: int = 8,
        pooling: PoolingType = "attention",
        temporal_encoding: bool = True,
        dropout: float = 0.1,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        from torchaudio.models import Conformer

        self.hop = hop
        self.mel = LogMel(
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=win_length,
            hop=hop,
            n_mels=n_mels,
            normalize=normalize,
        )
        self.subsampling = Subsampling(n_mels=n_mels, channels=subsampling_channels, dim=d_model)
        self.conformer = Conformer(
            input_dim=d_model,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
            num_layers=num_layers,
            depthwise_conv_kernel_size=conv_kernel,
            dropout=dropout,
        )
        self.norm = nn.LayerNorm(d_model)
        self.pooling = SegmentAttentionPooling(
            dim=d_model,
            num_segments=num_segments,
            pooling=pooling,
            num_heads=num_heads,
            temporal_encoding=temporal_encoding,
        )
        self.dim = d_model

    @property
    def frame_samples(self) -> int:
        """Input samples per encoder frame (8 mel hops)."""
        return 8 * self.hop

    def encode_frames(self, wave: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(B, T)`` (+ valid sample counts ``(B,)``) -> frames ``(B, F, D)`` (12.5 / s at the
        default hop) and valid frame counts ``(B,)``; frames past an item's count are padding."""
        b = wave.shape[0]
        n_mel = max(wave.shape[-1] // self.hop, 1)
        mel_len = (
            torch.full((b,), n_mel, device=wave.device, dtype=torch.long)
            if lengths is None
            else torch.div(lengths.to(wave.device).long(), self.hop, rounding_mode="floor").clamp(
                min=1, max=n_mel
            )
        )
        ragged = bool((mel_len < n_mel).any())
        mel = self.mel(wave, mel_len if ragged else None)
        h = self.subsampling(mel, mel_len if ragged else None)
        frame_len = Subsampling.lengths(mel_len).clamp(max=h.shape[1])
        if ragged:
            h = self._masked_conformer(h, frame_len)
        else:
            h, _ = self.conformer(h, frame_len)
        return self.norm(h), frame_len

    def _masked_conformer(self, h: Tensor, lengths: Tensor) -> Tensor:
        """The Conformer with every depthwise conv's input zeroed on padded frames."""
        keep = frame_mask(lengths, h.shape[1])[:, None, :].to(h.dtype)  # (B, 1, F)

        def zero_padding(_: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            return (args[0] * keep,)

        handles = [
            layer.conv_module.sequential[2].register_forward_pre_hook(zero_padding)
            for layer in self.conformer.conformer_layers
        ]
        try:
            out, _ = self.conformer(h, lengths)
        finally:
            for handle in handles:
                handle.remove()
        return out

    def pool(self, frames: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Frames ``(B, F, D)`` -> segments ``(B, S, D)`` and pooled ``(B, D)``."""
        segments = self.pooling(frames, lengths)
        return segments, segments.mean(dim=1)

    def forward(self, wave: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(B, T)`` (+ valid sample counts ``(B,)``) -> ``(segments (B, S, D), pooled (B, D))``.

        Items shorter than ``T`` are padding past their ``lengths``."""
        frames, frame_len = self.encode_frames(wave, lengths)
        return self.pool(frames, frame_len)

    def frame_model(self, chunk: Tensor) -> Tensor:
        """Engine adapter: audio chunks ``(N, 1, L)`` -> frames ``(N, D, L / 1280)``."""
        frames, _ = self.encode_frames(chunk[:, 0])
        return frames.transpose(1, 2)[..., : chunk.shape[-1] // self.frame_samples]


def nt_xent(a: Tensor, b: Tensor, temperature: float = 0.1) -> Tensor:
    """NT-Xent / InfoNCE between two views (Chen et al. 2020, SimCLR): ``a``, ``b`` ``(B, D)``;
    the positive of item i is its other view, the other 2B - 2 embeddings are negatives."""
    z = F.normalize(torch.cat([a, b]), dim=-1)
    sim = z @ z.t() / temperature
    n = a.shape[0]
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def supcon(z: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, eq. 2 "L_out"): ``z`` ``(N, D)``,
    ``labels`` ``(N,)``; every other embedding with the same label is a positive."""
    z = F.normalize(z, dim=-1)
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = (z @ z.t() / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = pos.sum(1)
    keep = counts > 0
    if not bool(keep.any()):
        return z.sum() * 0.0
    mean_pos = log_prob.masked_fill(~pos, 0.0).sum(1)[keep] / counts[keep]
    return -mean_pos.mean()


def build_model(cfg: AudioBranchConfig) -> AudioBranch:
    """The :class:`AudioBranch` described by ``cfg``."""
    return AudioBranch(
        sample_rate=cfg.sample_rate,
        n_fft=cfg.n_fft,
        win_length=cfg.win_length,
        hop=cfg.hop,
        n_mels=cfg.n_mels,
        subsampling_channels=cfg.subsampling_channels,
        d_model=cfg.d_model,
        num_heads=cfg.num_heads,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        conv_kernel=cfg.conv_kernel,
        num_segments=cfg.num_segments,
        pooling=cfg.pooling,
        temporal_encoding=cfg.temporal_encoding,
        dropout=cfg.dropout,
        normalize=cfg.normalize,
    )


PRESETS = {
    "light": lambda: AudioBranchConfig(num_layers=4),
    "full": lambda: AudioBranchConfig(num_layers=17),
    "small": lambda: AudioBranchConfig(
        subsampling_channels=64, d_model=192, num_heads=4, ffn_dim=768, num_layers=4
    ),
    "tiny": lambda: AudioBranchConfig(
        subsampling_channels=8,
        d_model=32,
        num_heads=2,
        ffn_dim=64,
        num_layers=1,
        conv_kernel=7,
        chunk_seconds=2.56,
        hop_seconds=1.28,
    ),
}

FAMILY: ModelFamily[AudioBranchConfig] = ModelFamily(
    config_cls=AudioBranchConfig,
    build=build_model,
    presets=PRESETS,
)

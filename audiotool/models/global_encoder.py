"""Global audio encoder (seeds 000/001): a whole-file summary for the diffusion UNet.

Legend: ``B`` batch, ``M`` mel bins, ``N`` mel frames, ``N'`` encoder frames (N / 8), ``D``
context dim (64), ``H`` hidden size (128).

A 3-layer strided CNN reduces a mel ``(B, 1, M, N)`` by 8 in both axes; the frequency axis is
averaged away; a 2-layer Transformer encoder (4 heads, hidden 128) with sinusoidal positions
computed for the actual length (so any duration works) models the whole file; the output is a
sequence context ``(B, N', D)`` and a global vector ``(B, D)`` (masked mean). It runs ONCE per
file; every chunk and every diffusion step reuses its output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiotool.engine.batching import per_row
from audiotool.features import sinusoidal_positions


class ChannelNorm(nn.Module):
    """LayerNorm over channels at every (frequency, time) position of ``(B, C, M, N)``.

    Unlike GroupNorm it does not pool statistics over time, so padding a file does not change
    the features of its real frames (batch == one by one, up to the conv edge).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GlobalAudioEncoder(nn.Module):
    """CNN + Transformer encoder of a whole file's mel.

    Args:
        in_channels: mel "image" channels (1).
        hidden: CNN output / transformer width (128).
        context_dim: output dim D (64).
        num_layers: transformer layers (2).
        num_heads: attention heads (4).
        dropout: transformer dropout.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        hidden: int = 128,
        context_dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        chans = (in_channels, hidden // 4, hidden // 2, hidden)
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), ChannelNorm(cout), nn.GELU()]
        self.cnn = nn.Sequential(*layers)
        layer = nn.TransformerEncoderLayer(
            hidden,
            num_heads,
            dim_feedforward=2 * hidden,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.seq_proj = nn.Linear(hidden, context_dim)
        self.global_proj = nn.Linear(hidden, context_dim)
        self.hidden, self.context_dim = hidden, context_dim

    @staticmethod
    def output_lengths(lengths: Tensor) -> Tensor:
        """Encoder frames for ``lengths`` mel frames (three stride-2 convs, padding 1)."""
        out = lengths
        for _ in range(3):
            out = torch.div(out - 1, 2, rounding_mode="floor") + 1
        return out

    def forward(self, mel: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(B, 1, M, N)`` mel (and optional valid frame counts ``(B,)``) ->
        ``(global (B, D), sequence (B, N', D))``."""
        h = mel
        valid = None if lengths is None else lengths.to(mel.device)
        for i in range(0, len(self.cnn), 3):  # (conv, norm, act) x 3
            if valid is not None:  # zero the padding, as a lone file's conv padding is
                keep = torch.arange(h.shape[-1], device=h.device)[None, :] < valid[:, None]
                h = h * keep[:, None, None, :].to(h.dtype)
                valid = torch.div(valid - 1, 2, rounding_mode="floor") + 1
            h = self.cnn[i + 2](self.cnn[i + 1](self.cnn[i](h)))
        h = h.mean(dim=2).transpose(1, 2)  # (B, N', H)
        n = h.shape[1]
        h = h + sinusoidal_positions(n, self.hidden, device=h.device, dtype=h.dtype)
        mask = None
        if valid is not None:
            mask = torch.arange(n, device=h.device)[None, :] >= valid[:, None]  # True = pad
        h = self.norm(self.transformer(h, src_key_padding_mask=mask))
        if mask is None:
            pooled = h.mean(dim=1)
        else:
            keep = (~mask).float()[..., None]
            pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.global_proj(pooled), self.seq_proj(h)


class GlobalCrossAttention(nn.Module):
    """Cross-attention from spatial tokens to global-context tokens, zero-initialised output.

    The context tokens are the global vector followed by the sequence context, projected to the
    transformer's width. ``to_out`` starts at zero, so a model imported from AudioSR behaves
    exactly as before until this layer is trained.
    """

    def __init__(self, *, dim: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj_context = nn.Linear(context_dim, dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)
        self.num_heads = num_heads

    def forward(self, x: Tensor, global_vec: Tensor, global_seq: Tensor | None) -> Tensor:
        """``x`` ``(B, L, C)``, context ``(B|1, D)`` + ``(B|1, N', D)`` -> ``(B, L, C)``."""
        tokens = global_vec[:, None, :]
        if global_seq is not None:
            tokens = torch.cat([tokens, global_seq], dim=1)

        def keys_values(tok: Tensor) -> Tensor:
            ctx = self.proj_context(tok)
            return torch.cat([self.to_k(ctx), self.to_v(ctx)], dim=-1)

        kv = per_row(keys_values, tokens.to(x.dtype))
        if kv.shape[0] == 1 and x.shape[0] != 1:
            kv = kv.expand(x.shape[0], -1, -1)
        b, length, c = x.shape
        h = self.num_heads
        q = self.to_q(self.norm(x)).view(b, length, h, c // h).transpose(1, 2)
        k = kv[..., :c].reshape(b, -1, h, c // h).transpose(1, 2)
        v = kv[..., c:].reshape(b, -1, h, c // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, length, c)
        return x + self.to_out(out)

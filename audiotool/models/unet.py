"""The latent-diffusion UNet (AudioSR / LDM ``openaimodel.UNetModel`` layout) with optional
global conditioning (seed 000).

Legend: ``B`` batch, ``C`` channels, ``T`` latent frames (time), ``F`` latent bins (frequency),
``L = T*F`` tokens, ``D`` global context dim.

Parameter names follow AudioSR's ``model.diffusion_model.*`` so its weights load strictly
(``shared/reference/audiosr.md``, "UNet"). With ``use_global_encoder=True`` every
SpatialTransformer becomes a :class:`GlobalConditionedSpatialTransformer`, which adds
cross-attention to the global encoder's output with a zero-initialised output projection, and a
:class:`~audiotool.models.global_encoder.GlobalAudioEncoder` is built in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiotool.engine.batching import per_row
from audiotool.models.global_encoder import GlobalAudioEncoder, GlobalCrossAttention


def _groups(channels: int) -> int:
    """32 groups as in LDM; fewer when ``channels`` is not a multiple of 32 (small presets)."""
    return math.gcd(32, channels)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (LDM's GroupNorm32)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[cos, sin]`` of timesteps ``(B,)`` -> ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """GN-SiLU-conv, + time embedding, GN-SiLU-dropout-conv, residual (1x1 when C changes)."""

    def __init__(
        self, *, channels: int, emb_channels: int, out_channels: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(_groups(channels), channels),
            nn.SiLU(),
            nn.Conv2d(channels, out_channels, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(_groups(out_channels), out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection: nn.Module = (
            nn.Conv2d(channels, out_channels, 1) if channels != out_channels else nn.Identity()
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x) + per_row(self.emb_layers, emb).type(x.dtype)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class CrossAttention(nn.Module):
    """Multi-head attention with ``to_q/to_k/to_v`` (no bias) and ``to_out.0``."""

    def __init__(self, *, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        ctx = x if context is None else context
        b, n, c = x.shape
        h = self.heads
        q = self.to_q(x).view(b, n, h, c // h).transpose(1, 2)
        k = self.to_k(ctx).view(b, -1, h, c // h).transpose(1, 2)
        v = self.to_v(ctx).view(b, -1, h, c // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, c))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """``x += attn1(norm1 x); x += attn2(norm2 x); x += ff(norm3 x)`` (attn2 is self-attention
    when there is no cross-attention context, as in AudioSR)."""

    def __init__(self, *, dim: int, heads: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim=dim, heads=heads)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim=dim, heads=heads)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x))
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GN -> 1x1 proj_in -> transformer blocks over (T F) tokens -> 1x1 proj_out, residual."""

    def __init__(self, *, channels: int, heads: int, depth: int = 1) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(dim=channels, heads=heads) for _ in range(depth)
        )
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def _tokens(self, x: Tensor) -> Tensor:
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, T*F, C)
        for block in self.transformer_blocks:
            h = block(h)
        return h

    def forward(self, x: Tensor, context: Mapping[str, Tensor] | None = None) -> Tensor:
        b, c, t, f = x.shape
        h = self._tokens(x).transpose(1, 2).reshape(b, c, t, f)
        return x + self.proj_out(h)


class GlobalConditionedSpatialTransformer(SpatialTransformer):
    """A SpatialTransformer whose tokens also attend to the file's global context (seed 000).

    The added :class:`GlobalCrossAttention` runs after the transformer blocks and before
    ``proj_out``; its output projection is zero at initialisation.
    """

    def __init__(self, *, channels: int, heads: int, depth: int = 1, context_dim: int) -> None:
        super().__init__(channels=channels, heads=heads, depth=depth)
        self.global_attn = GlobalCrossAttention(
            dim=channels, context_dim=context_dim, num_heads=heads
        )

    def forward(self, x: Tensor, context: Mapping[str, Tensor] | None = None) -> Tensor:
        b, c, t, f = x.shape
        h = self._tokens(x)
        if context is not None and "global" in context:
            h = self.global_attn(h, context["global"], context.get("global_seq"))
        return x + self.proj_out(h.transpose(1, 2).reshape(b, c, t, f))


class TimestepSequential(nn.Sequential):
    """Applies each layer with the arguments it understands."""

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        emb: Tensor,
        context: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """Diffusion UNet over latents ``(B, C_in, T, F)`` -> ``(B, C_out, T, F)``.

    ``T`` and ``F`` must be multiples of ``2 ** (len(channel_mult) - 1)``.

    Args:
        in_channels / out_channels: latent (+ concatenated condition) channels.
        model_channels: base width; ``channel_mult`` multiplies it per level.
        num_res_blocks: ResBlocks per level.
        attention_resolutions: downsampling factors with SpatialTransformers.
        num_head_channels: channels per attention head.
        transformer_depth: blocks per SpatialTransformer.
        extra_sa_layer: two SpatialTransformers per position (AudioSR) instead of one.
        dropout: ResBlock dropout.
        use_global_encoder: build a GlobalAudioEncoder and use global-conditioned transformers.
        global_context_dim / global_hidden / global_mel_bins: its sizes; ``global_mel_pool``
            averages mel bins before the encoder (cheaper on 256 bins).
    """

    def __init__(
        self,
        *,
        in_channels: int = 32,
        out_channels: int = 16,
        model_channels: int = 128,
        channel_mult: tuple[int, ...] = (1, 2, 3, 5),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (8, 4, 2),
        num_head_channels: int = 32,
        transformer_depth: int = 1,
        extra_sa_layer: bool = True,
        dropout: float = 0.0,
        use_global_encoder: bool = False,
        global_context_dim: int = 64,
        global_hidden: int = 128,
        global_mel_pool: int = 4,
    ) -> None:
        super().__init__()
        self.model_channels = model_channels
        self.use_global_encoder = use_global_encoder
        self.global_mel_pool = global_mel_pool
        self.levels = len(channel_mult)
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        n_st = 2 if extra_sa_layer else 1

        def transformers(ch: int) -> list[nn.Module]:
            heads = max(1, ch // num_head_channels)
            if use_global_encoder:
                return [
                    GlobalConditionedSpatialTransformer(
                        channels=ch,
                        heads=heads,
                        depth=transformer_depth,
                        context_dim=global_context_dim,
                    )
                    for _ in range(n_st)
                ]
            return [
                SpatialTransformer(channels=ch, heads=heads, depth=transformer_depth)
                for _ in range(n_st)
            ]

        self.input_blocks = nn.ModuleList(
            [TimestepSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))]
        )
        chans = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [
                    ResBlock(
                        channels=ch,
                        emb_channels=emb_dim,
                        out_channels=model_channels * mult,
                        dropout=dropout,
                    )
                ]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers += transformers(ch)
                self.input_blocks.append(TimestepSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(Downsample(ch)))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepSequential(
            ResBlock(channels=ch, emb_channels=emb_dim, out_channels=ch, dropout=dropout),
            *transformers(ch),
            ResBlock(channels=ch, emb_channels=emb_dim, out_channels=ch, dropout=dropout),
        )
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                skip = chans.pop()
                layers = [
                    ResBlock(
                        channels=ch + skip,
                        emb_channels=emb_dim,
                        out_channels=model_channels * mult,
                        dropout=dropout,
                    )
                ]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers += transformers(ch)
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))
        self.out = nn.Sequential(
            GroupNorm32(_groups(ch), ch),
            nn.SiLU(),
            nn.Conv2d(model_channels, out_channels, 3, padding=1),
        )
        if use_global_encoder:
            self.global_encoder = GlobalAudioEncoder(
                hidden=global_hidden, context_dim=global_context_dim
            )

    @property
    def time_multiple(self) -> int:
        """``T`` and ``F`` must be multiples of this."""
        return 2 ** (self.levels - 1)

    def encode_global(self, mel: Tensor, lengths: Tensor | None = None) -> dict[str, Tensor]:
        """Whole-file mel ``(B, N, M)`` -> ``{"global": (B, D), "global_seq": (B, N', D)}``.

        Compute it once per file and pass it to every :meth:`forward` call.
        """
        if not self.use_global_encoder:
            return {}
        x = mel.transpose(1, 2)[:, None]  # (B, 1, M, N)
        if self.global_mel_pool > 1:
            x = F.avg_pool2d(x, (self.global_mel_pool, 1))
        g, seq = self.global_encoder(x, lengths)
        return {"global": g, "global_seq": seq}

    def forward(
        self, x: Tensor, timesteps: Tensor, *, context: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        """``(B, C_in, T, F)`` + timesteps ``(B,)`` (+ context) -> ``(B, C_out, T, F)``."""
        emb = per_row(
            self.time_embed, timestep_embedding(timesteps, self.model_channels).to(x.dtype)
        )
        ctx = context if self.use_global_encoder else None
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, ctx)
            hs.append(h)
        h = self.middle_block(h, emb, ctx)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, ctx)
        return self.out(h)

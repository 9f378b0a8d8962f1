"""Audio representation autoencoder (seed 003): a frozen encoder and a trained decoder.

Legend: ``B`` batch, ``T`` samples (16 kHz), ``L`` latent frames, ``D`` latent dim,
``N`` mel frames (100/s), ``M`` mel bins.

Zheng et al. 2025 ("Diffusion Transformers with Representation Autoencoders") pair a frozen
representation encoder with a trained decoder; seed 003 carries the idea to audio. Encoders:

- ``wav2vec2`` / ``hubert``: torchaudio's model definition (50 latent frames/s), loadable from
  Hugging Face ``transformers`` checkpoints (:mod:`audiotool.importers.hf_audio`);
- ``spectrogram_vit``: the log-mel as an image, cut into (16 mel x 4 frame) patches, a small ViT;
  the patches of one time step are concatenated into one latent frame (25/s);
- ``audio_branch``: our embedder's Conformer frames (12.5/s).

The latents are normalised with per-dimension statistics stored as buffers. The decoder
upsamples latent frames to mel frames (transposed conv) and refines them (conv + transformer
blocks) into a log-mel, which Griffin-Lim (no training) or HiFi-GAN turns into audio.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchaudio.models import Wav2Vec2Model

from audiotool.errors import ConfigError, InputError
from audiotool.features import AudioSRMel, sinusoidal_positions
from audiotool.losses import multi_resolution_stft_loss
from audiotool.models._config import ModelFamily
from audiotool.models.audio_branch import AudioBranch
from audiotool.models.audio_branch import build_model as build_branch
from audiotool.models.configs import EncoderKind, RAEConfig
from audiotool.models.vocoder import GriffinLimVocoder, HiFiGANGenerator


class SpectrogramViT(nn.Module):
    """Log-mel ``(B, N, M)`` -> latents ``(B, N / patch_t, D)`` through a ViT over patches."""

    def __init__(
        self,
        *,
        n_mels: int,
        patch_mel: int = 16,
        patch_t: int = 4,
        dim: int = 192,
        depth: int = 4,
        heads: int = 4,
        out_dim: int = 192,
    ) -> None:
        super().__init__()
        if n_mels % patch_mel:
            raise ConfigError(f"n_mels ({n_mels}) must be a multiple of patch_mel ({patch_mel})")
        self.patch_mel, self.patch_t = patch_mel, patch_t
        self.rows = n_mels // patch_mel
        self.embed = nn.Conv2d(1, dim, (patch_t, patch_mel), stride=(patch_t, patch_mel))
        self.row_pos = nn.Parameter(torch.zeros(self.rows, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out = nn.Linear(self.rows * dim, out_dim)
        self.dim = dim

    def forward(self, mel: Tensor) -> Tensor:
        b, n, _ = mel.shape
        n_t = n // self.patch_t
        x = self.embed(mel[:, None, : n_t * self.patch_t])  # (B, dim, n_t, rows)
        x = x.permute(0, 2, 3, 1) + self.row_pos  # (B, n_t, rows, dim)
        t_pos = sinusoidal_positions(n_t, self.dim, device=mel.device)[None, :, None]
        x = (x + t_pos).reshape(b, n_t * self.rows, self.dim)
        x = self.blocks(x).reshape(b, n_t, self.rows * self.dim)
        return self.out(x)


class MelDecoder(nn.Module):
    """Latents ``(B, L, D)`` -> log-mel ``(B, L * upsample, M)``."""

    def __init__(
        self,
        *,
        latent_dim: int,
        n_mels: int,
        dim: int = 256,
        upsample: int = 2,
        depth: int = 4,
        heads: int = 4,
    ) -> None:
        super().__init__()
        self.inp = nn.Linear(latent_dim, dim)
        self.up = (
            nn.ConvTranspose1d(dim, dim, 2 * upsample, stride=upsample, padding=upsample // 2)
            if upsample > 1
            else nn.Identity()
        )
        self.upsample = upsample
        self.convs = nn.Sequential(
            nn.Conv1d(dim, dim, 5, padding=2), nn.GELU(), nn.Conv1d(dim, dim, 5, padding=2)
        )
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_mels))
        self.dim = dim

    def forward(self, z: Tensor) -> Tensor:
        n = z.shape[1] * self.upsample
        h = self.inp(z).transpose(1, 2)
        h = self.up(h)[..., :n]
        h = h + self.convs(h)
        h = h.transpose(1, 2) + sinusoidal_positions(n, self.dim, device=z.device)[None]
        return self.out(self.blocks(h))


class AudioRAE(nn.Module):
    """Frozen encoder + trained decoder: ``(B, T)`` -> ``(B, T)`` (see the module docstring).

    Args:
        encoder: the frozen representation (any module ``(B, T) -> (B, L, D)`` via
            :meth:`encode_raw`; built by :func:`build_model`).
        encoder_kind: which of the supported encoders it is.
        latent_dim: D; frame_samples: input samples per latent frame.
        mel: the log-mel front-end that defines the decoder's target; vocoder: mel -> audio.
        decoder: :class:`MelDecoder`.
        wav2vec2_layer: for wav2vec2/HuBERT, which transformer layer's output (-1 = last).
    """

    latent_mean: Tensor
    latent_std: Tensor

    def __init__(
        self,
        *,
        encoder: nn.Module,
        encoder_kind: EncoderKind,
        latent_dim: int,
        frame_samples: int,
        mel: AudioSRMel,
        decoder: MelDecoder,
        vocoder: nn.Module,
        wav2vec2_layer: int = -1,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.encoder_kind = encoder_kind
        self.frame_samples = frame_samples
        self.mel = mel
        self.decoder = decoder
        self.vocoder = vocoder
        self.layer = wav2vec2_layer
        self.register_buffer("latent_mean", torch.zeros(latent_dim))
        self.register_buffer("latent_std", torch.ones(latent_dim))
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> AudioRAE:
        super().train(mode)
        self.encoder.eval()  # the representation stays frozen (no dropout, fixed norms)
        return self

    @property
    def min_samples(self) -> int:
        """Shortest input :meth:`encode` takes: one latent frame, enough for the mel's reflect
        padding and, for wav2vec2 / HuBERT, the conv extractor's receptive field (400 samples
        for the base models). :meth:`forward` pads shorter clips itself."""
        need = max(self.frame_samples, (self.mel.n_fft - self.mel.hop_length) // 2 + 1)
        if self.encoder_kind in ("wav2vec2", "hubert"):
            extractor = cast(Wav2Vec2Model, self.encoder).feature_extractor
            field = 1
            for conv in reversed([m for m in extractor.modules() if isinstance(m, nn.Conv1d)]):
                field = (field - 1) * int(conv.stride[0]) + int(conv.kernel_size[0])
            need = max(need, field)
        return need

    def encode_raw(self, wave: Tensor) -> Tensor:
        """Unnormalised latents ``(B, L, D)``, ``L = T // frame_samples``."""
        if wave.shape[-1] < self.min_samples:
            raise InputError(
                f"encode needs at least {self.min_samples} samples, got {wave.shape[-1]}",
                hint="pad the clip, or use the model's forward (it pads short clips)",
            )
        n = wave.shape[-1] // self.frame_samples
        with torch.no_grad():
            if self.encoder_kind in ("wav2vec2", "hubert"):
                w2v: Wav2Vec2Model = self.encoder
                feats, _ = w2v.extract_features(wave.float())
                z = feats[self.layer]
            elif self.encoder_kind == "spectrogram_vit":
                z = self.encoder(self.mel(wave))
            else:
                branch: AudioBranch = self.encoder  # type: ignore[assignment]
                z, _ = branch.encode_frames(wave)
        if z.shape[1] < n:
            z = F.pad(z.transpose(1, 2), (0, n - z.shape[1]), mode="replicate").transpose(1, 2)
        return z[:, :n]

    def encode(self, wave: Tensor) -> Tensor:
        """``(B, T)`` -> normalised latents ``(B, L, D)``."""
        return (self.encode_raw(wave) - self.latent_mean) / self.latent_std

    def decode_mel(self, latents: Tensor) -> Tensor:
        """Normalised latents ``(B, L, D)`` -> log-mel ``(B, N, M)``."""
        return self.decoder(latents)

    def vocode(self, mel: Tensor) -> Tensor:
        """Log-mel ``(B, N, M)`` -> ``(B, N * hop)``."""
        wave = self.vocoder(mel.transpose(1, 2))[:, 0]
        return wave[..., : mel.shape[1] * self.mel.hop_length]

    def forward(self, wave: Tensor) -> Tensor:
        """Round trip ``(B, T)`` -> ``(B, T)`` (padded to whole latent frames, then cropped)."""
        t = wave.shape[-1]
        # whole latent frames, and long enough for the STFTs (>= 2 FFT windows)
        target = max(t, 2 * self.mel.n_fft)
        target += (-target) % self.frame_samples
        pad = target - t
        x = F.pad(wave, (0, pad)) if pad else wave
        out = self.vocode(self.decode_mel(self.encode(x)))
        if out.shape[-1] < t:
            out = F.pad(out, (0, t - out.shape[-1]))
        return out[..., :t]

    @torch.no_grad()
    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        """Store the normalisation statistics (saved in the checkpoint)."""
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std.clamp(min=1e-5))


def compute_latent_stats(latents: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and std over every frame of ``(B, L, D)`` latents."""
    flat = latents.reshape(-1, latents.shape[-1]).double()
    return flat.mean(0).float(), flat.std(0).float()


def rae_loss(model: AudioRAE, wave: Tensor, *, stft_weight: float = 1.0) -> Tensor:
    """Decoder training loss for ``(B, T)`` clips (the encoder is frozen).

    L1 between the decoded and the true log-mel; with a HiFi-GAN vocoder also
    ``stft_weight`` x :func:`multi_resolution_stft_loss` on the vocoded waveform, which trains the
    vocoder jointly (Griffin-Lim has nothing to train). Adversarial terms (HiFi-GAN's
    discriminators) are the trainer's business.
    """
    target = model.mel(wave)
    z = model.encode(wave)
    pred = model.decode_mel(z)
    n = min(pred.shape[1], target.shape[1])
    loss = (pred[:, :n] - target[:, :n]).abs().mean()
    if isinstance(model.vocoder, HiFiGANGenerator) and stft_weight > 0:
        audio = model.vocode(pred)
        t = min(audio.shape[-1], wave.shape[-1])
        loss = loss + stft_weight * multi_resolution_stft_loss(
            wave[..., :t].float(), audio[..., :t]
        )
    return loss


# --------------------------------------------------------------------------- config + family


def _encoder(cfg: RAEConfig) -> tuple[nn.Module, int, int]:
    """(encoder, latent dim, samples per latent frame)."""
    if cfg.encoder in ("wav2vec2", "hubert"):
        from torchaudio.models import wav2vec2_model

        enc = wav2vec2_model(
            extractor_mode=cfg.w2v_extractor_mode,
            extractor_conv_layer_config=[tuple(c) for c in cfg.w2v_conv_layers],
            extractor_conv_bias=cfg.w2v_conv_bias,
            encoder_embed_dim=cfg.w2v_embed_dim,
            encoder_projection_dropout=0.0,
            encoder_pos_conv_kernel=cfg.w2v_pos_conv_kernel,
            encoder_pos_conv_groups=cfg.w2v_pos_conv_groups,
            encoder_num_layers=cfg.w2v_num_layers,
            encoder_num_heads=cfg.w2v_num_heads,
            encoder_attention_dropout=0.0,
            encoder_ff_interm_features=cfg.w2v_ff_dim,
            encoder_ff_interm_dropout=0.0,
            encoder_dropout=0.0,
            encoder_layer_norm_first=cfg.w2v_layer_norm_first,
            encoder_layer_drop=0.0,
            aux_num_out=None,
        )
        stride = 1
        for _, _, s in cfg.w2v_conv_layers:
            stride *= s
        return enc, cfg.w2v_embed_dim, stride
    if cfg.encoder == "spectrogram_vit":
        vit = SpectrogramViT(
            n_mels=cfg.n_mels,
            patch_mel=cfg.vit_patch_mel,
            patch_t=cfg.vit_patch_t,
            dim=cfg.vit_dim,
            depth=cfg.vit_depth,
            heads=cfg.vit_heads,
            out_dim=cfg.vit_out_dim,
        )
        return vit, cfg.vit_out_dim, cfg.hop * cfg.vit_patch_t
    if cfg.encoder == "audio_branch":
        from audiotool.models.audio_branch import AudioBranchConfig

        branch = build_branch(
            AudioBranchConfig(
                d_model=cfg.branch_d_model,
                num_layers=cfg.branch_num_layers,
                num_heads=cfg.branch_num_heads,
                ffn_dim=cfg.branch_ffn_dim,
                subsampling_channels=cfg.branch_subsampling_channels,
                dropout=0.0,
            )
        )
        return branch, cfg.branch_d_model, branch.frame_samples
    raise ConfigError(f"unknown RAE encoder {cfg.encoder!r}")


HIFIGAN_UPSAMPLE_RATES = (5, 4, 4, 2)  # product 160 = the mel hop the vocoder needs


def build_model(cfg: RAEConfig) -> AudioRAE:
    """The :class:`AudioRAE` described by ``cfg`` (the encoder frozen)."""
    enc, dim, frame_samples = _encoder(cfg)
    if frame_samples % cfg.hop:
        raise ConfigError(
            f"latent frames ({frame_samples} samples) must be whole mel hops (hop {cfg.hop})"
        )
    hifigan_hop = 1
    for r in HIFIGAN_UPSAMPLE_RATES:
        hifigan_hop *= r
    if cfg.vocoder == "hifigan" and cfg.hop != hifigan_hop:
        raise ConfigError(f"vocoder 'hifigan' needs hop {hifigan_hop}, got {cfg.hop}")
    mel = AudioSRMel(
        sample_rate=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop,
        n_mels=cfg.n_mels,
        f_min=0.0,
    )
    decoder = MelDecoder(
        latent_dim=dim,
        n_mels=cfg.n_mels,
        dim=cfg.decoder_dim,
        upsample=frame_samples // cfg.hop,
        depth=cfg.decoder_depth,
        heads=cfg.decoder_heads,
    )
    vocoder: nn.Module
    if cfg.vocoder == "griffinlim":
        vocoder = GriffinLimVocoder(
            n_fft=cfg.n_fft,
            hop_length=cfg.hop,
            n_mels=cfg.n_mels,
            sample_rate=cfg.sample_rate,
            f_min=0.0,
            n_iter=cfg.griffinlim_iters,
        )
    else:
        vocoder = HiFiGANGenerator(
            n_mels=cfg.n_mels,
            upsample_rates=HIFIGAN_UPSAMPLE_RATES,
            upsample_kernel_sizes=(10, 8, 8, 4),
            upsample_initial_channel=128,
            resblock_kernel_sizes=(3, 7),
            resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)),
        )
    return AudioRAE(
        encoder=enc,
        encoder_kind=cfg.encoder,
        latent_dim=dim,
        frame_samples=frame_samples,
        mel=mel,
        decoder=decoder,
        vocoder=vocoder,
        wav2vec2_layer=cfg.w2v_layer,
    )


PRESETS = {
    "tiny": lambda: RAEConfig(
        vit_dim=16,
        vit_depth=1,
        vit_heads=2,
        vit_out_dim=16,
        decoder_dim=32,
        decoder_depth=1,
        decoder_heads=2,
        griffinlim_iters=4,
        chunk_seconds=1.28,
        hop_seconds=0.64,
    ),
    "small": lambda: RAEConfig(),
    "wav2vec2-base": lambda: RAEConfig(encoder="wav2vec2", decoder_dim=384),
    "hubert-base": lambda: RAEConfig(encoder="hubert", decoder_dim=384),
    "audio-branch": lambda: RAEConfig(encoder="audio_branch"),
}

FAMILY: ModelFamily[RAEConfig] = ModelFamily(
    config_cls=RAEConfig,
    build=build_model,
    presets=PRESETS,
)

"""The config dataclasses of the built-in families (what ``config.json`` holds).

They live apart from the models so that reading a ``config.json`` (``audiotool models info``,
``models list``, the checks of :func:`audiotool.hub.load_model`) never imports torch. Each
family's module (``latent_diffusion.py``, ``separation.py``, ...) builds its model from its
config here; the registry (:mod:`audiotool.models.registry`) maps ``family`` names to both.

This module must not import torch.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from audiotool.errors import ConfigError
from audiotool.models._config import ModelConfig

#: the four stems of MUSDB-style separation
STEMS4 = ("vocals", "drums", "bass", "other")
PoolingType = Literal["attention", "max", "avg", "learnable"]
EncoderKind = Literal["wav2vec2", "hubert", "spectrogram_vit", "audio_branch"]


@dataclasses.dataclass(frozen=True)
class LatentDiffusionConfig(ModelConfig):
    """Everything that defines an upsample model (saved as ``config.json``)."""

    family: ClassVar[str] = "latent_diffusion"
    task: ClassVar[str] = "upsample"

    sample_rate: int = 48000
    n_fft: int = 2048
    hop: int = 480
    n_mels: int = 256
    f_min: float = 20.0
    # first stage
    first_stage: Literal["vae", "identity"] = "vae"
    vae_ch: int = 128
    vae_ch_mult: tuple[int, ...] = (1, 2, 4, 8)
    vae_num_res_blocks: int = 2
    z_channels: int = 16
    embed_dim: int = 16
    cond_stage_vae: bool = True
    identity_freq_pool: int = 4
    identity_shift: float = -5.0
    identity_scale: float = 2.5
    # vocoder
    vocoder: Literal["hifigan", "griffinlim"] = "hifigan"
    hifigan_channels: int = 1536
    hifigan_rates: tuple[int, ...] = (6, 5, 4, 2, 2)
    hifigan_kernels: tuple[int, ...] = (12, 10, 8, 4, 4)
    hifigan_resblock_kernels: tuple[int, ...] = (3, 7, 11, 15)
    griffinlim_iters: int = 32
    # unet
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 3, 5)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (8, 4, 2)
    num_head_channels: int = 32
    transformer_depth: int = 1
    extra_sa_layer: bool = True
    # global encoder (seeds 000/001)
    use_global_encoder: bool = False
    global_context_dim: int = 64
    global_hidden: int = 128
    global_mel_pool: int = 4
    # diffusion
    num_train_steps: int = 1000
    cosine_s: float = 0.008
    parameterization: Literal["v", "eps"] = "v"
    scale_factor: float = 1.0
    cfg_uncond_value: float = -11.4981
    cond_drop_prob: float = 0.1
    # inference defaults (default_steps is for default_sampler: ddim | dpmpp-2m | unipc)
    chunk_seconds: float = 10.24
    overlap_seconds: float = 1.28
    default_sampler: Literal["ddim", "dpmpp-2m", "unipc"] = "ddim"
    default_steps: int = 50
    default_guidance: float = 3.5
    # noise levels t / num_train_steps where guidance applies (lo, hi); elsewhere one
    # conditional forward (engine.samplers.guided_model)
    default_guidance_interval: tuple[float, float] = (0.0, 1.0)
    default_eta: float = 1.0

    def __post_init__(self) -> None:
        if self.sample_rate % self.hop:
            raise ConfigError(
                f"sample_rate ({self.sample_rate}) must be a multiple of hop ({self.hop})"
            )


@dataclasses.dataclass(frozen=True)
class BandSplitConfig(ModelConfig):
    """Config of the ``bandsplit`` family."""

    family: ClassVar[str] = "bandsplit"
    task: ClassVar[str] = "separate"

    sample_rate: int = 44100
    stems: tuple[str, ...] = STEMS4
    audio_channels: int = 2
    n_fft: int = 2048
    hop: int = 512
    band_layout: Literal["musical", "uniform"] = "musical"
    num_bands: int = 16
    feature_dim: int = 64
    num_layers: int = 4
    time_model: Literal["lstm", "conv"] = "lstm"
    conv_dilations: tuple[int, ...] = (1, 2, 4)
    mask_hidden: int = 128
    query_dim: int = 0
    #: where the query comes from when query_dim > 0: a reference clip given by the user, or
    #: the whole mixture itself (a per-file global context, computed once per file)
    query_source: Literal["reference", "mixture"] = "reference"
    default_chunk_seconds: float = 6.0
    default_hop_seconds: float = 3.0


@dataclasses.dataclass(frozen=True)
class HDemucsConfig(ModelConfig):
    """Config of the ``hdemucs`` family (torchaudio's ``HDemucs`` constructor arguments, with
    torchaudio's defaults).

    ``segment_samples`` is set for checkpoints imported from demucs (v3 ``HDemucs``): they are
    cut as demucs' ``apply_model`` cuts them (segments of this many samples, triangular
    weights, the last segment shorter; :class:`~audiotool.engine.segments.DemucsPlan`) instead
    of audiotool's overlap-add with ``default_chunk_seconds`` / ``default_hop_seconds``.
    ``bag_weights`` holds one row of per-stem weights per member of a demucs bag; empty for a
    single model.
    """

    family: ClassVar[str] = "hdemucs"
    task: ClassVar[str] = "separate"

    sample_rate: int = 44100
    stems: tuple[str, ...] = ("drums", "bass", "other", "vocals")
    audio_channels: int = 2
    channels: int = 48
    growth: int = 2
    nfft: int = 4096
    depth: int = 6
    freq_emb: float = 0.2
    emb_scale: float = 10.0
    kernel_size: int = 8
    time_stride: int = 2
    stride: int = 4
    context: int = 1
    context_enc: int = 0
    norm_starts: int = 4
    norm_groups: int = 4
    dconv_depth: int = 2
    dconv_comp: float = 4.0
    dconv_attn: int = 4
    dconv_lstm: int = 4
    default_chunk_seconds: float = 7.8
    default_hop_seconds: float = 5.85
    segment_samples: int | None = None
    bag_weights: tuple[tuple[float, ...], ...] = ()
    default_overlap: float = 0.25

    def __post_init__(self) -> None:
        if self.segment_samples is not None and self.segment_samples <= 0:
            raise ValueError(f"segment_samples must be positive, got {self.segment_samples}")
        if self.bag_weights and self.segment_samples is None:
            raise ValueError("bag_weights need segment_samples (bags come from demucs)")
        if self.bag_weights and any(len(r) != len(self.stems) for r in self.bag_weights):
            raise ValueError("every row of bag_weights needs one weight per stem")
        for k, stem in enumerate(self.stems):
            if self.bag_weights and sum(r[k] for r in self.bag_weights) <= 0:
                raise ValueError(f"bag_weights give stem '{stem}' no weight")


@dataclasses.dataclass(frozen=True)
class AudioBranchConfig(ModelConfig):
    """Config of the ``audio_branch`` family."""

    family: ClassVar[str] = "audio_branch"
    task: ClassVar[str] = "embed"

    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400
    hop: int = 160
    n_mels: int = 80
    subsampling_channels: int = 256
    d_model: int = 512
    num_heads: int = 8
    ffn_dim: int = 2048
    num_layers: int = 4
    conv_kernel: int = 31
    num_segments: int = 8
    pooling: PoolingType = "attention"
    temporal_encoding: bool = True
    dropout: float = 0.1
    normalize: bool = False
    chunk_seconds: float = 10.24
    hop_seconds: float = 5.12


@dataclasses.dataclass(frozen=True)
class CodecConfig(ModelConfig):
    """Config of the ``codec`` family (16 kHz mono in, the same out)."""

    family: ClassVar[str] = "codec"
    task: ClassVar[str] = "reconstruct"

    sample_rate: int = 16000
    n_fft: int = 640
    hop: int = 160
    compress: float = 0.3
    dim: int = 256
    latent_dim: int = 64
    down: int = 2
    encoder_depth: int = 4
    decoder_latent_depth: int = 4
    decoder_depth: int = 4
    # overlap-add for long files: the codec is local (receptive field about +-0.65 s), so 1.28 s
    # of overlap suffices; measured on 123 s of validation audio, the chunked round trip equals
    # the whole-file one to 53 dB SI-SDR and runs 1.5x faster than chunks of 5.12 s every 2.56 s
    chunk_seconds: float = 10.24
    hop_seconds: float = 8.96


@dataclasses.dataclass(frozen=True)
class RAEConfig(ModelConfig):
    """Config of the ``rae`` family."""

    family: ClassVar[str] = "rae"
    task: ClassVar[str] = "reconstruct"

    sample_rate: int = 16000
    encoder: EncoderKind = "spectrogram_vit"
    # mel target / front-end
    n_fft: int = 1024
    hop: int = 160
    n_mels: int = 80
    # wav2vec2 / HuBERT (torchaudio wav2vec2_model arguments)
    w2v_extractor_mode: Literal["group_norm", "layer_norm"] = "group_norm"
    w2v_conv_layers: tuple[tuple[int, int, int], ...] = (
        (512, 10, 5),
        (512, 3, 2),
        (512, 3, 2),
        (512, 3, 2),
        (512, 3, 2),
        (512, 2, 2),
        (512, 2, 2),
    )
    w2v_conv_bias: bool = False
    w2v_embed_dim: int = 768
    w2v_pos_conv_kernel: int = 128
    w2v_pos_conv_groups: int = 16
    w2v_num_layers: int = 12
    w2v_num_heads: int = 12
    w2v_ff_dim: int = 3072
    w2v_layer_norm_first: bool = False
    w2v_layer: int = -1
    # spectrogram ViT
    vit_dim: int = 192
    vit_depth: int = 4
    vit_heads: int = 4
    vit_patch_mel: int = 16
    vit_patch_t: int = 4
    vit_out_dim: int = 192
    # audio branch encoder (its preset's sizes)
    branch_d_model: int = 192
    branch_num_layers: int = 4
    branch_num_heads: int = 4
    branch_ffn_dim: int = 768
    branch_subsampling_channels: int = 64
    # decoder + vocoder
    decoder_dim: int = 256
    decoder_depth: int = 4
    decoder_heads: int = 4
    vocoder: Literal["griffinlim", "hifigan"] = "griffinlim"
    griffinlim_iters: int = 32
    chunk_seconds: float = 5.12
    hop_seconds: float = 2.56

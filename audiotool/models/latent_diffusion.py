"""AudioSR-style latent diffusion for audio super-resolution, with the global encoder.

Legend: ``B`` batch, ``T`` samples at 48 kHz, ``N`` mel frames (100/s), ``M`` mel bins (256),
``Z`` latent channels, ``N'`` / ``M'`` latent frames / bins.

The model (Liu et al. 2024, "AudioSR: Versatile Audio Super-resolution at Scale"; layout in
``shared/reference/audiosr.md``): a mel first stage (VAE, or a parameter-free identity for the
small CPU model) maps the low-passed input's log-mel to a conditioning latent; a UNet predicts
``v`` for ``x_t`` concatenated with that latent (cosine schedule, 1000 steps); classifier-free
guidance uses a constant latent (-11.4981 x scale_factor) as the unconditional input; the
generated latent is decoded to a mel and vocoded. Seeds 000/001 add a global encoder whose
output, computed once per file, every SpatialTransformer attends to.

Deliberate deviations from AudioSR, all documented where they happen:
- the conditioning latent is the posterior *mean* (AudioSR draws a random sample);
- the global context in training comes from the degraded full file (the signal inference has),
  not from the clean target as seed 000 does — no train/test mismatch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiotool.engine.batching import per_item
from audiotool.engine.schedules import cosine_betas
from audiotool.errors import ConfigError
from audiotool.features import AudioSRMel
from audiotool.models._config import ModelFamily
from audiotool.models.autoencoder import AutoencoderKL, IdentityFirstStage
from audiotool.models.configs import LatentDiffusionConfig
from audiotool.models.unet import UNetModel
from audiotool.models.vocoder import GriffinLimVocoder, HiFiGANGenerator


def _schedule_buffers(num_steps: int, s: float) -> dict[str, Tensor]:
    """LDM ``register_schedule`` buffers of the cosine schedule, AudioSR-exact: β from the
    float64 cosine (Nichol & Dhariwal 2021, eq. 17, no clipping) and every buffer derived in
    float64 before the float32 cast (deriving them from a float32 ᾱ is off by up to 6e-4
    relative in β)."""
    betas = cosine_betas(num_steps, s)
    alphas = 1 - betas
    ac = torch.cumprod(alphas, dim=0)
    prev = torch.cat([ac.new_ones(1), ac[:-1]])
    post_var = betas * (1 - prev) / (1 - ac)
    buffers = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": torch.log(1 - ac),
        "sqrt_recip_alphas_cumprod": (1 / (ac + 1e-10)).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / (ac + 1e-10) - 1).sqrt(),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": torch.log(post_var.clamp(min=1e-20)),
        "posterior_mean_coef1": betas * prev.sqrt() / (1 - ac),
        "posterior_mean_coef2": (1 - prev) * alphas.sqrt() / (1 - ac),
    }
    return {k: v.float() for k, v in buffers.items()}


class DiffusionWrapper(nn.Module):
    """Holds the UNet as ``diffusion_model`` (AudioSR's key layout) and concatenates the
    conditioning latent to ``x_t``."""

    def __init__(self, unet: UNetModel) -> None:
        super().__init__()
        self.diffusion_model = unet

    def forward(
        self, x: Tensor, t: Tensor, concat: Tensor, context: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        return self.diffusion_model(torch.cat([x, concat.to(x.dtype)], dim=1), t, context=context)


class _CondStage(nn.Module):
    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae


class LatentDiffusion(nn.Module):
    """AudioSR-layout latent diffusion (see the module docstring).

    Build it with :func:`build_model` from a :class:`LatentDiffusionConfig` (the keyword
    arguments mirror the config's fields).
    """

    alphas_cumprod: Tensor
    betas: Tensor
    scale_factor: Tensor
    first_stage_model: AutoencoderKL | IdentityFirstStage

    def __init__(
        self,
        *,
        first_stage_model: AutoencoderKL | IdentityFirstStage,
        unet: UNetModel,
        cond_vae: AutoencoderKL | None,
        mel: AudioSRMel,
        num_train_steps: int,
        cosine_s: float,
        scale_factor: float,
        cfg_uncond_value: float,
        parameterization: Literal["v", "eps"],
    ) -> None:
        super().__init__()
        for name, value in _schedule_buffers(num_train_steps, cosine_s).items():
            self.register_buffer(name, value)
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))
        self.model = DiffusionWrapper(unet)
        self.first_stage_model = first_stage_model
        if cond_vae is not None:
            self.cond_stage_models = nn.ModuleList([_CondStage(cond_vae)])
        self.mel = mel
        self.cfg_uncond_value = cfg_uncond_value
        self.parameterization = parameterization

    # ------------------------------------------------------------------ pieces
    @property
    def unet(self) -> UNetModel:
        unet: UNetModel = self.model.diffusion_model
        return unet

    @property
    def latent_factor(self) -> int:
        """Mel frames per latent frame (the first stage's downsampling)."""
        return int(getattr(self.first_stage_model, "downsample_factor", 1))

    @property
    def frame_multiple(self) -> int:
        """Mel frame counts must be multiples of this (first stage x UNet downsampling)."""
        return self.latent_factor * self.unet.time_multiple

    @property
    def latent_channels(self) -> int:
        return int(getattr(self.first_stage_model, "latent_channels", 1))

    @property
    def uncond_value(self) -> float:
        """The unconditional ``concat`` value (already multiplied by the scale factor)."""
        return self.cfg_uncond_value * float(self.scale_factor)

    def _cond_encoder(self) -> AutoencoderKL | IdentityFirstStage:
        if hasattr(self, "cond_stage_models"):
            stage: _CondStage = self.cond_stage_models[0]  # type: ignore[assignment]
            return stage.vae
        return self.first_stage_model

    def encode_condition(self, mel: Tensor) -> Tensor:
        """Low-passed log-mel ``(B, N, M)`` -> scaled conditioning latent ``(B, Z, N', M')``.

        Uses the posterior mean (AudioSR samples from the posterior; the mean makes the
        condition deterministic).
        """
        post = self._cond_encoder().encode(mel[:, None])
        return post.mode() * self.scale_factor

    def encode_target(self, mel: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Target log-mel ``(B, N, M)`` -> scaled latent ``x_0`` (a posterior sample)."""
        post = self.first_stage_model.encode(mel[:, None])
        return post.sample(generator) * self.scale_factor

    def decode(self, latent: Tensor) -> Tensor:
        """Scaled latent ``(B, Z, N', M')`` -> log-mel ``(B, N, M)``."""
        return self.first_stage_model.decode(latent / self.scale_factor)[:, 0]

    def vocode(self, mel: Tensor) -> Tensor:
        """Log-mel ``(B, N, M)`` -> waveform ``(B, samples)``."""
        return self.first_stage_model.vocoder(mel.transpose(1, 2))[:, 0]

    def encode_global(self, mel: Tensor) -> dict[str, Tensor]:
        """Whole-file log-mel ``(B, N, M)`` -> global context (empty without the encoder)."""
        return self.unet.encode_global(mel)

    def denoise(self, x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        """The engine's denoiser: ``x_t`` ``(B, Z, N', M')``, ``t`` ``(B,)``, cond with
        ``"concat"`` (scaled condition latent) and optional ``"global"``/``"global_seq"``."""
        ctx = {k: v for k, v in cond.items() if k != "concat"}
        if x.shape[0] > 1 and x.device.type == "cpu" and not torch.is_grad_enabled():
            # one item at a time on the CPU: oneDNN picks another convolution kernel for a
            # batch of one than for larger batches (~1e-6 apart, which Griffin-Lim turns into
            # another phase of the generated band), so a chunk's result would depend on the
            # chunks (--batch-size) or the unconditional pass (guidance 1 or not) beside it.
            # Batched forwards bring nothing on a few CPU cores (benchmarks/RESULTS.md).
            keys = list(ctx)

            def one(x: Tensor, t: Tensor, concat: Tensor, *values: Tensor) -> Tensor:
                return self.model(x, t, concat, dict(zip(keys, values, strict=True)) or None)

            return per_item(one, x, t, cond["concat"], *ctx.values())
        return self.model(x, t, cond["concat"], ctx or None)

    def forward(
        self, x: Tensor, t: Tensor, concat: Tensor, context: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        """Model output (v or ε) for ``x_t`` with the conditioning latent concatenated."""
        return self.model(x, t, concat, context)


def diffusion_loss(
    model: LatentDiffusion,
    batch: Mapping[str, Tensor],
    *,
    cond_drop_prob: float = 0.1,
    generator: torch.Generator | None = None,
    level_bound_weight: float = 0.0,
) -> Tensor:
    """v-prediction MSE for one batch (kept outside ``forward``), plus
    ``level_bound_weight`` x :func:`level_bound_penalty` when that weight is positive; the sum
    of :func:`diffusion_loss_parts`.

    ``batch``: ``"target_mel"`` ``(B, N, M)`` clean log-mel; ``"cond_mel"`` ``(B, N, M)`` its
    low-passed version; ``"context_mel"`` ``(B, N_full, M)`` the low-passed FULL clip the
    global encoder sees (the signal available at inference). With probability
    ``cond_drop_prob`` an item's condition is replaced by the unconditional latent.
    """
    parts = diffusion_loss_parts(
        model,
        batch,
        cond_drop_prob=cond_drop_prob,
        generator=generator,
        level_bound_weight=level_bound_weight,
    )
    total = parts["mse"]
    if "level_bound" in parts:
        total = total + level_bound_weight * parts["level_bound"]
    return total


def diffusion_loss_parts(
    model: LatentDiffusion,
    batch: Mapping[str, Tensor],
    *,
    cond_drop_prob: float = 0.1,
    generator: torch.Generator | None = None,
    level_bound_weight: float = 0.0,
) -> dict[str, Tensor]:
    """The terms of :func:`diffusion_loss`: ``"mse"`` and, when ``level_bound_weight > 0``
    and the batch holds ``"bound_energy"`` / ``"bound_mask"``, ``"level_bound"`` (unweighted)."""
    dev = batch["target_mel"].device
    with torch.no_grad():  # the first stage is fixed, as in LDM/AudioSR
        x0 = model.encode_target(batch["target_mel"], generator)
        concat = model.encode_condition(batch["cond_mel"])
    b = x0.shape[0]
    t = torch.randint(0, model.alphas_cumprod.shape[0], (b,), generator=generator).to(dev)
    noise = torch.randn(x0.shape, generator=generator).to(dev)
    drop = (torch.rand(b, generator=generator) < cond_drop_prob).to(dev)
    concat = torch.where(
        drop[:, None, None, None], torch.full_like(concat, model.uncond_value), concat
    )
    context = model.encode_global(batch["context_mel"]) if "context_mel" in batch else {}
    a = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    out = model(x_t, t, concat, context or None)
    target = a.sqrt() * noise - (1 - a).sqrt() * x0 if model.parameterization == "v" else noise
    parts = {"mse": F.mse_loss(out.float(), target)}
    if level_bound_weight > 0 and "bound_energy" in batch:
        if model.parameterization == "v":
            x0_hat = a.sqrt() * x_t - (1 - a).sqrt() * out.float()
        else:
            x0_hat = (x_t - (1 - a).sqrt() * out.float()) / a.sqrt().clamp(min=1e-4)
        weight = a.view(-1) * (~drop).float()  # sharp x̂₀ (low noise) counts; dropped items not
        parts["level_bound"] = level_bound_penalty(
            model.decode(x0_hat), batch["bound_energy"], batch["bound_mask"], weight=weight
        )
    return parts


def level_bound_penalty(
    mel: Tensor, bound_energy: Tensor, bound_mask: Tensor, *, weight: Tensor | None = None
) -> Tensor:
    """How far a log-mel's high band exceeds the input-predicted level, per frame (squared, in
    nepers of energy), averaged over frames and items.

    ``mel`` ``(B, N, M)`` (natural-log magnitude mel, as :class:`AudioSRMel`); ``bound_mask``
    ``(B, M)`` 1 on the mel bins above the cutoff; ``bound_energy`` ``(B, N)`` the energy
    ``Σ_m mel_m²`` over those bins of the mel of :func:`audiotool.dsp.predicted_band_power`'s
    spectrum — the same per-frame ceiling that :func:`audiotool.dsp.split_bands` enforces at
    inference, computed from the condition signal. Frames at or below the ceiling cost nothing;
    above it, ``(log E − log E_bound)²``. ``weight`` ``(B,)`` weights the items.
    """
    energy = (mel.float().mul(2).exp() * bound_mask[:, None, :]).sum(dim=-1)  # (B, N)
    over = F.relu(torch.log(energy + 1e-8) - torch.log(bound_energy + 1e-8))
    per_item = over.pow(2).mean(dim=1)
    if weight is None:
        return per_item.mean()
    return (per_item * weight).sum() / weight.numel()


# --------------------------------------------------------------------------- building


def build_model(cfg: LatentDiffusionConfig) -> LatentDiffusion:
    """A freshly initialised model for ``cfg``."""
    hop = 1
    for r in cfg.hifigan_rates:
        hop *= r
    vocoder: nn.Module
    if cfg.vocoder == "hifigan":
        if hop != cfg.hop:
            raise ConfigError(
                f"hifigan_rates {list(cfg.hifigan_rates)} multiply to {hop}, not hop={cfg.hop}",
                hint="the vocoder must upsample mel frames by exactly the hop",
            )
        vocoder = HiFiGANGenerator(
            n_mels=cfg.n_mels,
            upsample_rates=cfg.hifigan_rates,
            upsample_kernel_sizes=cfg.hifigan_kernels,
            upsample_initial_channel=cfg.hifigan_channels,
            resblock_kernel_sizes=cfg.hifigan_resblock_kernels,
            resblock_dilation_sizes=((1, 3, 5),) * len(cfg.hifigan_resblock_kernels),
        )
    else:
        vocoder = GriffinLimVocoder(
            n_fft=cfg.n_fft,
            hop_length=cfg.hop,
            n_mels=cfg.n_mels,
            sample_rate=cfg.sample_rate,
            f_min=cfg.f_min,
            n_iter=cfg.griffinlim_iters,
        )
    first: AutoencoderKL | IdentityFirstStage
    cond_vae = None
    if cfg.first_stage == "vae":
        vae_kwargs: dict[str, Any] = dict(
            ch=cfg.vae_ch,
            ch_mult=cfg.vae_ch_mult,
            num_res_blocks=cfg.vae_num_res_blocks,
            z_channels=cfg.z_channels,
            embed_dim=cfg.embed_dim,
        )
        first = AutoencoderKL(**vae_kwargs, vocoder=vocoder)
        if cfg.cond_stage_vae:
            cond_vae = AutoencoderKL(**vae_kwargs, with_decoder=False)
        latent_ch = cfg.embed_dim
    else:
        first = IdentityFirstStage(
            n_mels=cfg.n_mels,
            freq_pool=cfg.identity_freq_pool,
            shift=cfg.identity_shift,
            scale=cfg.identity_scale,
            vocoder=vocoder,
        )
        latent_ch = 1
    unet = UNetModel(
        in_channels=2 * latent_ch,
        out_channels=latent_ch,
        model_channels=cfg.model_channels,
        channel_mult=cfg.channel_mult,
        num_res_blocks=cfg.num_res_blocks,
        attention_resolutions=cfg.attention_resolutions,
        num_head_channels=cfg.num_head_channels,
        transformer_depth=cfg.transformer_depth,
        extra_sa_layer=cfg.extra_sa_layer,
        use_global_encoder=cfg.use_global_encoder,
        global_context_dim=cfg.global_context_dim,
        global_hidden=cfg.global_hidden,
        global_mel_pool=cfg.global_mel_pool,
    )
    mel = AudioSRMel(
        sample_rate=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop,
        n_mels=cfg.n_mels,
        f_min=cfg.f_min,
    )
    return LatentDiffusion(
        first_stage_model=first,
        unet=unet,
        cond_vae=cond_vae,
        mel=mel,
        num_train_steps=cfg.num_train_steps,
        cosine_s=cfg.cosine_s,
        scale_factor=cfg.scale_factor,
        cfg_uncond_value=cfg.cfg_uncond_value,
        parameterization=cfg.parameterization,
    )


def audiosr_config(*, global_encoder: bool = False) -> LatentDiffusionConfig:
    """AudioSR basic/speech architecture (258 M-parameter UNet, VAE, HiFi-GAN)."""
    return LatentDiffusionConfig(use_global_encoder=global_encoder)


def tiny_config() -> LatentDiffusionConfig:
    """The CPU preset: identity first stage on an 8x frequency-pooled log-mel (32 bins), a
    ~3 M-parameter UNet with the global encoder, Griffin-Lim vocoder (the low band is taken
    from the input, so the vocoder only has to be plausible above the cutoff)."""
    return LatentDiffusionConfig(
        first_stage="identity",
        identity_freq_pool=8,
        cond_stage_vae=False,
        vocoder="griffinlim",
        model_channels=24,
        channel_mult=(1, 2, 2, 4),
        num_res_blocks=1,
        attention_resolutions=(8,),
        num_head_channels=32,
        extra_sa_layer=False,
        use_global_encoder=True,
        global_hidden=64,
        global_mel_pool=4,
        default_eta=0.0,
        # measured on held-out clips (README, "Samplers and steps"): 12 DPM-Solver++(2M) steps
        # with guidance on the 4 noisiest (t/T >= 0.8) score better than DDIM-50 guided
        # throughout, at 16 forwards instead of 100
        default_sampler="dpmpp-2m",
        default_steps=12,
        default_guidance_interval=(0.8, 1.0),
    )


def build_audiosr(global_encoder: bool = False) -> LatentDiffusion:
    """The full-size AudioSR model (for imported weights); try ``with torch.device("meta")``."""
    return build_model(audiosr_config(global_encoder=global_encoder))


FAMILY: ModelFamily[LatentDiffusionConfig] = ModelFamily(
    config_cls=LatentDiffusionConfig,
    build=build_model,
    presets={
        "audiosr": audiosr_config,
        "audiosr-global": lambda: audiosr_config(global_encoder=True),
        "tiny": tiny_config,
    },
)

"""Per-task training glue: batches from real data, the loss, a validation metric.

Data layout (what ``audiotool data build`` writes): ``DATA/train/...`` and ``DATA/val/...``.
Every batch is a deterministic function of its generator (seeded from seed, step, rank).
Rates, hops and stems come from the recipe's model config (:meth:`Recipe.model_config`), never
from constants: an upsample model at 24 kHz trains on 24 kHz targets.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from audiotool.data.augment import StemAugment, augment_stem
from audiotool.errors import ConfigError, UsageError
from audiotool.models.configs import CodecConfig, LatentDiffusionConfig
from audiotool.training.clips import ClipIndex, SongIndex
from audiotool.training.recipe import Recipe

if TYPE_CHECKING:
    from audiotool.models.codec import WaveCodec
    from audiotool.models.latent_diffusion import LatentDiffusion
    from audiotool.models.rae import AudioRAE

log = logging.getLogger(__name__)


class TaskAdapter(Protocol):
    """What :func:`audiotool.training.loop.train` needs from a task.

    Attributes:
        name: the task, for logs.
        best_metric: the key of :meth:`validate`'s result that picks ``best.safetensors``.
        higher_is_better: whether a larger ``best_metric`` is better.
    """

    name: str
    best_metric: str
    higher_is_better: bool

    def prepare(self, model: nn.Module) -> None:
        """Called once on a fresh (not resumed) model, e.g. to set normalisation stats."""

    def train_batch(
        self, step: int, rank: int, batch_size: int, generator: torch.Generator
    ) -> Any: ...

    def loss(
        self, model: nn.Module, batch: Any, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]: ...

    def validate(self, model: nn.Module, *, max_batches: int) -> dict[str, float]: ...

    def card_facts(self) -> dict[str, Any]: ...


def _card_data(data_dir: Path) -> str:
    manifest = data_dir / "manifest.json"
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        files = info["files"]
        unit = "files"
        songs = [f for f in files if f["file"].endswith("/mixture.wav")]
        if songs:  # song folders: count songs and their length, not every stem file
            files, unit = songs, "songs"
        n = {s: sum(1 for f in files if f["split"] == s) for s in ("train", "val")}
        hours = sum(f["duration"] for f in files if f["split"] == "train") / 3600
        return (
            f"`audiotool data build {info['kind']}` (seed {info['seed']}): {n['train']} "
            f"train / {n['val']} val {unit}, {hours:.2f} h train; split by "
            f"{info['split_unit']}"
        )
    return str(data_dir)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class AdapterBase(ABC):
    """What every adapter shares: the recipe, the data folder, the model config (and its
    ``sample_rate``), a no-op :meth:`prepare` and the card's data line. Subclasses set
    ``name``, ``best_metric`` and ``higher_is_better`` and implement the rest of
    :class:`TaskAdapter`."""

    name: str
    best_metric: str
    higher_is_better: bool

    def __init__(self, recipe: Recipe, data_dir: Path) -> None:
        self.recipe, self.data_dir = recipe, Path(data_dir)
        self.config = recipe.model_config()
        self.sample_rate = int(self.config.sample_rate)

    def prepare(self, model: nn.Module) -> None:
        """Start from ``data.extra.init_from``'s weights (a model spec of this task: zoo name,
        folder or Hub repo), loaded strictly, when the recipe names one (a fine-tune)."""
        from audiotool.checkpoints import load_state_strict
        from audiotool.hub import load_model

        source = self.recipe.data.extra.get("init_from")
        if source:
            loaded = load_model(str(source), task=self.name)
            load_state_strict(model, loaded.model.state_dict(), source=f"{source} (init_from)")
            log.info("%s model initialised from %s", self.name, source)

    def card_facts(self) -> dict[str, Any]:
        return {"data": _card_data(self.data_dir)}

    @abstractmethod
    def train_batch(
        self, step: int, rank: int, batch_size: int, generator: torch.Generator
    ) -> Any: ...

    @abstractmethod
    def loss(
        self, model: nn.Module, batch: Any, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]: ...

    @abstractmethod
    def validate(self, model: nn.Module, *, max_batches: int) -> dict[str, float]: ...


class UpsampleAdapter(AdapterBase):
    """Degrade real clips at the model's rate to a random lower input rate; v-prediction loss.

    ``data.extra``: ``input_rates`` (default 8/12/16/24 kHz, those below the model's rate),
    ``context_seconds`` (the window the global encoder sees, default 8 s), ``filters``
    (low-pass kinds applied before the resampling, chosen at random per item: robustness to
    how the input was made), ``level_bound_weight`` (default 0 = off): weight of
    :func:`audiotool.models.latent_diffusion.level_bound_penalty`, which penalises the
    predicted clean mel's high band, per frame, where it is louder than
    :func:`audiotool.dsp.predicted_band_power` extrapolates from the condition's top octave —
    the ceiling inference applies (``split_bands(bound_level=True)``), so the model learns to
    stay under it instead of being turned down afterwards. Mel frames are ``hop`` samples of
    the model config. ``init_from`` (a model spec, e.g. ``upsample-tiny``): start from that
    model's weights (strict: same architecture) instead of a random initialisation — a
    fine-tune.
    """

    name = "upsample"
    best_metric = "loss"
    higher_is_better = False

    def __init__(self, recipe: Recipe, data_dir: Path) -> None:
        super().__init__(recipe, data_dir)
        if not isinstance(self.config, LatentDiffusionConfig):
            raise UsageError(
                f"upsample training needs a latent_diffusion model, got {self.config.family!r}"
            )
        self.hop = int(self.config.hop)
        self.f_min = float(self.config.f_min)
        self.cond_drop_prob = float(self.config.cond_drop_prob)
        self.train_set = ClipIndex(self.data_dir / recipe.data.train)
        self.val_set = ClipIndex(self.data_dir / recipe.data.val)
        extra = recipe.data.extra
        if "input_rates" in extra:
            self.rates = [int(r) for r in extra["input_rates"]]
        else:
            self.rates = [r for r in (8000, 12000, 16000, 24000) if r < self.sample_rate]
        if not self.rates or max(self.rates) > self.sample_rate:
            raise ConfigError(
                f"data.extra.input_rates {self.rates} must be non-empty and at most the "
                f"model's sample_rate ({self.sample_rate})"
            )
        self.context_seconds = float(extra.get("context_seconds", 8.0))
        self.filters = list(extra.get("filters", ["none", "cheby1", "butter"]))
        self.level_bound_weight = float(extra.get("level_bound_weight", 0.0))
        if self.level_bound_weight < 0:
            raise ConfigError(
                f"data.extra.level_bound_weight must be >= 0, got {self.level_bound_weight}"
            )

    def _item(
        self,
        model: LatentDiffusion,
        gen: torch.Generator,
        clip: int,
        idx: ClipIndex,
        rate_choice: int | None = None,
    ) -> dict[str, Tensor]:
        from audiotool.dsp import degrade, lowpass

        sr, hop = self.sample_rate, self.hop
        ctx_len = max(clip, int(self.context_seconds * sr))
        window, _ = idx.random_crop(gen, ctx_len, sr)
        off = int(torch.randint(ctx_len - clip + 1, (1,), generator=gen))
        in_rate = (
            self.rates[int(torch.randint(len(self.rates), (1,), generator=gen))]
            if rate_choice is None
            else rate_choice
        )
        kind = self.filters[int(torch.randint(len(self.filters), (1,), generator=gen))]
        low = window if kind == "none" else lowpass(window, sr, 0.97 * in_rate / 2, kind=kind)
        degraded = degrade(low, sr, in_rate)
        cutoff = 0.95 * in_rate / 2
        cond = lowpass(degraded, sr, cutoff)
        target_mel = model.mel(window[:, off : off + clip])
        cond_mag = model.mel.stft_magnitude(cond)  # once: the mel and the level bound use it
        cond_mel_full = model.mel.from_magnitude(cond_mag)
        f0, n = off // hop, clip // hop
        item = {
            "target_mel": target_mel[0, :n],
            "cond_mel": cond_mel_full[0, f0 : f0 + n],
            "context_mel": cond_mel_full[0],
        }
        if self.level_bound_weight > 0:
            energy, mask = level_bound_target(
                model, cond, cutoff, f_min=self.f_min, magnitude=cond_mag
            )
            item["bound_energy"] = energy[0, f0 : f0 + n]
            item["bound_mask"] = mask
        return item

    def _clip_samples(self, model: LatentDiffusion) -> int:
        frames = int(self.recipe.data.clip_seconds * (self.sample_rate / self.hop))
        mult = model.frame_multiple
        return max(mult, frames // mult * mult) * self.hop

    def train_batch(self, step: int, rank: int, batch_size: int, generator: torch.Generator) -> Any:
        return ("train", generator.initial_seed(), batch_size)

    def _materialise(self, model: LatentDiffusion, spec: Any) -> dict[str, Tensor]:
        split, seed, bs = spec
        gen = torch.Generator().manual_seed(int(seed))
        clip = self._clip_samples(model)
        idx = self.train_set if split == "train" else self.val_set
        items = [self._item(model, gen, clip, idx) for _ in range(bs)]
        dev = _device(model)
        return {k: torch.stack([it[k] for it in items]).to(dev) for k in items[0]}

    def loss(
        self, model: nn.Module, batch: Any, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        from audiotool.models.latent_diffusion import diffusion_loss_parts

        ld = _latent_diffusion(model)
        with torch.no_grad():
            data = self._materialise(ld, batch)
        loss = diffusion_loss_parts(
            ld,
            data,
            cond_drop_prob=self.cond_drop_prob,
            generator=generator,
            level_bound_weight=self.level_bound_weight,
        )
        if "level_bound" not in loss:
            return loss["mse"], {}
        total = loss["mse"] + self.level_bound_weight * loss["level_bound"]
        parts = {k: float(v.detach()) for k, v in loss.items()}
        return total, parts

    def validate(self, model: nn.Module, *, max_batches: int) -> dict[str, float]:
        from audiotool.models.latent_diffusion import diffusion_loss

        ld = _latent_diffusion(model)
        total = 0.0
        for i in range(max_batches):
            data = self._materialise(ld, ("val", 10_000 + i, 4))
            gen = torch.Generator().manual_seed(i)
            total += float(diffusion_loss(ld, data, cond_drop_prob=0.0, generator=gen))
        return {"loss": total / max_batches}


def level_bound_target(
    model: LatentDiffusion,
    cond: Tensor,
    cutoff_hz: float,
    *,
    f_min: float,
    magnitude: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The per-frame high-band ceiling of :func:`~audiotool.models.latent_diffusion.
    level_bound_penalty` for a condition waveform ``(1, T)`` low-passed at ``cutoff_hz``.

    :func:`audiotool.dsp.predicted_band_power` of the condition's STFT (the model's mel frames)
    above ``cutoff - transition`` (the transition of :func:`audiotool.dsp.split_bands`), taken
    through the model's mel filterbank (lowest band edge ``f_min``) as magnitudes; returns the
    energy ``Σ_m mel_m²`` over the mel bins above the cutoff ``(1, N)`` and those bins' mask
    ``(M,)``. ``magnitude``: the condition's ``model.mel.stft_magnitude`` if the caller already
    has it (it is then not recomputed from ``cond``).
    """
    from audiotool.dsp import default_transition_hz, mel_bin_for_frequency, predicted_band_power

    mel = model.mel
    mag = mel.stft_magnitude(cond) if magnitude is None else magnitude  # (1, K, N)
    freqs = torch.arange(mag.shape[1], device=mag.device) * (mel.sample_rate / mel.n_fft)
    top = cutoff_hz - default_transition_hz(cutoff_hz)
    allowed = predicted_band_power(mag, freqs, top)  # power per bin (1, K, N)
    allowed_mel = torch.matmul(mel.basis, allowed.sqrt())  # (1, M, N)
    cut = mel_bin_for_frequency(
        cutoff_hz, n_mels=mel.n_mels, sample_rate=mel.sample_rate, f_min=f_min
    )
    mask = (torch.arange(mel.n_mels, device=mag.device) >= cut).float()
    return (allowed_mel.pow(2) * mask[None, :, None]).sum(dim=1), mask


def _latent_diffusion(model: nn.Module) -> LatentDiffusion:
    from audiotool.models.latent_diffusion import LatentDiffusion

    if not isinstance(model, LatentDiffusion):
        raise UsageError(f"upsample training needs a LatentDiffusion, got {type(model).__name__}")
    return model


class SeparateAdapter(AdapterBase):
    """Random crops of rendered songs, stem gains and remixing across songs; L1 + MR-STFT.

    The songs must be at the model's ``sample_rate`` (they are read as they are).
    ``data.extra``: ``remix_prob`` (each stem from another random song, default 0.5);
    ``augment`` (``true`` or a mapping of :class:`~audiotool.data.augment.StemAugment` fields:
    per-stem gain, EQ tilt, speed, reverb, stereo width, applied before the mixture is summed,
    so it stays the exact sum of the targets); ``init_from`` (a separate model whose weights
    start a fresh run: zoo name, folder or Hub repo; same architecture).
    """

    name = "separate"
    best_metric = "si_sdr"
    higher_is_better = True

    def __init__(self, recipe: Recipe, data_dir: Path) -> None:
        super().__init__(recipe, data_dir)
        stems = getattr(self.config, "stems", None)
        if not stems:
            raise UsageError(f"separate training needs a model with stems, got {self.config!r}")
        self.stems: tuple[str, ...] = tuple(stems)
        self.train_set = SongIndex(self.data_dir / recipe.data.train, self.stems)
        self.val_set = SongIndex(self.data_dir / recipe.data.val, self.stems)
        for split, songs in ((recipe.data.train, self.train_set), (recipe.data.val, self.val_set)):
            if songs.rate != self.sample_rate:
                raise ConfigError(
                    f"the songs in {self.data_dir / split} are at {songs.rate} Hz, the model "
                    f"at {self.sample_rate} Hz",
                    hint=f"add model.overrides: {{sample_rate: {songs.rate}}} to the recipe, "
                    "or build the data at the model's rate",
                )
        self.remix = float(recipe.data.extra.get("remix_prob", 0.5))
        aug = recipe.data.extra.get("augment")
        self.augment: StemAugment | None = None
        if aug:
            self.augment = StemAugment.from_dict(aug if isinstance(aug, dict) else {})

    def train_batch(self, step: int, rank: int, batch_size: int, generator: torch.Generator) -> Any:
        length = int(self.recipe.data.clip_seconds * self.sample_rate)
        read = length
        if self.augment is not None and self.augment.p_speed > 0:
            read = int(length * max(1.0, self.augment.speed[1])) + 1
        mixes: list[Tensor] = []
        refs: dict[str, list[Tensor]] = {s: [] for s in self.stems}
        n = len(self.train_set.songs)
        for _ in range(batch_size):
            base = int(torch.randint(n, (1,), generator=generator))
            stems = {}
            for s in self.stems:
                song = (
                    int(torch.randint(n, (1,), generator=generator))
                    if float(torch.rand(1, generator=generator)) < self.remix
                    else base
                )
                start = int(
                    torch.randint(
                        max(1, self.train_set.frames[song] - read), (1,), generator=generator
                    )
                )
                gain = float(torch.empty(1).uniform_(0.5, 1.25, generator=generator))
                x = self.train_set.crop(song, s, start, read) * gain
                if self.augment is not None:
                    x = augment_stem(
                        x, generator, sample_rate=self.sample_rate, config=self.augment
                    )
                stems[s] = x[..., :length]
            for s in self.stems:
                refs[s].append(stems[s])
            mixes.append(torch.stack(list(stems.values())).sum(0))
        return torch.stack(mixes), {s: torch.stack(v) for s, v in refs.items()}

    def loss(
        self, model: nn.Module, batch: Any, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        from audiotool.models.separation import separation_loss

        mix, refs = batch
        dev = _device(model)
        est = model(mix.to(dev))
        return separation_loss(est, {k: v.to(dev) for k, v in refs.items()}), {}

    def validate(self, model: nn.Module, *, max_batches: int) -> dict[str, float]:
        from audiotool.metrics import si_sdr

        length = int(min(6.0, self.recipe.data.clip_seconds * 2) * self.sample_rate)
        scores: dict[str, list[float]] = {s: [] for s in self.stems}
        dev = _device(model)
        for song in range(min(len(self.val_set.songs), max_batches)):
            start = max(0, (self.val_set.frames[song] - length) // 2)
            mix = self.val_set.crop(song, "mixture", start, length)
            est = model(mix[None].to(dev))
            for s in self.stems:
                ref = self.val_set.crop(song, s, start, length)
                if float(ref.abs().max()) > 1e-4:
                    scores[s].append(si_sdr(ref, est[s][0]))
        per = {s: sum(v) / len(v) for s, v in scores.items() if v}
        return {
            "si_sdr": sum(per.values()) / max(1, len(per)),
            **{f"si_sdr_{k}": v for k, v in per.items()},
        }


class EmbedAdapter(AdapterBase):
    """Contrastive training on real clips at the model's rate: two augmented crops of one clip
    are positives (NT-Xent, SimCLR); with ``data.extra.supervised`` (weight, default 1.0) clips
    that share a label (their sub-folder) are positives too (SupCon). Augmentations: gain,
    polarity, noise at a random level, random low-pass. Validation = leave-one-out 1-NN accuracy
    on the labelled val folder (recordings not used in training)."""

    name = "embed"
    best_metric = "knn"
    higher_is_better = True

    def __init__(self, recipe: Recipe, data_dir: Path) -> None:
        super().__init__(recipe, data_dir)
        self.train_set = ClipIndex(self.data_dir / recipe.data.train)
        self.val_set = ClipIndex(self.data_dir / recipe.data.val)
        self.temperature = float(recipe.data.extra.get("temperature", 0.1))
        self.supervised = float(recipe.data.extra.get("supervised", 1.0))
        self.label_ids = {lab: i for i, lab in enumerate(self.train_set.labels)}

    def _augment(self, x: Tensor, gen: torch.Generator) -> Tensor:
        from audiotool.dsp import lowpass

        u = torch.rand(4, generator=gen)
        gain = 0.2 + 0.8 * float(u[0])
        sign = -1.0 if float(u[1]) < 0.5 else 1.0
        if float(u[2]) < 0.3:
            cutoff = min(2000 + 5000 * float(u[3]), 0.45 * self.sample_rate)  # below Nyquist
            x = lowpass(x[None], self.sample_rate, cutoff, order=4, kind="butter")[0]
        noise = 10 ** (-1 - 2 * float(torch.rand(1, generator=gen)))  # 0.1 .. 0.001
        return sign * gain * x + noise * torch.randn(x.shape, generator=gen)

    def _length(self) -> int:
        return int(self.recipe.data.clip_seconds * self.sample_rate)

    def train_batch(self, step: int, rank: int, batch_size: int, generator: torch.Generator) -> Any:
        length, sr = self._length(), self.sample_rate
        a, b, labels = [], [], []
        for _ in range(batch_size):
            x, item = self.train_set.random_crop(generator, length, sr)
            y, _ = self.train_set.random_crop(generator, length, sr, item=item)
            a.append(self._augment(x[0], generator))
            b.append(self._augment(y[0], generator))
            labels.append(self.label_ids.get(item.label, -1))
        return torch.stack(a), torch.stack(b), torch.tensor(labels)

    def loss(
        self, model: nn.Module, batch: Any, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        from audiotool.models.audio_branch import nt_xent, supcon

        a, b, labels = batch
        dev = _device(model)
        _, za = model(a.to(dev))
        _, zb = model(b.to(dev))
        self_sup = nt_xent(za, zb, self.temperature)
        if self.supervised <= 0:
            return self_sup, {}
        sup = supcon(torch.cat([za, zb]), torch.cat([labels, labels]).to(dev), self.temperature)
        return self_sup + self.supervised * sup, {
            "nt_xent": float(self_sup.detach()),
            "supcon": float(sup.detach()),
        }

    def embed_all(self, model: nn.Module, index: ClipIndex) -> tuple[Tensor, list[str]]:
        length = self._length()
        dev = _device(model)
        vecs = []
        for item in index.files:
            x = index.read(item, 0, length, self.sample_rate)
            vecs.append(model(x.to(dev))[1][0].cpu())
        return torch.stack(vecs), [f.label for f in index.files]

    def validate(self, model: nn.Module, *, max_batches: int) -> dict[str, float]:
        from audiotool.evaluation import knn_accuracy

        vecs, labels = self.embed_all(model, self.val_set)
        return {"knn": knn_accuracy(vecs.numpy(), labels, k=1)}


class ReconstructAdapter(AdapterBase):
    """Round-trip training on real clips, mono crops at the model's rate of
    ``data.clip_seconds``.

    An RAE trains its decoder (the encoder stays frozen; mel L1, :func:`rae_loss`); a codec
    trains encoder and decoder together (:func:`codec_loss`). ``data.extra.gain_range``
    ``[lo, hi]`` scales each crop by a random gain (default ``[1, 1]``: none), so that the model
    sees quiet as well as loud audio. The best checkpoint follows ``loss`` (codec) or
    ``mel_l1`` (RAE).
    """

    name = "reconstruct"
    higher_is_better = False

    def __init__(self, recipe: Recipe, data_dir: Path) -> None:
        super().__init__(recipe, data_dir)
        self.is_codec = isinstance(self.config, CodecConfig)
        self.best_metric = "loss" if self.is_codec else "mel_l1"
        self.train_set = ClipIndex(self.data_dir / recipe.data.train)
        self.val_set = ClipIndex(self.data_dir / recipe.data.val)

    def _length(self, model: nn.Module) -> int:
        fs = int(_round_trip(model).frame_samples)
        return max(fs, int(self.recipe.data.clip_seconds * self.sample_rate) // fs * fs)

    def prepare(self, model: nn.Module) -> None:
        """``init_from`` as every task; then, RAE only: load the frozen encoder's weights when
        ``data.extra.encoder_from`` names a trained embed model (an audio-branch RAE over our own
        embedder: zoo name, folder or Hub repo), then latent normalisation statistics from 32
        training crops."""
        from audiotool.models.rae import AudioRAE, compute_latent_stats

        super().prepare(model)
        source = self.recipe.data.extra.get("encoder_from")
        if not isinstance(model, AudioRAE):
            if source:
                raise UsageError(
                    "data.extra.encoder_from is for RAE models (a frozen encoder)",
                    hint="a codec trains its own encoder: remove encoder_from from the recipe",
                )
            return
        if source:
            load_encoder_from(model, str(source))
        gen = torch.Generator().manual_seed(1234)
        length = self._length(model)
        crops = [self.train_set.random_crop(gen, length, self.sample_rate)[0] for _ in range(32)]
        x = torch.cat(crops)
        with torch.no_grad():
            z = model.encode_raw(x.to(_device(model)))
        model.set_latent_stats(*compute_latent_stats(z))

    def train_batch(self, step: int, rank: int, batch_size: int, generator: torch.Generator) -> Any:
        return ("train", generator.initial_seed(), batch_size)

    def _batch(self, model: nn.Module, spec: Any) -> Tensor:
        split, seed, bs = spec
        gen = torch.Generator().manual_seed(int(seed))
        idx = self.train_set if split == "train" else self.val_set
        length = self._length(model)
        x = torch.cat([idx.random_crop(gen, length, self.sample_rate)[0] for _ in range(bs)])
        lo, hi = (float(g) for g in self.recipe.data.extra.get("gain_range", [1.0, 1.0]))
        if split == "train" and (lo, hi) != (1.0, 1.0):
            x = x * (lo + (hi - lo) * torch.rand(bs, 1, generator=gen))
        return x.to(_device(model))

    def _loss(self, model: nn.Module, wave: Tensor) -> Tensor:
        from audiotool.models.codec import WaveCodec, codec_loss
        from audiotool.models.rae import rae_loss

        net = _round_trip(model)
        return codec_loss(net, wave) if isinstance(net, WaveCodec) else rae_loss(net, wave)

    def loss(
        self, model: nn.Module, batch: Any, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        return self._loss(model, self._batch(model, batch)), {}

    def validate(self, model: nn.Module, *, max_batches: int) -> dict[str, float]:
        vals = [
            float(self._loss(model, self._batch(model, ("val", 5000 + i, 4))))
            for i in range(max_batches)
        ]
        return {self.best_metric: sum(vals) / len(vals)}


def _round_trip(model: nn.Module) -> AudioRAE | WaveCodec:
    from audiotool.models.codec import WaveCodec
    from audiotool.models.rae import AudioRAE

    if not isinstance(model, (AudioRAE, WaveCodec)):
        raise UsageError(
            f"reconstruct training needs an RAE or a codec, got {type(model).__name__}"
        )
    return model


def load_encoder_from(model: nn.Module, spec: str) -> None:
    """Copy a trained embed model's weights into an audio-branch RAE's frozen encoder, strictly
    (every key present, same shapes: the RAE's ``branch_*`` sizes must equal the embedder's).

    Raises:
        UsageError: the RAE's encoder is not an audio branch, or ``spec`` is not an embed model.
        WeightMismatchError: the sizes differ.
    """
    from audiotool.checkpoints import load_state_strict
    from audiotool.hub import load_model

    encoder = getattr(model, "encoder", None)
    if getattr(model, "encoder_kind", None) != "audio_branch" or not isinstance(encoder, nn.Module):
        raise UsageError(
            "data.extra.encoder_from needs an RAE whose encoder is 'audio_branch'",
            hint="use the rae 'audio-branch' preset (or model.overrides: {encoder: audio_branch})",
        )
    source = load_model(spec, task="embed")
    state = source.model.state_dict()
    load_state_strict(encoder, state, source=f"{spec} (encoder_from)")
    log.info("RAE encoder loaded from %s", spec)


ADAPTERS: dict[str, type[AdapterBase]] = {
    "upsample": UpsampleAdapter,
    "separate": SeparateAdapter,
    "embed": EmbedAdapter,
    "reconstruct": ReconstructAdapter,
}


def make_adapter(recipe: Recipe, data_dir: Path) -> TaskAdapter:
    """The adapter for ``recipe.task``.

    Raises:
        UsageError: an unknown task.
    """
    if recipe.task not in ADAPTERS:
        raise UsageError(f"unknown task {recipe.task!r}", hint=f"one of {sorted(ADAPTERS)}")
    return ADAPTERS[recipe.task](recipe, data_dir)

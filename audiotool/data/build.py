"""Seeded, reproducible training / validation sets made only from real recordings.

``build_dataset(kind, sources_dir, out_dir, seed=N)`` writes ``out_dir/{train,val}/...`` and
``out_dir/manifest.json`` (every written file with its sources, licence, measured bandwidth,
rate, duration, split and sha256). Splits are by *recording unit* so nothing leaks: speech by
language (each language of the Tux Paint descriptions is read by its own speakers), drums by
kit, songs by seed, instruments by note.

Kinds:

- ``upsample``: targets whose measured bandwidth is at least 18.5 kHz: Tux Paint speech
  (44.1 kHz Ogg Vorbis whose content reaches 19-20.5 kHz — lossy, so the band above ~20 kHz is
  empty; this is stated in the manifest) joined into 8 s files, and lossless Hydrogen drum
  samples. Everything is resampled 44.1 -> 48 kHz (no content above 22.05 kHz).
- ``separate``: MUSDB-style song folders (``mixture.wav``, ``vocals.wav``, ``drums.wav``,
  ``bass.wav``, ``other.wav``; 44.1 kHz stereo float32) — bass, drums and other rendered
  from seeded MIDI with the FluidR3 SoundFont (one render per stem), vocals = real speech.
  ``mixture`` = the exact sum of the stems.
- ``separate-families``: the same song layout, with stems from many *source families*: bass
  and other from three General MIDI SoundFonts (FluidR3, Csound's sf_GMbank, OPL-3 FM), drums
  from every percussion preset of those SoundFonts, the AVL Black Pearl kit and the Hydrogen
  kits (one-shot sampler, :mod:`audiotool.data.drumkit`); stems loudness-balanced. ``val/``
  holds only held-out families (:data:`HELDOUT_FAMILIES`: TimGM6mb instruments with the
  TimGM6mb kits, the AVL Red Zeppelin kit, or the Hydrogen VariBreaks / Colombo kits; Danish
  and Russian speakers), 8 s songs, each file's manifest entry naming its ``family``.
- ``embed``: labelled clips, ``split/<label>/*.wav``: speech per language, drum pieces by
  kind, SoundFont instruments.
- ``reconstruct``: short real clips (speech + rendered music).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from audiotool.audio import fit_length
from audiotool.data.sources import SOURCES, licence_of, source_files
from audiotool.errors import UsageError

log = logging.getLogger(__name__)

KINDS = ("upsample", "separate", "separate-families", "embed", "reconstruct")
#: languages whose descriptions reach >= 19 kHz (measured: see benchmarks/data/SOURCES.md)
WIDE_LANGS = ("be", "da", "es", "fr", "ml", "bg", "ro", "ru")
VAL_LANGS = ("da", "ru")
VAL_KITS = ("VariBreaks", "ColomboAcousticDrumkit")
MIN_TARGET_BANDWIDTH = 18_500.0


@dataclasses.dataclass
class Manifest:
    """What a build wrote."""

    kind: str
    seed: int
    split_unit: str
    files: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    excluded: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _read_mono(path: Path) -> tuple[np.ndarray, int]:
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1), int(rate)


def _bandwidth(x: np.ndarray, rate: int) -> float:
    from audiotool.dsp import estimate_cutoff

    return float(estimate_cutoff(torch.from_numpy(np.ascontiguousarray(x))[None], rate))


def _resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    from audiotool.audio import resample

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return resample(t[None] if t.dim() == 1 else t, src, dst).numpy().squeeze()


def _lang(path: Path) -> str:
    m = re.search(r"_desc_([a-z]{2}(?:_[a-z]{2})?)\.ogg$", path.name)
    return m.group(1) if m else ""


class _Writer:
    def __init__(self, out_dir: Path, manifest: Manifest) -> None:
        self.out, self.manifest = out_dir, manifest

    def write(
        self,
        rel: str,
        audio: np.ndarray,
        rate: int,
        *,
        split: str,
        sources: list[str],
        licence: str,
        subtype: str = "PCM_16",
        **extra: Any,
    ) -> Path:
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = audio.T if audio.ndim == 2 else audio
        sf.write(str(path), data, rate, subtype=subtype)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        self.manifest.files.append(
            {
                "file": rel,
                "split": split,
                "sample_rate": rate,
                "duration": round(data.shape[0] / rate, 4),
                "sources": sources,
                "licence": licence,
                "sha256": digest,
                **extra,
            }
        )
        return path


def _speech_by_lang(
    sources_dir: Path, manifest: Manifest, min_bandwidth: float
) -> dict[str, list[tuple[Path, np.ndarray, int, float]]]:
    out: dict[str, list[tuple[Path, np.ndarray, int, float]]] = defaultdict(list)
    for path in source_files(sources_dir, "tuxpaint"):
        lang = _lang(path)
        if lang not in WIDE_LANGS:
            continue
        x, rate = _read_mono(path)
        bw = _bandwidth(x, rate) if min_bandwidth > 0 else float("nan")
        if bw < min_bandwidth:
            manifest.excluded.append({"file": str(path), "why": f"bandwidth {bw:.0f} Hz"})
            continue
        out[lang].append((path, x, rate, bw))
    return out


def _join(clips: list[np.ndarray], rate: int, seconds: float, gap: float = 0.25) -> np.ndarray:
    parts: list[np.ndarray] = []
    for c in clips:
        parts += [c, np.zeros(int(gap * rate), dtype=np.float32)]
    x = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return x[: int(seconds * rate)]


def _peak(x: np.ndarray, level: float = 0.7) -> np.ndarray:
    p = float(np.abs(x).max()) if x.size else 0.0
    return x * (level / p) if p > 0 else x


def build_upsample(
    sources_dir: Path, out_dir: Path, *, seed: int, max_items: int, clip_seconds: float = 8.0
) -> Manifest:
    manifest = Manifest("upsample", seed, "speech: language; drums: kit")
    w = _Writer(out_dir, manifest)
    rng = np.random.default_rng(seed)
    speech = _speech_by_lang(sources_dir, manifest, MIN_TARGET_BANDWIDTH)
    for lang in sorted(speech):
        items = speech[lang]
        order = rng.permutation(len(items))
        split = "val" if lang in VAL_LANGS else "train"
        group: list[int] = []
        n = 0
        for idx in order:
            group.append(int(idx))
            if sum(len(items[i][1]) for i in group) / items[0][2] >= clip_seconds:
                x = _join([items[i][1] for i in group], items[0][2], clip_seconds)
                y = _peak(_resample(x, items[0][2], 48000))
                w.write(
                    f"{split}/speech_{lang}_{n:03d}.flac",
                    y,
                    48000,
                    split=split,
                    sources=[str(items[i][0]) for i in group],
                    licence="GPL-2",
                    bandwidth_hz=round(min(items[i][3] for i in group)),
                    lossy_source=True,
                    speaker_group=lang,
                )
                n += 1
                group = []
                if n >= max_items:
                    break
    kits: dict[str, list[Path]] = defaultdict(list)
    for path in source_files(sources_dir, "hydrogen"):
        kits[path.parent.name].append(path)
    for kit in sorted(kits):
        split = "val" if kit in VAL_KITS else "train"
        clips = []
        for path in kits[kit]:
            x, rate = _read_mono(path)
            bw = _bandwidth(x, rate)
            if bw < MIN_TARGET_BANDWIDTH or rate < 44100:
                manifest.excluded.append({"file": str(path), "why": f"bandwidth {bw:.0f} Hz"})
                continue
            clips.append((path, _resample(x, rate, 48000), bw))
        if not clips:
            continue
        order = rng.permutation(len(clips))
        for n in range(min(max_items, max(1, len(clips) // 8))):
            pick = [clips[int(i)] for i in order[n * 8 : (n + 1) * 8]]
            if not pick:
                break
            x = _peak(_join([c[1] for c in pick], 48000, clip_seconds, gap=0.05))
            safe = re.sub(r"[^A-Za-z0-9]+", "_", kit)
            w.write(
                f"{split}/drums_{safe}_{n:03d}.flac",
                x,
                48000,
                split=split,
                sources=[str(c[0]) for c in pick],
                licence=licence_of("hydrogen", pick[0][0]),
                bandwidth_hz=round(min(c[2] for c in pick)),
                lossy_source=False,
                kit=kit,
            )
    return manifest


def _vocal_stem(
    rng: np.random.Generator,
    speech: dict[str, list[tuple[Path, np.ndarray, int, float]]],
    langs: list[str],
    seconds: float,
    total: int,
    rate: int,
) -> tuple[np.ndarray, str, list[tuple[Path, np.ndarray, int, float]]]:
    """A stereo ``(2, total)`` float32 vocal stem: a language drawn from ``langs``, up to 12 of
    its clips in random order joined (random gap) to ``seconds * 2``, resampled to ``rate``,
    cropped or zero-padded to ``total`` samples. Returns ``(vocals, lang, picks)``.

    Draws from ``rng`` in a fixed order (language, permutation, gap): seeded builds depend on it.
    """
    lang = langs[int(rng.integers(0, len(langs)))]
    items = speech[lang]
    picks = [items[int(j)] for j in rng.permutation(len(items))[:12]]
    voice = _resample(
        _join([p[1] for p in picks], picks[0][2], seconds * 2, gap=float(rng.uniform(0.2, 0.8))),
        picks[0][2],
        rate,
    )
    voice = np.pad(voice[:total], (0, max(0, total - len(voice))))
    return np.stack([voice, voice]).astype(np.float32), lang, picks


def _mix(stems: dict[str, np.ndarray]) -> np.ndarray:
    """The mixture: the stems summed one after another, in the dict's order (not ``np.sum``,
    whose pairwise summation can round differently)."""
    mixture = np.zeros_like(stems["bass"])
    for v in stems.values():
        mixture = mixture + v
    return mixture


def build_separate(
    sources_dir: Path,
    out_dir: Path,
    *,
    seed: int,
    max_items: int,
    clip_seconds: float = 12.0,
    val_items: int = 8,
) -> Manifest:
    from audiotool.data.render import RATE, render_song

    manifest = Manifest("separate", seed, "song seed; vocals by language")
    sf2 = source_files(sources_dir, "fluid")[0]
    speech = _speech_by_lang(sources_dir, manifest, 0.0)
    rng = np.random.default_rng(seed)
    for i in range(max_items + val_items):
        split = "val" if i >= max_items else "train"
        langs = [lg for lg in sorted(speech) if (lg in VAL_LANGS) == (split == "val")]
        song_seed = int(rng.integers(0, 2**31))
        stems = render_song(sf2, song_seed, clip_seconds)
        vocals, lang, picks = _vocal_stem(
            rng, speech, langs, clip_seconds, stems["bass"].shape[1], RATE
        )
        gains = {
            "vocals": rng.uniform(0.5, 1.0),
            "bass": rng.uniform(0.4, 0.8),
            "drums": rng.uniform(0.4, 0.8),
            "other": rng.uniform(0.5, 1.2),
        }
        all_stems = {"vocals": vocals, **stems}
        scaled = {
            k: (_peak(v, 1.0) * gains[k] * 0.25).astype(np.float32) for k, v in all_stems.items()
        }
        mixture = _mix(scaled)
        w = _Writer(out_dir, manifest)
        song = f"{split}/song_{i:03d}"
        meta = {"song_seed": song_seed, "vocals_language": lang}
        for name, audio in {"mixture": mixture, **scaled}.items():
            w.write(
                f"{song}/{name}.wav",
                audio,
                RATE,
                split=split,
                subtype="FLOAT",
                sources=[str(sf2)]
                if name in ("bass", "drums", "other")
                else ([str(p[0]) for p in picks] if name == "vocals" else ["sum of stems"]),
                licence="MIT (FluidR3)" if name in ("bass", "drums", "other") else "GPL-2",
                **meta,
            )
    return manifest


#: SoundFonts whose melodic instruments render bass / other in training, and the held-out one
TRAIN_INSTRUMENT_FONTS = ("fluid", "csound", "opl3")
HELDOUT_INSTRUMENT_FONT = "timgm"
#: drum sources never used in training (whole families: a SoundFont's kit, an AVL kit,
#: Hydrogen kits)
HELDOUT_DRUMS = (
    "sf2:timgm",
    "avl:Red_Zeppelin",
    "hydrogen:VariBreaks",
    "hydrogen:ColomboAcousticDrumkit",
)
#: held-out validation families: name -> drum sources (instruments: the held-out SoundFont)
HELDOUT_FAMILIES = {
    "timgm6mb": ("sf2:timgm",),
    "avl-red-zeppelin": ("avl:Red_Zeppelin",),
    "hydrogen-heldout": ("hydrogen:VariBreaks", "hydrogen:ColomboAcousticDrumkit"),
}


@dataclasses.dataclass(frozen=True)
class DrumSource:
    """One drum kit: a SoundFont preset (``soundfont``, ``bank``, ``program``) or a Hydrogen
    kit folder (``kit_dir``); ``family`` is what the split holds out (e.g. ``sf2:fluid``,
    ``hydrogen:VariBreaks``)."""

    family: str
    name: str
    licence: str
    soundfont: Path | None = None
    bank: int = 128
    program: int = 0
    kit_dir: Path | None = None


def drum_sources(
    sources_dir: Path, *, synths: dict[str, tuple[Any, int]] | None = None
) -> list[DrumSource]:
    """Every drum kit the fetched sources hold: each General MIDI SoundFont's percussion
    presets (bank 128), the AVL SoundFont kits, the Hydrogen kits."""
    from audiotool.data.render import soundfont_presets

    out = []
    for key in (*TRAIN_INSTRUMENT_FONTS, HELDOUT_INSTRUMENT_FONT):
        sf2 = source_files(sources_dir, key)[0]
        for program, name in soundfont_presets(sf2, 128, synths=synths):
            if "sfx" in name.lower() or "effect" in name.lower():
                continue
            out.append(
                DrumSource(f"sf2:{key}", f"{key}/{name}", SOURCES[key].licence, sf2, 128, program)
            )
    for sf2 in source_files(sources_dir, "avldrums"):
        kit = sf2.stem.replace("_4_LV2", "")
        out.append(DrumSource(f"avl:{kit}", f"avl/{kit}", SOURCES["avldrums"].licence, sf2, 0, 0))
    kits = sorted({p.parent for p in source_files(sources_dir, "hydrogen")})
    for kit_dir in kits:
        if (kit_dir / "drumkit.xml").is_file():
            out.append(
                DrumSource(
                    f"hydrogen:{kit_dir.name}",
                    f"hydrogen/{kit_dir.name}",
                    licence_of("hydrogen", kit_dir / "x"),
                    kit_dir=kit_dir,
                )
            )
    return out


def split_drums(kits: list[DrumSource]) -> tuple[list[DrumSource], list[DrumSource]]:
    """``(train, held out)``: a kit is held out when its family is in :data:`HELDOUT_DRUMS`."""
    train = [k for k in kits if k.family not in HELDOUT_DRUMS]
    held = [k for k in kits if k.family in HELDOUT_DRUMS]
    return train, held


def pick_kit(kits: list[DrumSource], rng: np.random.Generator) -> DrumSource:
    """A kit drawn so that no source dominates: SoundFont kits and Hydrogen kits half the time
    each (when both are present), then a family uniformly, then a kit of that family."""
    kinds = sorted({k.family.startswith("hydrogen:") for k in kits})
    hydrogen = kinds[int(rng.integers(0, len(kinds)))]
    families = sorted({k.family for k in kits if k.family.startswith("hydrogen:") == hydrogen})
    family = families[int(rng.integers(0, len(families)))]
    members = [k for k in kits if k.family == family]
    return members[int(rng.integers(0, len(members)))]


def _render_drums(
    kit: DrumSource,
    notes: list[Any],
    seconds: float,
    rng: np.random.Generator,
    cache: dict,
    synths: dict[str, tuple[Any, int]],
) -> np.ndarray:
    from audiotool.data.drumkit import load_kit, render_drums
    from audiotool.data.render import render_stem

    if kit.kit_dir is not None:
        if kit.kit_dir not in cache:
            cache[kit.kit_dir] = load_kit(kit.kit_dir)
        return render_drums(cache[kit.kit_dir], notes, seconds=seconds, rng=rng)
    assert kit.soundfont is not None
    return render_stem(
        kit.soundfont,
        notes,
        program=kit.program,
        drums=True,
        seconds=seconds,
        bank=kit.bank,
        pan=float(rng.uniform(-0.2, 0.2)),
        synths=synths,
    )


def _render_melodic(
    soundfont: Path,
    notes: list[Any],
    program: int,
    seconds: float,
    rng: np.random.Generator,
    pan: float,
    fallbacks: tuple[int, ...],
    synths: dict[str, tuple[Any, int]],
) -> tuple[np.ndarray, int]:
    """Render with ``program``; a preset the font lacks (an error, or silence) retries the
    ``fallbacks``, then program 0."""
    from audiotool.data.render import RATE, render_stem

    x = np.zeros((2, int(seconds * RATE)), dtype=np.float32)
    prog = program
    for prog in (program, *fallbacks, 0):
        try:
            x = render_stem(
                soundfont,
                notes,
                program=prog,
                drums=False,
                seconds=seconds,
                pan=pan,
                synths=synths,
            )
        except RuntimeError:  # tinysoundfont: no such preset in this font
            continue
        if float(np.sqrt(np.mean(x**2))) > 1e-4:
            return x, prog
    return x, prog


def build_separate_families(
    sources_dir: Path,
    out_dir: Path,
    *,
    seed: int,
    max_items: int,
    clip_seconds: float = 10.0,
    val_seconds: float = 8.0,
    val_per_family: int = 10,
) -> Manifest:
    """Songs whose stems come from many source families, and a validation set made only of
    held-out families (see :data:`HELDOUT_FAMILIES`): instruments from a SoundFont never used in
    training, drums from kits never used in training, vocals from held-out languages.

    ``max_items`` training songs of ``clip_seconds``; ``val_per_family`` songs of
    ``val_seconds`` per held-out family. Each drum part is rendered either by a SoundFont's
    percussion preset or by the Hydrogen one-shot sampler (:mod:`audiotool.data.drumkit`).
    Every file's manifest entry records its ``family``, drum kit and instrument SoundFont.
    """
    from audiotool.data.render import RATE, varied_song

    manifest = Manifest(
        "separate-families",
        seed,
        "source family: instrument SoundFont, drum kit family; vocals by language",
    )
    w = _Writer(out_dir, manifest)
    speech = _speech_by_lang(sources_dir, manifest, 0.0)
    # one loaded synthesiser per SoundFont for the whole build (renders then depend on the
    # order they run in, which the seed fixes)
    synths: dict[str, tuple[Any, int]] = {}
    train_kits, held_kits = split_drums(drum_sources(sources_dir, synths=synths))
    fonts = {
        k: source_files(sources_dir, k)[0]
        for k in (*TRAIN_INSTRUMENT_FONTS, HELDOUT_INSTRUMENT_FONT)
    }
    rng = np.random.default_rng(seed)
    kit_cache: dict = {}
    jobs: list[tuple[str, str, list[DrumSource], list[str], float]] = []
    for _ in range(max_items):
        jobs.append(("train", "train", train_kits, list(TRAIN_INSTRUMENT_FONTS), clip_seconds))
    for family, members in HELDOUT_FAMILIES.items():
        kits = [k for k in held_kits if k.family in members]
        if not kits:
            log.warning("held-out family %s has no kit in %s", family, sources_dir)
            continue
        for _ in range(val_per_family):
            jobs.append(("val", family, kits, [HELDOUT_INSTRUMENT_FONT], val_seconds))
    counters: dict[str, int] = defaultdict(int)
    for split, family, kits, font_keys, seconds in jobs:
        song_seed = int(rng.integers(0, 2**31))
        song_rng = np.random.default_rng(song_seed)
        notes, programs = varied_song(song_rng, seconds)
        kit = pick_kit(kits, song_rng)
        font_key = font_keys[int(song_rng.integers(0, len(font_keys)))]
        sf2 = fonts[font_key]
        drums = _render_drums(kit, notes["drums"], seconds, song_rng, kit_cache, synths)
        bass, bass_prog = _render_melodic(
            sf2,
            notes["bass"],
            programs["bass"],
            seconds,
            song_rng,
            float(song_rng.uniform(-0.1, 0.1)),
            (33, 32, 38),
            synths,
        )
        other, other_prog = _render_melodic(
            sf2,
            notes["other"],
            programs["other"],
            seconds,
            song_rng,
            float(song_rng.uniform(-0.5, 0.5)),
            (0, 24, 48),
            synths,
        )
        langs = [lg for lg in sorted(speech) if (lg in VAL_LANGS) == (split == "val")]
        vocals, lang, picks = _vocal_stem(rng, speech, langs, seconds, bass.shape[1], RATE)
        raw = {"vocals": vocals, "drums": drums, "bass": bass, "other": other}
        # loudness-balanced stems (RMS, each -6..0 dB around a common level), so that no stem is
        # systematically buried; one common gain then keeps the mixture's peak below 0.95
        scaled = {}
        for k, v in raw.items():
            rms = float(np.sqrt(np.mean(v.astype(np.float64) ** 2)))
            level = 0.05 * 10 ** (rng.uniform(-6.0, 0.0) / 20)
            scaled[k] = (v * (level / rms if rms > 1e-8 else 0.0)).astype(np.float32)
        mixture = _mix(scaled)
        peak = float(np.abs(mixture).max())
        if peak > 0.95:
            scaled = {
                k: (v * np.float32(0.95 / peak)).astype(np.float32) for k, v in scaled.items()
            }
            mixture = _mix(scaled)
        n = counters[family]
        counters[family] += 1
        song = f"{split}/{family}_{n:03d}" if split == "val" else f"train/song_{n:04d}"
        meta = {
            "family": family,
            "song_seed": song_seed,
            "vocals_language": lang,
            "drum_kit": kit.name,
            "drum_family": kit.family,
            "instrument_soundfont": font_key,
            "programs": {"bass": bass_prog, "other": other_prog},
        }
        for name, audio in {"mixture": mixture, **scaled}.items():
            if name == "drums":
                srcs, lic = [kit.name], kit.licence
            elif name in ("bass", "other"):
                srcs, lic = [str(sf2)], SOURCES[font_key].licence
            elif name == "vocals":
                srcs, lic = [str(p[0]) for p in picks], "GPL-2"
            else:
                srcs, lic = ["sum of stems"], "see the stems"
            w.write(
                f"{song}/{name}.wav",
                audio,
                RATE,
                split=split,
                subtype="FLOAT",
                sources=srcs,
                licence=lic,
                **meta,
            )
        if sum(counters.values()) % 25 == 0:
            log.info("separate-families: %d of %d songs", sum(counters.values()), len(jobs))
    return manifest


def build_embed(
    sources_dir: Path, out_dir: Path, *, seed: int, max_items: int, clip_seconds: float = 2.0
) -> Manifest:
    from audiotool.data.render import RATE, render_note

    manifest = Manifest("embed", seed, "speech: recording; drums: kit; instruments: note")
    w = _Writer(out_dir, manifest)
    rng = np.random.default_rng(seed)
    speech = _speech_by_lang(sources_dir, manifest, 0.0)
    for lang in ("be", "es", "fr", "ro", "ru", "bg"):
        items = speech.get(lang, [])
        order = rng.permutation(len(items))[:max_items]
        for n, idx in enumerate(order):
            split = "val" if n % 4 == 0 else "train"
            path, x, rate, _ = items[int(idx)]
            w.write(
                f"{split}/speech_{lang}/{n:03d}.wav",
                _peak(fit_length(x, int(clip_seconds * rate))),
                rate,
                split=split,
                sources=[str(path)],
                licence="GPL-2",
            )
    pieces: dict[str, list[Path]] = defaultdict(list)
    for path in source_files(sources_dir, "hydrogen"):
        name = path.name.lower()
        for label, keys in (
            ("kick", ("kick", "bassdrum", "bd")),
            ("snare", ("snare", "sd")),
            ("hihat", ("hat", "hh")),
            ("cymbal", ("crash", "ride", "cym")),
        ):
            if any(k in name for k in keys):
                pieces[label].append(path)
                break
    for label in sorted(pieces):
        paths = pieces[label]
        order = rng.permutation(len(paths))[:max_items]
        for n, idx in enumerate(order):
            path = paths[int(idx)]
            split = "val" if path.parent.name in VAL_KITS else "train"
            x, rate = _read_mono(path)
            w.write(
                f"{split}/drum_{label}/{n:03d}.wav",
                _peak(fit_length(x, int(clip_seconds * rate))),
                rate,
                split=split,
                sources=[str(path)],
                licence=licence_of("hydrogen", path),
            )
    sf2 = source_files(sources_dir, "fluid")[0]
    for label, program in (
        ("piano", 0),
        ("guitar", 25),
        ("violin", 40),
        ("trumpet", 56),
        ("flute", 73),
        ("organ", 19),
    ):
        for n in range(min(max_items, 24)):
            pitch = int(48 + (n * 5) % 30)
            split = "val" if n % 4 == 0 else "train"
            x = render_note(
                sf2,
                program=program,
                pitch=pitch,
                velocity=int(rng.integers(60, 120)),
                seconds=clip_seconds,
            ).mean(0)
            w.write(
                f"{split}/inst_{label}/{n:03d}.wav",
                _peak(x),
                RATE,
                split=split,
                sources=[str(sf2)],
                licence="MIT (FluidR3)",
                pitch=pitch,
            )
    return manifest


def build_reconstruct(
    sources_dir: Path, out_dir: Path, *, seed: int, max_items: int, clip_seconds: float = 4.0
) -> Manifest:
    from audiotool.data.render import RATE, render_song

    manifest = Manifest("reconstruct", seed, "speech: language; music: song seed")
    w = _Writer(out_dir, manifest)
    rng = np.random.default_rng(seed)
    speech = _speech_by_lang(sources_dir, manifest, 0.0)
    for lang in sorted(speech):
        split = "val" if lang in VAL_LANGS else "train"
        items = speech[lang]
        order = rng.permutation(len(items))
        for n in range(min(max_items // len(speech) + 1, len(items) // 4)):
            group = [items[int(i)] for i in order[n * 4 : (n + 1) * 4]]
            x = _peak(_join([g[1] for g in group], group[0][2], clip_seconds))
            w.write(
                f"{split}/speech_{lang}_{n:03d}.wav",
                _resample(x, group[0][2], 16000),
                16000,
                split=split,
                sources=[str(g[0]) for g in group],
                licence="GPL-2",
            )
    sf2 = source_files(sources_dir, "fluid")[0]
    for n in range(max(4, max_items // 4)):
        split = "val" if n % 5 == 0 else "train"
        stems = render_song(sf2, int(rng.integers(0, 2**31)), clip_seconds)
        mix = _peak(sum(stems.values()).mean(0))  # type: ignore[union-attr]
        w.write(
            f"{split}/music_{n:03d}.wav",
            _resample(mix, RATE, 16000),
            16000,
            split=split,
            sources=[str(sf2)],
            licence="MIT (FluidR3)",
        )
    return manifest


BUILDERS: dict[str, Callable[..., Manifest]] = {
    "upsample": build_upsample,
    "separate": build_separate,
    "separate-families": build_separate_families,
    "embed": build_embed,
    "reconstruct": build_reconstruct,
}


def build_dataset(
    kind: str, sources_dir: Path, out_dir: Path, *, seed: int = 0, max_items: int = 40
) -> Manifest:
    """Build one dataset (see the module docstring); returns and writes its manifest."""
    if kind not in BUILDERS:
        raise UsageError(f"dataset kind must be one of {list(KINDS)}, got {kind!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UsageError(f"{out_dir} is not empty", hint="choose a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = BUILDERS[kind](Path(sources_dir), out_dir, seed=seed, max_items=max_items)
    info = manifest.to_json()
    info["sources"] = {k: dataclasses.asdict(v) for k, v in SOURCES.items()}
    (out_dir / "manifest.json").write_text(json.dumps(info, indent=1) + "\n")
    return manifest

"""Slakh-style multi-track rendering: seeded songs, one SoundFont render per stem.

A song is a seeded chord progression with a bass line, a chord part ("other": piano / guitar /
strings / organ...) and a drum pattern (General MIDI percussion). Each stem is rendered alone
with ``tinysoundfont`` (pure SoundFont synthesis, deterministic), so the ground truth is exact;
the mixture is the sum of the stems.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from audiotool.errors import UsageError

RATE = 44100
#: General MIDI programs for the "other" stem (0-based)
OTHER_PROGRAMS = (0, 4, 24, 25, 48, 16, 19, 61, 73, 80, 88, 11)
BASS_PROGRAMS = (32, 33, 34, 35, 38)
KICK, SNARE, HAT_CLOSED, HAT_OPEN, CRASH, TOM = 36, 38, 42, 46, 49, 45


@dataclasses.dataclass(frozen=True)
class Note:
    start: float  # seconds
    end: float
    pitch: int
    velocity: int


def _song_notes(rng: np.random.Generator, seconds: float) -> dict[str, list[Note]]:
    return _song_parts(rng, seconds)[0]


def _song_parts(rng: np.random.Generator, seconds: float) -> tuple[dict[str, list[Note]], float]:
    bpm = float(rng.uniform(85, 140))
    beat = 60.0 / bpm
    key = int(rng.integers(0, 12))
    minor = bool(rng.integers(0, 2))
    scale = [0, 2, 3, 5, 7, 8, 10] if minor else [0, 2, 4, 5, 7, 9, 11]
    degrees = [int(d) for d in rng.choice([0, 3, 4, 5, 1], size=4)]
    bars = int(seconds / (4 * beat)) + 1
    notes: dict[str, list[Note]] = {"bass": [], "other": [], "drums": []}
    style = int(rng.integers(0, 3))
    for bar in range(bars):
        deg = degrees[bar % 4]
        root = 36 + key + scale[deg]
        chord = [48 + key + scale[(deg + i) % 7] + 12 * ((deg + i) // 7) for i in (0, 2, 4)]
        t0 = bar * 4 * beat
        for b in range(4):  # bass: roots and fifths
            pitch = root + (7 if b == 2 and rng.random() < 0.5 else 0)
            notes["bass"].append(
                Note(t0 + b * beat, t0 + (b + 0.9) * beat, pitch, int(rng.integers(85, 115)))
            )
        if style == 0:  # sustained chords
            for p in chord:
                notes["other"].append(Note(t0, t0 + 4 * beat * 0.95, p, int(rng.integers(60, 90))))
        else:  # arpeggio / comping
            for step in range(8):
                p = chord[step % 3] + (12 if style == 2 and step >= 4 else 0)
                notes["other"].append(
                    Note(
                        t0 + step * beat / 2,
                        t0 + (step + 0.9) * beat / 2,
                        p,
                        int(rng.integers(60, 100)),
                    )
                )
        for step in range(8):
            t = t0 + step * beat / 2
            notes["drums"].append(
                Note(
                    t,
                    t + 0.1,
                    HAT_OPEN if step == 7 and rng.random() < 0.3 else HAT_CLOSED,
                    int(rng.integers(50, 90)),
                )
            )
            if step in (0, 4) or (step == 5 and rng.random() < 0.4):
                notes["drums"].append(Note(t, t + 0.2, KICK, int(rng.integers(95, 125))))
            if step in (2, 6):
                notes["drums"].append(Note(t, t + 0.2, SNARE, int(rng.integers(90, 120))))
        if bar % 4 == 0:
            notes["drums"].append(Note(t0, t0 + 1.0, CRASH, 90))
    return notes, bpm


#: General MIDI percussion notes used by :func:`drum_groove`
RIDE, PEDAL_HAT, CLAP, SIDE_STICK, TOMS = 51, 44, 39, 37, (41, 43, 45, 47, 48, 50)


def drum_groove(rng: np.random.Generator, seconds: float, bpm: float) -> list[Note]:
    """A seeded drum part (General MIDI notes) in one of six styles: rock eighths, sixteenth
    hats, ride swing, half time, four on the floor, sparse percussion; tom fills and crashes
    at phrase ends, random velocities and small timing offsets."""
    beat = 60.0 / bpm
    style = int(rng.integers(0, 6))
    bars = int(seconds / (4 * beat)) + 1
    cymbal = RIDE if style == 2 else (PEDAL_HAT if rng.random() < 0.15 else HAT_CLOSED)
    sub = 4 if style == 1 else (3 if style == 2 else 2)  # cymbal hits per beat
    notes: list[Note] = []

    def hit(t: float, pitch: int, lo: int, hi: int, length: float = 0.15) -> None:
        t = max(0.0, t + float(rng.normal(0, 0.004)))
        notes.append(Note(t, t + length, pitch, int(rng.integers(lo, hi))))

    for bar in range(bars):
        t0 = bar * 4 * beat
        fill = bar % 4 == 3 and rng.random() < 0.5
        for b in range(4):
            tb = t0 + b * beat
            if fill and b >= 2:
                for k in range(4):
                    tom = TOMS[int(rng.integers(0, len(TOMS)))]
                    hit(tb + k * beat / 4, tom, 70, 120, 0.3)
                continue
            if style != 5:
                for k in range(sub):
                    if style == 2 and k == 1:
                        continue
                    open_hat = k == sub - 1 and b == 3 and rng.random() < 0.3
                    hit(tb + k * beat / sub, HAT_OPEN if open_hat else cymbal, 40, 95)
            if style == 3:  # half time: kick on 1, snare on 3
                if b == 0 or (b == 2 and rng.random() < 0.3):
                    hit(tb, KICK, 95, 127, 0.3)
                if b == 2:
                    hit(tb, SNARE, 90, 125, 0.3)
            elif style == 4:  # four on the floor, clap / snare on 2 and 4
                hit(tb, KICK, 100, 127, 0.3)
                if b in (1, 3):
                    hit(tb, CLAP if rng.random() < 0.5 else SNARE, 85, 120, 0.3)
            elif style == 5:  # sparse percussion
                if rng.random() < 0.7:
                    hit(tb, KICK if b % 2 == 0 else SIDE_STICK, 70, 115, 0.2)
                if rng.random() < 0.5:
                    hit(tb + beat / 2, TOMS[int(rng.integers(0, len(TOMS)))], 50, 100, 0.3)
            else:
                if b in (0, 2) or rng.random() < 0.2:
                    hit(tb, KICK, 95, 127, 0.3)
                if rng.random() < 0.25:
                    hit(tb + beat / 2, KICK, 80, 115, 0.3)
                if b in (1, 3):
                    hit(tb, SNARE, 90, 125, 0.3)
                elif rng.random() < 0.1:
                    hit(tb + 3 * beat / 4, SNARE, 30, 60, 0.2)  # ghost note
        if bar % 4 == 0 or (bar % 2 == 0 and rng.random() < 0.3):
            hit(t0, CRASH, 80, 120, 1.0)
    return sorted(notes, key=lambda n: n.start)


def varied_song(
    rng: np.random.Generator, seconds: float
) -> tuple[dict[str, list[Note]], dict[str, int]]:
    """Notes of a seeded song with a :func:`drum_groove` drum part, and General MIDI programs
    for ``bass`` and ``other`` drawn from wide sets (all bass programs; any melodic program
    below the sound effects, bass excluded), the other part moved by -1..+1 octaves."""
    notes, bpm = _song_parts(rng, seconds)
    scale = float(rng.uniform(0.75, 1.35))  # wider tempo range than the plain songs
    octave = 12 * int(rng.integers(-1, 2))
    notes = {
        k: [
            Note(
                n.start / scale,
                n.end / scale,
                int(np.clip(n.pitch + (octave if k == "other" else 0), 24, 100)),
                n.velocity,
            )
            for n in v
            if n.start / scale < seconds
        ]
        for k, v in notes.items()
    }
    notes["drums"] = drum_groove(rng, seconds, bpm * scale)
    melodic = [p for p in range(0, 96) if not 32 <= p < 40]
    programs = {"bass": int(rng.integers(32, 40)), "other": int(rng.choice(melodic))}
    return notes, programs


def render_stem(
    soundfont: Path,
    notes: list[Note],
    *,
    program: int,
    drums: bool,
    seconds: float,
    pan: float = 0.0,
    bank: int | None = None,
    synths: dict[str, tuple[Any, int]] | None = None,
) -> np.ndarray:
    """Render ``notes`` with one instrument: float32 ``(2, seconds * RATE)``.

    ``bank`` defaults to 128 for drums (the General MIDI percussion bank; ``program`` picks the
    kit there) and 0 otherwise. ``synths``: a cache of loaded synthesisers to reuse (loading
    FluidR3 takes about a second); the output then depends on what the synthesiser rendered
    before (a build is still reproducible: same renders in the same order), so by default a
    fresh synthesiser makes every render a pure function of its arguments.
    """
    synth, sfid = _synth(str(soundfont), synths)
    if bank is None:
        bank = 128 if drums else 0
    synth.program_select(0, sfid, bank, program, is_drums=drums)
    events = sorted(
        [(n.start, 1, n) for n in notes] + [(n.end, 0, n) for n in notes],
        key=lambda e: (e[0], e[1]),
    )
    total = int(seconds * RATE)
    out = np.zeros((total, 2), dtype=np.float32)
    pos = 0
    for t, kind, note in events:
        sample = min(total, int(round(t * RATE)))
        if sample > pos:
            buf = np.frombuffer(synth.generate(sample - pos), dtype=np.float32)
            out[pos:sample] = buf.reshape(-1, 2)
            pos = sample
        if pos >= total:
            break
        if kind == 1:
            synth.noteon(0, note.pitch, note.velocity)
        else:
            synth.noteoff(0, note.pitch)
    if pos < total:
        out[pos:] = np.frombuffer(synth.generate(total - pos), dtype=np.float32).reshape(-1, 2)
    synth.sounds_off(0)
    synth.generate(64)  # flush the released voices before the next render
    left, right = np.sqrt(0.5 * (1 - pan)), np.sqrt(0.5 * (1 + pan))
    out[:, 0] *= left * np.sqrt(2)
    out[:, 1] *= right * np.sqrt(2)
    return out.T.copy()


def _synth(soundfont: str, cache: dict[str, tuple[Any, int]] | None) -> tuple[Any, int]:
    """A synthesiser with ``soundfont`` loaded: from ``cache`` when given, else a fresh one."""
    try:
        import tinysoundfont
    except ImportError as exc:
        raise UsageError(
            "rendering stems needs tinysoundfont",
            hint="pip install --no-deps tinysoundfont (its PyAudio dependency is not needed)",
        ) from exc
    if cache is not None and soundfont in cache:
        return cache[soundfont]
    synth = tinysoundfont.Synth(samplerate=RATE)
    loaded = (synth, synth.sfload(soundfont))
    if cache is not None:
        cache[soundfont] = loaded
    return loaded


def soundfont_presets(
    soundfont: Path, bank: int, *, synths: dict[str, tuple[Any, int]] | None = None
) -> list[tuple[int, str]]:
    """The ``(program, name)`` presets of ``bank`` in ``soundfont``."""
    synth, sfid = _synth(str(soundfont), synths)
    out = []
    for program in range(128):
        name = synth.sfpreset_name(sfid, bank, program)
        if name:
            out.append((program, str(name)))
    return out


def render_song(soundfont: Path, seed: int, seconds: float) -> dict[str, np.ndarray]:
    """Stems ``bass``, ``drums``, ``other`` of a seeded song: ``{stem: (2, T)}`` float32."""
    rng = np.random.default_rng(seed)
    notes = _song_notes(rng, seconds)
    return {
        "bass": render_stem(
            soundfont,
            notes["bass"],
            program=int(rng.choice(BASS_PROGRAMS)),
            drums=False,
            seconds=seconds,
            pan=float(rng.uniform(-0.1, 0.1)),
        ),
        "drums": render_stem(
            soundfont,
            notes["drums"],
            program=0,
            drums=True,
            seconds=seconds,
            pan=float(rng.uniform(-0.2, 0.2)),
        ),
        "other": render_stem(
            soundfont,
            notes["other"],
            program=int(rng.choice(OTHER_PROGRAMS)),
            drums=False,
            seconds=seconds,
            pan=float(rng.uniform(-0.5, 0.5)),
        ),
    }


def render_note(
    soundfont: Path, *, program: int, pitch: int, velocity: int, seconds: float, drums: bool = False
) -> np.ndarray:
    """One note (for labelled instrument clips): ``(2, T)``."""
    note = Note(0.02, seconds * 0.8, pitch, velocity)
    return render_stem(soundfont, [note], program=program, drums=drums, seconds=seconds)

"""Slakh-style multi-track rendering: seeded songs, one SoundFont render per stem.

A song is a seeded chord progression with a bass line, a chord part ("other": piano / guitar /
strings / organ...) and a drum pattern (General MIDI percussion). Each stem is rendered alone
with ``tinysoundfont`` (pure SoundFont synthesis, deterministic), so the ground truth is exact;
the mixture is the sum of the stems.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

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
    return notes


def render_stem(
    soundfont: Path,
    notes: list[Note],
    *,
    program: int,
    drums: bool,
    seconds: float,
    pan: float = 0.0,
) -> np.ndarray:
    """Render ``notes`` with one instrument: float32 ``(2, seconds * RATE)``."""
    try:
        import tinysoundfont
    except ImportError as exc:
        raise UsageError(
            "rendering stems needs tinysoundfont",
            hint="pip install --no-deps tinysoundfont (its PyAudio dependency is not needed)",
        ) from exc
    synth = tinysoundfont.Synth(samplerate=RATE)
    sfid = synth.sfload(str(soundfont))
    synth.program_select(0, sfid, 128 if drums else 0, 0 if drums else program, is_drums=drums)
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
    left, right = np.sqrt(0.5 * (1 - pan)), np.sqrt(0.5 * (1 + pan))
    out[:, 0] *= left * np.sqrt(2)
    out[:, 1] *= right * np.sqrt(2)
    return out.T.copy()


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

"""A one-shot sampler that plays General MIDI drum parts with Hydrogen drum kits.

A Hydrogen kit is a folder with ``drumkit.xml`` (instruments, each with velocity layers that
name a sample file) and the samples. :func:`load_kit` maps every General MIDI percussion note
that the songs use to one kit instrument, by keywords in the instrument's name (kick / snare /
hat / tom / crash / ride ...); a role no name matches borrows a seeded pick among the kit's
unused instruments, so hand-percussion kits (djembes, cajon) still play every part.
:func:`render_drums` mixes the one-shots at the notes' times, velocity layer by velocity.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import soundfile as sf

from audiotool.data.render import RATE, Note
from audiotool.errors import InputError

log = logging.getLogger(__name__)

#: General MIDI note -> (role, name patterns in order of preference, patterns to avoid)
GM_ROLES: dict[int, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    36: ("kick", (r"kick", r"bass ?drum", r"\bbd\b", r"\bkik"), ()),
    38: ("snare", (r"snare", r"\bsd\b"), (r"roll", r"rim", r"stick")),
    37: ("side stick", (r"stick", r"rim"), ()),
    39: ("clap", (r"clap", r"snap"), ()),
    42: ("closed hat", (r"(hat|hh).*(clos|\bcl\b|tight)", r"(clos|\bcl\b).*(hat|hh)"), ()),
    44: ("pedal hat", (r"(hat|hh).*(pedal|\bpd\b|foot)", r"pedal"), ()),
    46: ("open hat", (r"(hat|hh).*(open|\bop\b)", r"open.*(hat|hh)"), ()),
    49: ("crash", (r"crash", r"splash", r"china", r"cymbal"), ()),
    51: ("ride", (r"ride",), (r"bell", r"cup")),
    41: ("low tom", (r"(floor|low).*tom", r"tom.*(floor|low)"), ()),
    43: ("low tom", (r"(floor|low).*tom", r"tom.*(floor|low)"), ()),
    45: ("mid tom", (r"mid.*tom", r"tom.*(mid|2)"), ()),
    47: ("mid tom", (r"mid.*tom", r"tom.*(mid|2)"), ()),
    48: ("high tom", (r"(hi|high).*tom", r"tom.*(hi|high|1)"), ()),
    50: ("high tom", (r"(hi|high).*tom", r"tom.*(hi|high|1)"), ()),
}
#: fall-backs between roles when a kit lacks one (e.g. no pedal hat: use the closed hat)
FALLBACK = {44: 42, 46: 42, 51: 42, 37: 38, 39: 38, 49: 51, 43: 41, 47: 45, 50: 48}
_TOM_FALLBACK = (r"tom",)


@dataclasses.dataclass(frozen=True)
class Layer:
    low: float  # velocity range, 0..1
    high: float
    path: Path


@dataclasses.dataclass(frozen=True)
class Instrument:
    name: str
    layers: tuple[Layer, ...]


@dataclasses.dataclass
class Kit:
    """A loaded kit: its name, the instruments, and the General MIDI note -> instrument map."""

    name: str
    instruments: list[Instrument]
    mapping: dict[int, Instrument]
    _cache: dict[Path, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    def sample(self, path: Path) -> np.ndarray:
        """One-shot ``(2, T)`` float32 at :data:`RATE` (read once)."""
        if path not in self._cache:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
            x = data.T
            if x.shape[0] == 1:
                x = np.repeat(x, 2, axis=0)
            x = x[:2]
            if rate != RATE:
                import torch

                from audiotool.audio import resample

                x = resample(torch.from_numpy(np.ascontiguousarray(x)), rate, RATE).numpy()
            self._cache[path] = np.ascontiguousarray(x[:, : 3 * RATE], dtype=np.float32)
        return self._cache[path]


def _strip_ns(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(node: ET.Element, name: str) -> ET.Element | None:
    for c in node:
        if _strip_ns(c.tag) == name:
            return c
    return None


def parse_drumkit(kit_dir: Path) -> list[Instrument]:
    """The instruments of a Hydrogen kit folder that have at least one existing sample."""
    xml = Path(kit_dir) / "drumkit.xml"
    if not xml.is_file():
        raise InputError(f"{kit_dir}: no drumkit.xml (not a Hydrogen drum kit)")
    root = ET.parse(xml).getroot()
    out = []
    for node in root.iter():
        if _strip_ns(node.tag) != "instrument":
            continue
        name_node = _child(node, "name")
        name = (name_node.text or "").strip() if name_node is not None else ""
        layers = []
        for sub in node.iter():
            if _strip_ns(sub.tag) not in ("layer", "instrument"):
                continue
            fname = _child(sub, "filename")
            if fname is None or not (fname.text or "").strip():
                continue
            path = Path(kit_dir) / (fname.text or "").strip()
            if not path.is_file():
                continue
            lo, hi = _child(sub, "min"), _child(sub, "max")
            layers.append(
                Layer(
                    float(lo.text) if lo is not None and lo.text else 0.0,
                    float(hi.text) if hi is not None and hi.text else 1.0,
                    path,
                )
            )
        if layers:
            out.append(Instrument(name, tuple(layers)))
    return out


def map_gm_notes(instruments: list[Instrument], rng: np.random.Generator) -> dict[int, Instrument]:
    """General MIDI note -> instrument, by name (see :data:`GM_ROLES`), then fall-backs, then
    a seeded pick among the instruments no name claimed."""
    mapping: dict[int, Instrument] = {}
    lowered = [(i, i.name.lower()) for i in instruments]
    for note, (_, patterns, avoid) in GM_ROLES.items():
        for pattern in patterns:
            hits = [
                i
                for i, n in lowered
                if re.search(pattern, n) and not any(re.search(a, n) for a in avoid)
            ]
            if hits:
                mapping[note] = hits[0] if note != 38 else min(hits, key=lambda i: len(i.name))
                break
    for note, other in FALLBACK.items():
        if note not in mapping and other in mapping:
            mapping[note] = mapping[other]
    toms = [i for i, n in lowered if re.search(_TOM_FALLBACK[0], n)]
    for note in (41, 43, 45, 47, 48, 50):
        if note not in mapping and toms:
            mapping[note] = toms[min(len(toms) - 1, (note - 41) * len(toms) // 10)]
    unused = [i for i in instruments if i not in mapping.values()] or list(instruments)
    for note in GM_ROLES:
        if note not in mapping and unused:
            mapping[note] = unused[int(rng.integers(0, len(unused)))]
    return mapping


def load_kit(kit_dir: Path, *, seed: int = 0) -> Kit:
    """Parse a Hydrogen kit and map the General MIDI notes onto it."""
    instruments = parse_drumkit(kit_dir)
    if not instruments:
        raise InputError(f"{kit_dir}: no instrument with a sample file")
    mapping = map_gm_notes(instruments, np.random.default_rng(seed))
    log.debug(
        "kit %s: %s",
        Path(kit_dir).name,
        {GM_ROLES[n][0]: i.name for n, i in mapping.items()},
    )
    return Kit(Path(kit_dir).name, instruments, mapping)


def render_drums(
    kit: Kit, notes: list[Note], *, seconds: float, rng: np.random.Generator
) -> np.ndarray:
    """Mix the kit's one-shots at ``notes``: float32 ``(2, seconds * RATE)``.

    The layer is the one whose velocity range holds the note's velocity (a seeded pick among
    several); level follows velocity; each instrument gets a fixed random pan.
    """
    total = int(seconds * RATE)
    out = np.zeros((2, total), dtype=np.float32)
    pans: dict[str, float] = {}
    for note in notes:
        inst = kit.mapping.get(note.pitch)
        if inst is None:
            continue
        v = note.velocity / 127.0
        layers = [la for la in inst.layers if la.low <= v <= la.high] or list(inst.layers)
        x = kit.sample(layers[int(rng.integers(0, len(layers)))].path)
        start = int(round(note.start * RATE))
        if start >= total:
            continue
        n = min(x.shape[1], total - start)
        pan = pans.setdefault(inst.name, float(rng.uniform(-0.4, 0.4)))
        gain = (0.25 + 0.75 * v) * np.array([[np.sqrt(1 - pan)], [np.sqrt(1 + pan)]])
        out[:, start : start + n] += (x[:, :n] * gain).astype(np.float32)
    return out

"""The Hydrogen one-shot sampler on tiny synthetic kits written in Hydrogen's layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiotool.data.drumkit import load_kit, map_gm_notes, parse_drumkit, render_drums
from audiotool.data.render import RATE, Note, drum_groove
from audiotool.errors import InputError

ROCK = ("Kick", "Snare Rock", "Snare Roll", "Closed HH", "Open HH", "Crash", "Ride Jazz", "Tom Hi")


def _write_kit(folder: Path, names: tuple[str, ...], *, layers: int = 1, rate: int = RATE) -> Path:
    """A Hydrogen kit: drumkit.xml (namespaced like Hydrogen's) and one decaying-noise
    one-shot per instrument and layer, each instrument at its own frequency."""
    folder.mkdir(parents=True)
    parts = []
    for i, name in enumerate(names):
        layer_xml = []
        for j in range(layers):
            t = np.arange(rate // 4) / rate
            hit = np.sin(2 * np.pi * (100 + 150 * i) * t) * np.exp(-t * 20) * (0.3 + 0.3 * j)
            fname = f"{i}_{j}.flac"
            sf.write(folder / fname, hit.astype(np.float32), rate)
            lo, hi = j / layers, (j + 1) / layers
            layer_xml.append(
                f"<layer><filename>{fname}</filename><min>{lo}</min><max>{hi}</max></layer>"
            )
        parts.append(
            f"<instrument><id>{i}</id><name>{name}</name>"
            f"<instrumentComponent>{''.join(layer_xml)}</instrumentComponent></instrument>"
        )
    xml = (
        '<drumkit_info xmlns="http://www.hydrogen-music.org/drumkit"><name>t</name>'
        f"<instrumentList>{''.join(parts)}</instrumentList></drumkit_info>"
    )
    (folder / "drumkit.xml").write_text(xml)
    return folder


def test_gm_notes_map_to_instruments_by_name(tmp_path: Path) -> None:
    kit = load_kit(_write_kit(tmp_path / "rock", ROCK))
    names = {note: inst.name for note, inst in kit.mapping.items()}
    assert names[36] == "Kick"
    assert names[38] == "Snare Rock"  # not the roll
    assert names[42] == "Closed HH"
    assert names[46] == "Open HH"
    assert names[44] == "Closed HH"  # no pedal hat: falls back to the closed hat
    assert names[49] == "Crash"
    assert names[51] == "Ride Jazz"
    assert names[48] == "Tom Hi"


def test_every_note_is_played_by_a_hand_percussion_kit(tmp_path: Path) -> None:
    names = ("Djembe Slap", "Djembe Bass", "Cajon Thump", "Shaker")
    instruments = parse_drumkit(_write_kit(tmp_path / "hand", names))
    mapping = map_gm_notes(instruments, np.random.default_rng(0))
    assert set(mapping) >= {36, 38, 42, 46, 49, 51, 45}
    assert {i.name for i in mapping.values()} <= set(names)


def test_render_places_velocity_layers_at_note_times(tmp_path: Path) -> None:
    kit = load_kit(_write_kit(tmp_path / "rock", ROCK, layers=2, rate=22050))
    notes = [Note(0.5, 0.6, 36, 20), Note(1.5, 1.6, 36, 120)]
    x = render_drums(kit, notes, seconds=2.0, rng=np.random.default_rng(0))
    assert x.shape == (2, 2 * RATE) and x.dtype == np.float32
    quiet, loud = np.abs(x[:, :RATE]).max(), np.abs(x[:, RATE:]).max()
    assert np.abs(x[:, : int(0.49 * RATE)]).max() == 0.0  # nothing before the first hit
    assert quiet > 0 and loud > 2 * quiet  # soft layer + velocity vs loud layer


def test_groove_renders_non_silent_drums(tmp_path: Path) -> None:
    kit = load_kit(_write_kit(tmp_path / "rock", ROCK))
    rng = np.random.default_rng(3)
    notes = drum_groove(rng, 4.0, 120.0)
    assert notes and all(n.pitch in kit.mapping for n in notes)
    x = render_drums(kit, notes, seconds=4.0, rng=rng)
    frames = np.sqrt((x.reshape(2, -1, RATE // 4) ** 2).mean(axis=(0, 2)))
    assert (frames > 1e-3).sum() >= 12  # sound in most quarter seconds


def test_not_a_kit(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"drumkit\.xml"):
        parse_drumkit(tmp_path)

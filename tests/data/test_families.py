"""The family-split separation builder on a tiny source tree: SoundFonts written by
:mod:`tests.data.tiny_sf2`, Hydrogen kits, speech; held-out families never reach train."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiotool.data.build import (
    HELDOUT_DRUMS,
    HELDOUT_FAMILIES,
    DrumSource,
    build_separate_families,
    drum_sources,
    pick_kit,
    split_drums,
)
from tests.data.test_build import _speech_like
from tests.data.test_drumkit import ROCK, _write_kit
from tests.data.tiny_sf2 import write_tiny_sf2

pytest.importorskip("tinysoundfont")

FONTS = {
    "fluid-soundfont-gm": "usr/share/sounds/sf2/FluidR3_GM.sf2",
    "csound-soundfont": "usr/share/sounds/sf2/sf_GMbank.sf2",
    "opl3-soundfont": "usr/share/sounds/sf2/OPL-3_FM_128M.sf2",
    "timgm6mb-soundfont": "usr/share/sounds/sf2/TimGM6mb.sf2",
    "avldrums.lv2-soundfont": "usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2",
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src")
    stamps = root / "tuxpaint-stamps-default" / "usr/share/tuxpaint/stamps/animals"
    stamps.mkdir(parents=True)
    for lang in ("be", "es", "da", "ru"):
        for i in range(3):
            sf.write(
                stamps / f"thing{i}_desc_{lang}.ogg",
                _speech_like(44100, 1.0, hash((lang, i)) % 1000, full_band=True),
                44100,
                format="OGG",
            )
    for package, rel in FONTS.items():
        write_tiny_sf2(root / package / rel)
    avl = root / "avldrums.lv2-soundfont/usr/share/sounds/sf2"
    (avl / "Red_Zeppelin_4_LV2.sf2").write_bytes((avl / "Black_Pearl_4_LV2.sf2").read_bytes())
    kits = root / "hydrogen-drumkits" / "usr/share/hydrogen/data/drumkits"
    for kit in ("KitA", "KitB", "VariBreaks", "ColomboAcousticDrumkit"):
        _write_kit(kits / kit, ROCK)
    return root


def test_drum_split_holds_out_whole_families(sources: Path) -> None:
    kits = drum_sources(sources)
    families = {k.family for k in kits}
    assert families >= {"sf2:fluid", "sf2:timgm", "avl:Black_Pearl", "avl:Red_Zeppelin"}
    assert {"hydrogen:KitA", "hydrogen:VariBreaks"} <= families
    train, held = split_drums(kits)
    assert train and held
    assert not {k.family for k in train} & set(HELDOUT_DRUMS)
    assert {k.family for k in held} <= set(HELDOUT_DRUMS)
    rng = np.random.default_rng(0)
    picks = {pick_kit(train, rng).family for _ in range(200)}
    assert not picks & set(HELDOUT_DRUMS)
    assert any(p.startswith("hydrogen:") for p in picks)
    assert any(not p.startswith("hydrogen:") for p in picks)


def test_pick_kit_balances_sources() -> None:
    many = [DrumSource("sf2:big", f"big/{i}", "MIT") for i in range(30)]
    few = [DrumSource("hydrogen:one", "hydrogen/one", "GPL-2")]
    rng = np.random.default_rng(1)
    share = np.mean([pick_kit(many + few, rng).family == "hydrogen:one" for _ in range(400)])
    assert 0.4 < share < 0.6  # not 1 in 31


def test_build_separate_families(tmp_path: Path, sources: Path) -> None:
    out = tmp_path / "sep"
    m = build_separate_families(
        sources, out, seed=0, max_items=4, clip_seconds=1.0, val_seconds=1.0, val_per_family=2
    )
    songs: dict[str, dict] = {}
    for f in m.files:
        songs[str(Path(f["file"]).parent)] = f
        assert f["family"] and f["drum_family"] and f["instrument_soundfont"]
    train = [f for f in songs.values() if f["split"] == "train"]
    val = [f for f in songs.values() if f["split"] == "val"]
    assert len(train) == 4 and len(val) == 2 * len(HELDOUT_FAMILIES)
    for f in train:
        assert f["drum_family"] not in HELDOUT_DRUMS
        assert f["instrument_soundfont"] != "timgm"
        assert f["vocals_language"] not in ("da", "ru")
    for f in val:
        assert f["drum_family"] in HELDOUT_FAMILIES[f["family"]]
        assert f["instrument_soundfont"] == "timgm"
        assert f["vocals_language"] in ("da", "ru")
    for song in songs:
        parts = {
            s: sf.read(out / song / f"{s}.wav", dtype="float32")[0]
            for s in ("mixture", "vocals", "drums", "bass", "other")
        }
        assert parts["mixture"].shape == (44100, 2)
        total = parts["vocals"] + parts["drums"] + parts["bass"] + parts["other"]
        assert np.abs(parts["mixture"] - total).max() < 1e-6
        assert all(np.abs(parts[s]).max() > 0 for s in ("drums", "bass", "other"))

    # the evaluation reports each held-out family (read from the manifest)
    from audiotool.evaluation import evaluate_separation

    (out / "manifest.json").write_text(json.dumps(m.to_json()))
    result = evaluate_separation(out / "val", systems={})
    mixture = next(r for r in result["rows"] if r["system"] == "mixture")
    assert set(mixture["families"]) == set(HELDOUT_FAMILIES)


def test_render_is_pure_without_a_synth_cache(tmp_path: Path) -> None:
    from audiotool.data.render import Note, render_stem

    sf2 = write_tiny_sf2(tmp_path / "t.sf2")
    notes = [Note(0.0, 0.3, 69, 100), Note(0.2, 0.6, 72, 90)]
    a = render_stem(sf2, notes, program=0, drums=False, seconds=0.7)
    render_stem(sf2, [Note(0.0, 0.7, 60, 127)], program=0, drums=True, seconds=0.7)
    b = render_stem(sf2, notes, program=0, drums=False, seconds=0.7)
    assert np.array_equal(a, b) and np.abs(a).max() > 0
    synths: dict = {}
    c = render_stem(sf2, notes, program=0, drums=False, seconds=0.7, synths=synths)
    assert np.array_equal(a, c) and len(synths) == 1  # the first render of a cached synth

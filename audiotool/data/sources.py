"""Real-recording sources installable from Debian (and their licences).

Each source is a Debian package; :func:`fetch` runs ``apt-get download`` and unpacks the
``.deb`` with ``dpkg -x`` into ``SOURCES_DIR/<package>`` (nothing is installed system-wide).
Bandwidths are measured per file by the builder (:func:`audiotool.dsp.estimate_cutoff`).
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

from audiotool.errors import InputError, UsageError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Source:
    """A Debian package holding recordings.

    Attributes:
        package: Debian package name.
        patterns: globs (relative to the unpacked root) of the useful files.
        licence: the licence its ``copyright`` file states.
        lossy: whether the audio is lossy-coded (never used as a full-band target).
        what: a few words on the content.
    """

    package: str
    patterns: tuple[str, ...]
    licence: str
    lossy: bool
    what: str


SOURCES: dict[str, Source] = {
    "tuxpaint": Source(
        "tuxpaint-stamps-default",
        ("usr/share/tuxpaint/stamps/**/*_desc_*.ogg",),
        "GPL-2",
        True,
        "spoken stamp descriptions in ~12 languages, 44.1 kHz Ogg Vorbis, 0.5-3 s each",
    ),
    "wesnoth": Source(
        "wesnoth-1.16-music",
        ("usr/share/games/wesnoth/1.16/data/core/music/*.ogg",),
        "GPL-2",
        True,
        "orchestral game music, 44.1 kHz Ogg Vorbis",
    ),
    "hydrogen": Source(
        "hydrogen-drumkits",
        ("usr/share/hydrogen/data/drumkits/*/*.flac", "usr/share/hydrogen/data/drumkits/*/*.wav"),
        "GPL-2 / GPL-2+",
        False,
        "14 real drum kits, one-shot samples (lossless)",
    ),
    "fluid": Source(
        "fluid-soundfont-gm",
        ("usr/share/sounds/sf2/FluidR3_GM.sf2",),
        "MIT",
        False,
        "General MIDI SoundFont (FluidR3) for rendering stems",
    ),
    "timgm": Source(
        "timgm6mb-soundfont",
        ("usr/share/sounds/sf2/TimGM6mb.sf2",),
        "GPL-2",
        False,
        "small General MIDI SoundFont (TimGM6mb, 6 MB) with a GM drum kit",
    ),
    "csound": Source(
        "csound-soundfont",
        ("usr/share/sounds/sf2/sf_GMbank.sf2",),
        "public-domain",
        False,
        "General MIDI SoundFont of Csound (sf_GMbank, 4 MB) with a GM drum kit",
    ),
    "opl3": Source(
        "opl3-soundfont",
        ("usr/share/sounds/sf2/OPL-3_FM_128M.sf2",),
        "CC-BY-SA-4.0",
        False,
        "General MIDI SoundFont sampled from an OPL-3 FM synthesiser, with a GM drum kit",
    ),
    "avldrums": Source(
        "avldrums.lv2-soundfont",
        ("usr/share/sounds/sf2/*_LV2.sf2",),
        "CC-BY-SA-3.0",
        False,
        "two multi-sampled acoustic drum kits (Black Pearl, Red Zeppelin) as SoundFonts",
    ),
}

#: Debian packages looked at and not used: fluid-soundfont-gs (33 GS sound effects, no extra
#: instruments or kits), musescore-general-soundfont-small (.sf3: Ogg-compressed samples that
#: tinysoundfont renders as near-silence), hydrogen-drumkits-effects (one guitar-strum kit).


#: per-kit licences of hydrogen-drumkits (from its copyright file)
HYDROGEN_LICENCES = {
    "Audiophob": "CC0",
    "BJA_Pacific": "CC-BY-SA-3.0-us",
    "ColomboAcousticDrumkit": "GPL-2+ with composition exception",
    "ElectricEmpireKit": "GPL-2+",
    "ForzeeStereo": "GPL-2",
    "Gimme A Hand 1.0": "GPL-2",
    "HardElectro1": "GPL-2+",
    "Millo-Drums_v.1": "GPL-2",
    "Millo_MultiLayered2": "GPL-2",
    "Millo_MultiLayered3": "GPL-2",
    "The Black Pearl 1.0": "GPL-2",
    "VariBreaks": "GPL-2+",
    "circAfrique v4": "CC-BY-SA-3.0",
    "rumpf_kit_z01_h2": "CC-BY-3.0",
}


def licence_of(name: str, path: Path) -> str:
    """The licence of one file of source ``name`` (per kit for the Hydrogen drum kits)."""
    if name == "hydrogen":
        return HYDROGEN_LICENCES.get(path.parent.name, "see the package's copyright file")
    return SOURCES[name].licence


def source_root(sources_dir: Path, name: str) -> Path:
    """The unpacked tree of source ``name``.

    Raises:
        InputError: when it has not been fetched.
    """
    if name not in SOURCES:
        raise UsageError(f"unknown source {name!r}", hint=f"one of {sorted(SOURCES)}")
    root = Path(sources_dir) / SOURCES[name].package
    if not root.is_dir():
        raise InputError(
            f"source '{name}' ({SOURCES[name].package}) is not in {sources_dir}",
            hint=f"run `audiotool data fetch --sources {sources_dir}` first",
        )
    return root


def source_files(sources_dir: Path, name: str) -> list[Path]:
    """The source's files, sorted (so seeded choices are reproducible)."""
    root = source_root(sources_dir, name)
    files: set[Path] = set()
    for pattern in SOURCES[name].patterns:
        files.update(Path(p) for p in glob.glob(str(root / pattern), recursive=True))
    return sorted(files)


def fetch(sources_dir: Path, names: list[str] | None = None) -> list[Path]:
    """Download and unpack the Debian packages of ``names`` (default: all) into
    ``sources_dir``; already unpacked ones are kept."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise UsageError(
            "fetching sources needs apt-get and dpkg (a Debian/Ubuntu machine)",
            hint="or unpack the .deb files listed in benchmarks/data/SOURCES.md",
        )
    out = []
    sources_dir = Path(sources_dir)
    sources_dir.mkdir(parents=True, exist_ok=True)
    for name in names or sorted(SOURCES):
        pkg = SOURCES[name].package
        dest = sources_dir / pkg
        if dest.is_dir():
            out.append(dest)
            continue
        with tempfile.TemporaryDirectory(dir=sources_dir) as tmp:
            log.info("downloading %s", pkg)
            subprocess.run(["apt-get", "download", pkg], cwd=tmp, check=True, capture_output=True)
            deb = next(Path(tmp).glob("*.deb"))
            unpack = Path(tmp) / "unpacked"
            subprocess.run(["dpkg", "-x", str(deb), str(unpack)], check=True)
            unpack.rename(dest)
        out.append(dest)
    return out

"""Random crops of real audio for training (read only the frames needed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from audiotool.audio import fit_length
from audiotool.errors import InputError
from audiotool.paths import is_audio_path


@dataclasses.dataclass(frozen=True)
class ClipFile:
    path: Path
    frames: int
    rate: int
    channels: int
    label: str = ""


class ClipIndex:
    """The audio files under a folder (sorted; sub-folder name = label)."""

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        files = sorted(p for p in folder.rglob("*") if p.is_file() and is_audio_path(p))
        if not files:
            raise InputError(
                f"{folder}: no audio files", hint="build the data first (audiotool data build)"
            )
        self.files = []
        for p in files:
            info = sf.info(str(p))
            label = p.parent.name if p.parent != folder else ""
            self.files.append(
                ClipFile(p, int(info.frames), int(info.samplerate), int(info.channels), label)
            )
        self.labels = sorted({f.label for f in self.files})

    def __len__(self) -> int:
        return len(self.files)

    def read(self, item: ClipFile, start: int, length: int, rate: int, mono: bool = True) -> Tensor:
        """``length`` samples at ``rate`` starting at ``start`` (file samples), zero-padded."""
        from audiotool.audio import resample

        src_len = int(np.ceil(length * item.rate / rate)) + 8
        data, _ = sf.read(
            str(item.path),
            start=start,
            stop=min(item.frames, start + src_len),
            dtype="float32",
            always_2d=True,
        )
        x = torch.from_numpy(data.T.copy())
        if mono:
            x = x.mean(0, keepdim=True)
        if item.rate != rate:
            x = resample(x, item.rate, rate)
        return fit_length(x, length)

    def random_crop(
        self,
        gen: torch.Generator,
        length: int,
        rate: int,
        *,
        item: ClipFile | None = None,
        mono: bool = True,
    ) -> tuple[Tensor, ClipFile]:
        """A uniformly placed crop of ``length`` samples at ``rate`` from a random file."""
        if item is None:
            item = self.files[int(torch.randint(len(self.files), (1,), generator=gen))]
        need = int(length * item.rate / rate)
        start = int(torch.randint(max(1, item.frames - need + 1), (1,), generator=gen))
        return self.read(item, start, length, rate, mono), item


class SongIndex:
    """Song folders (``mixture.wav`` + one wav per stem) under a folder."""

    def __init__(self, folder: Path, stems: tuple[str, ...]) -> None:
        self.songs = sorted(p.parent for p in Path(folder).rglob("mixture.wav"))
        if not self.songs:
            raise InputError(f"{folder}: no song folders with mixture.wav")
        self.stems = stems
        self.frames = [int(sf.info(str(s / "mixture.wav")).frames) for s in self.songs]
        self.rate = int(sf.info(str(self.songs[0] / "mixture.wav")).samplerate)

    def crop(self, song: int, stem: str, start: int, length: int) -> Tensor:
        data, _ = sf.read(
            str(self.songs[song] / f"{stem}.wav"),
            start=start,
            stop=start + length,
            dtype="float32",
            always_2d=True,
        )
        x = torch.from_numpy(data.T.copy())
        return fit_length(x, length)

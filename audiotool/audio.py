"""Audio I/O, resampling, channel policy, levels and output formats.

Everything goes through libsndfile (``soundfile``): wav / flac / ogg / mp3 (libsndfile >= 1.1)
and the other formats it reads, integer and float subtypes. ffmpeg is never needed.

Layout: audio is a float32 tensor ``(C, T)`` (channels, samples).

Samples that are NaN or infinite are **rejected** (:class:`AudioReadError`): a model cannot
produce anything meaningful from them and guessing replacement values would hide a broken file.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np

from audiotool.errors import AudioReadError, AudioWriteError, InputError, UsageError
from audiotool.paths import atomic_output, write_error

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

BitDepth = Literal["16", "24", "32f"]
ClipMode = Literal["rescale", "clamp", "none"]
AudioFormat = Literal["wav", "flac"]

BIT_DEPTHS: tuple[str, ...] = ("16", "24", "32f")
CLIP_MODES: tuple[str, ...] = ("rescale", "clamp", "none")
FORMATS: tuple[str, ...] = ("wav", "flac")
_SUBTYPES = {"16": "PCM_16", "24": "PCM_24", "32f": "FLOAT"}
#: sample rates outside this range are treated as a broken header
MIN_RATE, MAX_RATE = 1000, 768_000


@dataclasses.dataclass
class AudioData:
    """Decoded audio plus what the file said about itself.

    Attributes:
        samples: float32 tensor ``(C, T)`` in [-1, 1] for integer files (float files may exceed).
        sample_rate: the file's rate in Hz.
        path: where it came from.
        format: libsndfile major format, e.g. ``"WAV"``.
        subtype: libsndfile subtype, e.g. ``"PCM_16"``, ``"FLOAT"``.
    """

    samples: torch.Tensor
    sample_rate: int
    path: Path
    format: str = ""
    subtype: str = ""

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def frames(self) -> int:
        return int(self.samples.shape[-1])

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def read_audio(path: str | Path) -> AudioData:
    """Read an audio file into float32 ``(C, T)``.

    Raises:
        InputError: missing path or a folder.
        AudioReadError: empty / undecodable / truncated file, zero samples, NaN or Inf samples,
            or an absurd sample rate.
    """
    import soundfile as sf
    import torch

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file", hint="check the path")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise AudioReadError(f"{path}: empty file (0 bytes)", hint="re-export or re-copy it")
    try:
        with sf.SoundFile(str(path)) as fh:
            rate, fmt, subtype, expected = fh.samplerate, fh.format, fh.subtype, fh.frames
            data = fh.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        detail = str(exc).split(":")[-1].strip() or type(exc).__name__
        raise AudioReadError(
            f"{path}: not a readable audio file ({detail})",
            hint="convert it to wav or flac (e.g. `ffmpeg -i IN out.wav`)",
        ) from exc
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioReadError(
            f"{path}: sample rate {rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz",
            hint="the header is probably broken; re-export the file",
        )
    if data.shape[0] == 0:
        raise AudioReadError(f"{path}: has no samples (0 frames)", hint="nothing to process")
    declared = _wav_declared_data_bytes(path) if fmt == "WAV" else None
    if declared is not None and declared[0] > declared[1]:
        raise AudioReadError(
            f"{path}: truncated file (header announces {declared[0]} bytes of samples, "
            f"{declared[1]} present)",
            hint="re-export or re-copy it",
        )
    if 0 < expected != data.shape[0] and expected < 2**62:
        raise AudioReadError(
            f"{path}: truncated file (header says {expected} frames, {data.shape[0]} readable)",
            hint="re-export or re-copy it",
        )
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise AudioReadError(
            f"{path}: {bad} NaN/Inf sample(s)",
            hint="repair or re-export the file; audiotool does not guess replacement values",
        )
    samples = torch.from_numpy(np.ascontiguousarray(data.T))
    return AudioData(samples=samples, sample_rate=int(rate), path=path, format=fmt, subtype=subtype)


def _wav_declared_data_bytes(path: Path) -> tuple[int, int] | None:
    """(bytes the RIFF 'data' chunk announces, bytes actually present), or None if unknown.

    libsndfile silently shortens a truncated wav to what is there; this catches it.
    """
    import struct

    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            size = path.stat().st_size
            pos = 12
            while pos + 8 <= size:
                fh.seek(pos)
                chunk_id, chunk_size = struct.unpack("<4sI", fh.read(8))
                if chunk_id == b"data":
                    if chunk_size in (0, 0xFFFFFFFF):  # streaming writers leave it unset
                        return None
                    return chunk_size, size - pos - 8
                pos += 8 + chunk_size + (chunk_size & 1)
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------- resampling


def resample(
    audio: torch.Tensor,
    orig_rate: int,
    new_rate: int,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Band-limited resampling of ``(..., T)`` with a Kaiser-windowed sinc.

    Uses :func:`torchaudio.functional.resample` (filter width 64, rolloff 0.9475937, beta
    14.7696566 — the "kaiser_best" settings of resampy / librosa), on ``device`` when given
    (the result stays there). Output length is ``ceil(T * new_rate / orig_rate)``.
    """
    import torchaudio.functional as taf

    if device is not None:
        audio = audio.to(device)
    if orig_rate == new_rate:
        return audio
    if orig_rate <= 0 or new_rate <= 0:
        raise UsageError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    g = math.gcd(int(orig_rate), int(new_rate))
    return taf.resample(
        audio.float(),
        int(orig_rate) // g,
        int(new_rate) // g,
        lowpass_filter_width=64,
        rolloff=0.9475937167399596,
        resampling_method="sinc_interp_kaiser",
        beta=14.769656459379492,
    )


# --------------------------------------------------------------------------- channels


def match_channels(audio: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert ``(C, T)`` to ``channels`` channels.

    Rules: equal -> unchanged; mono -> repeated; to mono -> mean of all channels; C > 2 to
    stereo -> left = mean of the even channels (0, 2, ...), right = mean of the odd ones; other
    reductions keep the first ``channels`` channels.
    """
    c = int(audio.shape[0])
    if channels < 1:
        raise UsageError(f"channel count must be >= 1, got {channels}")
    if c == channels:
        return audio
    if c == 1:
        return audio.expand(channels, -1).clone()
    if channels == 1:
        return audio.mean(dim=0, keepdim=True)
    if channels == 2:
        import torch

        return torch.stack([audio[0::2].mean(0), audio[1::2].mean(0)])
    if c > channels:
        return audio[:channels].clone()
    reps = math.ceil(channels / c)
    return audio.repeat(reps, 1)[:channels].clone()


# --------------------------------------------------------------------------- prepare / finish

ArrayT = TypeVar("ArrayT", "torch.Tensor", np.ndarray)


def fit_length(x: ArrayT, length: int) -> ArrayT:
    """Crop or zero-pad the last axis of ``x`` (tensor or array) to ``length`` samples."""
    have = int(x.shape[-1])
    if have >= length:
        return x[..., :length]
    if isinstance(x, np.ndarray):
        return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, length - have)])
    import torch

    return torch.nn.functional.pad(x, (0, length - have))


def prepare(
    audio: torch.Tensor,
    sample_rate: int,
    rate: int,
    *,
    channels: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Input side of every task: ``(C, T)`` at ``sample_rate`` -> float32 at the model ``rate``.

    Args:
        channels: the channel policy of :func:`match_channels` (None: keep the input's).
        device: where the result goes (resampling runs there).

    Returns:
        ``(channels or C, ceil(T * rate / sample_rate))``.
    """
    x = audio.float()
    if channels is not None:
        x = match_channels(x, channels)
    return resample(x, sample_rate, rate, device=device)


def finish(
    audio: torch.Tensor,
    rate: int,
    sample_rate: int,
    length: int,
    *,
    channels: int | None = None,
    level_of: torch.Tensor | None = None,
    level_mode: Literal["rms", "peak"] = "rms",
) -> torch.Tensor:
    """Output side of every task: model-rate ``(C, T')`` -> float32 on the CPU at ``sample_rate``.

    Resample back, apply the channel policy (``channels``), crop / zero-pad to exactly
    ``length`` samples (resampling rounds; the input's duration is kept to the sample) and,
    with ``level_of``, match that signal's level (:func:`match_level`). Clipping is the
    writer's (:func:`apply_clip`: it depends on the container).
    """
    y = resample(audio, rate, sample_rate)
    if channels is not None:
        y = match_channels(y, channels)
    y = fit_length(y, length)
    if level_of is not None:
        y = match_level(y, level_of, mode=level_mode)
    return y.float().cpu()


# --------------------------------------------------------------------------- levels


def peak(audio: torch.Tensor) -> float:
    """Largest absolute sample value."""
    return float(audio.abs().max()) if audio.numel() else 0.0


def rms(audio: torch.Tensor) -> float:
    """Root mean square over all samples."""
    return float(audio.double().pow(2).mean().sqrt()) if audio.numel() else 0.0


def to_db(value: float) -> float:
    """20 log10 of a linear level (-inf for 0)."""
    return 20.0 * math.log10(value) if value > 0 else float("-inf")


def match_level(
    output: torch.Tensor, reference: torch.Tensor, *, mode: Literal["rms", "peak"] = "rms"
) -> torch.Tensor:
    """Scale ``output`` so its RMS (or peak) equals ``reference``'s (silence stays silence)."""
    if mode == "rms":
        have, want = output.double().pow(2).mean().sqrt(), reference.double().pow(2).mean().sqrt()
    elif mode == "peak":
        have, want = output.abs().max().double(), reference.abs().max().double()
    else:
        raise UsageError(f"level mode must be 'rms' or 'peak', got {mode!r}")
    if float(have) <= 1e-12:
        return output.clone()
    return output * float(want / have)


def apply_clip(audio: torch.Tensor, mode: ClipMode) -> torch.Tensor:
    """Keep samples within [-1, 1] for integer formats.

    - ``rescale``: if the peak exceeds 1, scale the whole signal down so its peak is 0.999
      (levels between files/stems stay comparable only if you use ``clamp`` or ``none``).
    - ``clamp``: hard-limit to [-1, 1].
    - ``none``: leave values as they are (float files keep > 1; integer files saturate).
    """
    if mode not in CLIP_MODES:
        raise UsageError(f"--clip must be one of {list(CLIP_MODES)}, got {mode!r}")
    if mode == "rescale":
        p = peak(audio)
        return audio * (0.999 / p) if p > 1.0 else audio
    if mode == "clamp":
        return audio.clamp(-1.0, 1.0)
    return audio


# --------------------------------------------------------------------------- writing


def output_format(path: Path, fmt: str | None = None) -> AudioFormat:
    """The container of an output: ``fmt`` if given, else from the suffix (wav or flac)."""
    chosen = (fmt or path.suffix.lstrip(".")).lower()
    if chosen not in FORMATS:
        raise UsageError(
            f"cannot write '{path.name}': format must be one of {list(FORMATS)}, got {chosen!r}",
            hint="use a .wav or .flac name, or --format",
        )
    return chosen  # type: ignore[return-value]


def check_output_format(path: Path, fmt: str | None, bit_depth: str) -> AudioFormat:
    """Validate container and bit depth of an output before anything runs.

    Raises:
        UsageError: unknown container or bit depth, or flac with 32-bit float.
    """
    container = output_format(path, fmt)
    if bit_depth not in _SUBTYPES:
        raise UsageError(f"--bit-depth must be one of {list(BIT_DEPTHS)}, got {bit_depth!r}")
    if container == "flac" and bit_depth == "32f":
        raise UsageError(
            f"cannot write {path.name}: flac has no 32-bit float", hint="use --bit-depth 24 or wav"
        )
    return container


def save_audio(
    path: Path,
    audio: torch.Tensor,
    sample_rate: int,
    *,
    bit_depth: BitDepth = "24",
    clip: ClipMode = "rescale",
    fmt: str | None = None,
    name: Path | None = None,
) -> None:
    """Encode ``(C, T)`` (or ``(T,)``) audio into ``path`` directly (not atomically).

    Used on the temporary file of :func:`audiotool.paths.atomic_outputs`; ``name`` is the final
    path, for the container (from its suffix) and the messages. See :func:`write_audio`.
    """
    import soundfile as sf

    final = name or path
    container = check_output_format(final, fmt, bit_depth)
    if audio.dim() == 1:
        audio = audio.unsqueeze(0)
    audio = apply_clip(audio.detach().float().cpu(), clip)
    data = audio.numpy().T
    if not np.isfinite(data).all():
        raise AudioWriteError(f"{final}: refusing to write NaN/Inf samples (a model diverged)")
    try:
        sf.write(
            str(path),
            data,
            int(sample_rate),
            subtype=_SUBTYPES[bit_depth],
            format=container.upper(),
        )
    except (sf.LibsndfileError, OSError) as exc:
        raise write_error(final, exc) from exc


def write_audio(
    path: str | Path,
    audio: torch.Tensor,
    sample_rate: int,
    *,
    bit_depth: BitDepth = "24",
    clip: ClipMode = "rescale",
    fmt: str | None = None,
    protect: Iterable[Path] = (),
    overwrite: bool = True,
) -> Path:
    """Write ``(C, T)`` audio atomically (temporary file + rename in the target folder).

    Args:
        path: target file.
        audio: float tensor ``(C, T)`` (or ``(T,)``).
        sample_rate: rate in Hz.
        bit_depth: ``"16"`` / ``"24"`` PCM or ``"32f"`` float (wav only).
        clip: what to do with samples beyond [-1, 1] (see :func:`apply_clip`).
        fmt: ``"wav"`` / ``"flac"`` (default: from the suffix).
        protect: input files that must never be written over.
        overwrite: replace an existing ``path``; False: never (see :func:`audiotool.paths.commit`).

    Raises:
        UsageError: bad bit depth / format combination.
        AudioWriteError: the file or its folder cannot be written.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    check_output_format(path, fmt, bit_depth)
    with atomic_output(path, protect=protect, overwrite=overwrite) as tmp:
        save_audio(tmp, audio, sample_rate, bit_depth=bit_depth, clip=clip, fmt=fmt, name=path)
    return path

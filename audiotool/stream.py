"""Long files without holding them: block reads, span resampling, streamed statistics, block writes.

Layout: audio is float32 ``(C, n)`` blocks of a signal of ``T`` samples. A **span reader**
(:data:`Span`) returns samples ``[lo, hi)`` of a signal, zeros outside ``[0, T)``, so engines
can cut chunks (with their padding rules) from a file, or from a resampled view of it, without
the whole signal in memory.

- :class:`AudioSource`: a file opened for random access (``SoundFile.seek`` + ``read``), with
  :func:`audiotool.audio.read_audio`'s checks (rate, zero frames, truncation, NaN/Inf) done on
  the blocks that are read.
- :class:`Resampled`: samples ``[lo, hi)`` of :func:`audiotool.audio.resample` of a whole
  signal, computed from a window of the input (the sinc kernel is finite): equal to whole-file
  resampling to float precision.
- :class:`StreamResampler`: the same for a signal that arrives in order (engine outputs): push
  finished blocks, get back every output sample that no later input can change.
- :class:`AudioSink`: writes blocks into a (temporary) file with
  :func:`audiotool.audio.save_audio`'s format, bit depth and clip options.
- :func:`levels` / :func:`long_term_spectrum`: peak, RMS and the Welch spectrum in one pass.

Memory of all of these is bounded by the block / chunk, not by the duration.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from audiotool.errors import AudioReadError, AudioWriteError, InputError

if TYPE_CHECKING:
    from audiotool.audio import BitDepth, ClipMode

#: samples ``[lo, hi)`` of a signal as ``(C, hi - lo)`` float32, zeros outside ``[0, T)``
Span = Callable[[int, int], Tensor]

#: frames per block for sequential passes (statistics, copies)
BLOCK = 1 << 18


# --------------------------------------------------------------------------- reading


class AudioSource:
    """An audio file opened for random access in blocks.

    Attributes:
        path: the file.
        sample_rate, channels, frames: from the header.
        format, subtype: libsndfile's names (``"WAV"``, ``"PCM_16"``).

    Raises (on open): the errors of :func:`audiotool.audio.read_audio` that the header shows;
    (on read) :class:`AudioReadError` for a truncated file or NaN/Inf samples.
    """

    def __init__(self, path: str | Path) -> None:
        import soundfile as sf

        from audiotool.audio import MAX_RATE, MIN_RATE, _wav_declared_data_bytes

        self.path = path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no such file", hint="check the path")
        if path.is_dir():
            raise InputError(f"{path}: is a folder, not an audio file")
        if path.stat().st_size == 0:
            raise AudioReadError(f"{path}: empty file (0 bytes)", hint="re-export or re-copy it")
        try:
            self._fh = sf.SoundFile(str(path))
            self._lock = threading.Lock()
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            detail = str(exc).split(":")[-1].strip() or type(exc).__name__
            raise AudioReadError(
                f"{path}: not a readable audio file ({detail})",
                hint="convert it to wav or flac (e.g. `ffmpeg -i IN out.wav`)",
            ) from exc
        fh = self._fh
        self.sample_rate, self.channels, self.frames = int(fh.samplerate), fh.channels, fh.frames
        self.format, self.subtype = fh.format, fh.subtype
        if not MIN_RATE <= self.sample_rate <= MAX_RATE:
            self.close()
            raise AudioReadError(
                f"{path}: sample rate {self.sample_rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz",
                hint="the header is probably broken; re-export the file",
            )
        if self.frames <= 0 or self.frames >= 2**62:
            self.close()
            raise AudioReadError(f"{path}: has no samples (0 frames)", hint="nothing to process")
        declared = _wav_declared_data_bytes(path) if self.format == "WAV" else None
        if declared is not None and declared[0] > declared[1]:
            self.close()
            raise AudioReadError(
                f"{path}: truncated file (header announces {declared[0]} bytes of samples, "
                f"{declared[1]} present)",
                hint="re-export or re-copy it",
            )

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> AudioSource:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def read(self, lo: int, hi: int) -> Tensor:
        """Samples ``[lo, hi)`` as ``(C, hi - lo)`` float32 (a :data:`Span`)."""
        out = torch.zeros(self.channels, max(0, hi - lo))
        a, b = max(lo, 0), min(hi, self.frames)
        if a >= b:
            return out
        with self._lock:  # one handle, read by the passes that run side by side (lockstep)
            self._fh.seek(a)
            data = self._fh.read(b - a, dtype="float32", always_2d=True)
        if data.shape[0] != b - a:
            raise AudioReadError(
                f"{self.path}: truncated file (header says {self.frames} frames, "
                f"{a + data.shape[0]} readable)",
                hint="re-export or re-copy it",
            )
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise AudioReadError(
                f"{self.path}: {bad} NaN/Inf sample(s) near {a / self.sample_rate:.1f} s",
                hint="repair or re-export the file; audiotool does not guess replacement values",
            )
        out[:, a - lo : b - lo] = torch.from_numpy(data.T)
        return out

    def blocks(self, block: int = BLOCK) -> Iterator[tuple[int, Tensor]]:
        """``(start, (C, n))`` over the whole file in order."""
        for lo in range(0, self.frames, block):
            yield lo, self.read(lo, min(lo + block, self.frames))


def tensor_span(audio: Tensor) -> Span:
    """A :data:`Span` over an in-memory ``(C, T)`` tensor."""
    length = int(audio.shape[-1])

    def read(lo: int, hi: int) -> Tensor:
        a, b = max(lo, 0), min(hi, length)
        if lo >= 0 and hi <= length:
            return audio[:, lo:hi]
        out = audio.new_zeros(audio.shape[0], max(0, hi - lo))
        if a < b:
            out[:, a - lo : b - lo] = audio[:, a:b]
        return out

    return read


def zero_outside(read: Span, length: int) -> Span:
    """``read`` with zeros outside ``[0, length)``: the padding of a whole signal, where a
    :class:`Resampled` view would give its kernel's tails."""

    def bounded(lo: int, hi: int) -> Tensor:
        x = read(lo, hi)
        if lo >= 0 and hi <= length:
            return x
        out = torch.zeros_like(x)
        a, b = max(lo, 0), min(hi, length)
        if a < b:
            out[:, a - lo : b - lo] = x[:, a - lo : b - lo]
        return out

    return bounded


def mapped_span(read: Span, fn: Callable[[Tensor], Tensor]) -> Span:
    """A :data:`Span` applying a per-sample ``fn`` (e.g. a channel policy) to ``read``'s."""
    return lambda lo, hi: fn(read(lo, hi))


# --------------------------------------------------------------------------- resampling


def _reduced(orig: int, new: int) -> tuple[int, int, int]:
    """(orig/g, new/g, margin in blocks of orig/g input samples) for the resampling kernel of
    :func:`audiotool.audio.resample` (torchaudio's width for filter width 64, its rolloff)."""
    g = math.gcd(int(orig), int(new))
    o, n = int(orig) // g, int(new) // g
    width = math.ceil(64 * o / (min(o, n) * 0.9475937167399596))
    return o, n, -(-(width + o) // o) + 1


def resampled_length(length: int, orig: int, new: int) -> int:
    """``ceil(length * new / orig)``: the length :func:`audiotool.audio.resample` returns."""
    g = math.gcd(int(orig), int(new))
    return -(-length * (int(new) // g) // (int(orig) // g))


class Resampled:
    """Random access to the resampling of a whole signal (a :data:`Span`).

    Output samples ``[lo, hi)`` are computed from input ``[lo, hi)`` mapped back plus the
    kernel's reach on both sides, aligned to whole resampling periods: they equal
    ``resample(whole signal)[..., lo:hi]`` to float precision (the same dot products).

    Args:
        read: the input :data:`Span` (zeros outside its ``length``, as the whole-file
            resampler pads).
        length: input length ``T``.
        orig, new: rates.
        device: where the resampling runs.
    """

    def __init__(
        self, read: Span, length: int, orig: int, new: int, *, device: torch.device | None = None
    ) -> None:
        self.read, self.orig, self.new, self.device = read, int(orig), int(new), device
        self.in_length = length
        self.length = resampled_length(length, orig, new)
        self._o, self._n, self._m = _reduced(orig, new)

    def __call__(self, lo: int, hi: int) -> Tensor:
        from audiotool.audio import resample

        if self.orig == self.new:
            x = self.read(lo, hi)
            return x.to(self.device) if self.device is not None else x
        o, n, m = self._o, self._n, self._m
        k0, k1 = lo // n - m, -(-hi // n) + m  # resampling periods, with the kernel's reach
        x = self.read(k0 * o, min(k1 * o, max(self.in_length, k0 * o)))
        # beyond the end of the signal the whole-file resampler sees zeros; so does this one
        x = torch.nn.functional.pad(x, (0, (k1 - k0) * o - x.shape[-1]))
        y = resample(x, self.orig, self.new, device=self.device)
        return y[:, lo - k0 * n : hi - k0 * n]


class StreamResampler:
    """Resample a signal that arrives in order, block by block.

    :meth:`push` takes the next input samples and returns every output sample that no later
    input can change (the outputs of :func:`audiotool.audio.resample` over the whole signal,
    to float precision); :meth:`push` with ``final=True`` returns the rest. The memory held is
    the kernel's reach plus one block.

    Args:
        length: input length ``T`` (known in advance).
        orig, new: rates.
    """

    def __init__(self, length: int, orig: int, new: int) -> None:
        self.in_length, self.orig, self.new = length, int(orig), int(new)
        self.length = resampled_length(length, orig, new)
        self._o, self._n, self._m = _reduced(orig, new)
        self._buf: Tensor | None = None
        self._start = 0  # input coordinate of _buf[:, 0]
        self._end = 0  # input samples received
        self._done = 0  # output samples emitted

    def _read(self, lo: int, hi: int) -> Tensor:
        assert self._buf is not None and (lo >= self._start or self._start == 0)
        out = self._buf.new_zeros(self._buf.shape[0], hi - lo)
        a, b = max(lo, self._start), min(hi, self._end)
        if a < b:
            out[:, a - lo : b - lo] = self._buf[:, a - self._start : b - self._start]
        return out

    def push(self, x: Tensor, *, final: bool = False) -> Tensor:
        """Append ``x`` ``(C, n)``; returns the newly finished outputs ``(C, n')``."""
        if self._buf is None:
            self._buf = x
        elif x.shape[-1]:
            self._buf = torch.cat([self._buf, x], dim=-1)
        self._end += int(x.shape[-1])
        final = final or self._end >= self.in_length
        if self.orig == self.new:
            out, self._buf, self._start = self._buf, self._buf[:, :0], self._end
            self._done += int(out.shape[-1])
            return out
        o, n, m = self._o, self._n, self._m
        ready = self.length if final else max(0, (self._end // o - m) * n)
        ready = min(ready, self.length)
        if ready <= self._done:
            return self._buf[:, :0]
        span = Resampled(self._read, self.in_length, self.orig, self.new)
        out = span(self._done, ready)
        self._done = ready
        keep = max(self._start, (ready // n - m - 1) * o)  # what the next outputs still need
        self._buf = self._buf[:, keep - self._start :].clone()
        self._start = keep
        return out


# --------------------------------------------------------------------------- writing


class AudioSink:
    """Write ``(C, n)`` blocks into ``path`` as :func:`audiotool.audio.save_audio` would write
    the whole signal.

    ``clip="rescale"`` needs the peak of the whole signal: the blocks go to a float32 file
    beside ``path`` first (``.NAME.f32.tmp``, removed on :meth:`close` and on errors) and are
    copied scaled in a second pass; ``clamp`` and ``none`` are written directly.

    Args:
        path: the (temporary) file to fill.
        sample_rate, channels: of the signal.
        bit_depth, clip, fmt, name: as for :func:`audiotool.audio.save_audio`.
    """

    def __init__(
        self,
        path: Path,
        sample_rate: int,
        channels: int,
        *,
        bit_depth: BitDepth = "24",
        clip: ClipMode = "rescale",
        fmt: str | None = None,
        name: Path | None = None,
    ) -> None:
        import soundfile as sf

        from audiotool.audio import _SUBTYPES, CLIP_MODES, check_output_format
        from audiotool.errors import UsageError
        from audiotool.paths import side_file

        if clip not in CLIP_MODES:
            raise UsageError(f"--clip must be one of {list(CLIP_MODES)}, got {clip!r}")
        self.path, self.final = Path(path), Path(name or path)
        self.clip, self.peak = clip, 0.0
        self.sample_rate, self.channels = int(sample_rate), int(channels)
        container = check_output_format(self.final, fmt, bit_depth)
        self._subtype, self._format = _SUBTYPES[bit_depth], container.upper()
        self._side: Path | None = None
        try:
            if clip == "rescale":
                self._side = side_file(self.path, ".f32.tmp")
                self._fh = sf.SoundFile(
                    str(self._side), "w", self.sample_rate, self.channels, "FLOAT", format="RF64"
                )
            else:
                self._fh = self._open_final()
        except (sf.LibsndfileError, OSError) as exc:
            raise _write_error(self.final, exc) from exc

    def _open_final(self) -> Any:  # a soundfile.SoundFile (imported lazily)
        import soundfile as sf

        return sf.SoundFile(
            str(self.path),
            "w",
            self.sample_rate,
            self.channels,
            self._subtype,
            format=self._format,
        )

    def write(self, block: Tensor) -> None:
        """Append ``block`` ``(C, n)``."""
        import soundfile as sf

        data = block.detach().float().cpu()
        if data.numel() == 0:
            return
        if not bool(torch.isfinite(data).all()):
            raise AudioWriteError(
                f"{self.final}: refusing to write NaN/Inf samples (a model diverged)"
            )
        self.peak = max(self.peak, float(data.abs().max()))
        if self.clip == "clamp":
            data = data.clamp(-1.0, 1.0)
        try:
            self._fh.write(data.numpy().T)
        except (sf.LibsndfileError, OSError) as exc:
            raise _write_error(self.final, exc) from exc

    def close(self) -> None:
        """Finish the file (for ``rescale``: the scaled copy of the float32 side file)."""
        import soundfile as sf

        try:
            self._fh.close()
            if self._side is None:
                return
            scale = 0.999 / self.peak if self.peak > 1.0 else 1.0
            with sf.SoundFile(str(self._side)) as src, self._open_final() as dst:
                for block in src.blocks(BLOCK, dtype="float32", always_2d=True):
                    dst.write(block * np.float32(scale) if scale != 1.0 else block)
        except (sf.LibsndfileError, OSError) as exc:
            raise _write_error(self.final, exc) from exc
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the side file (the target's temporary file is its owner's)."""
        with contextlib.suppress(Exception):
            self._fh.close()
        if self._side is not None:
            with contextlib.suppress(OSError):
                self._side.unlink()


def _write_error(path: Path, exc: BaseException) -> AudioWriteError:
    from audiotool.paths import write_error

    return write_error(path, exc)


# --------------------------------------------------------------------------- statistics


def levels(blocks: Iterator[tuple[int, Tensor]]) -> tuple[float, float]:
    """(peak, RMS) over all samples of the blocks (float64 running sums)."""
    top, total, count = 0.0, 0.0, 0
    for _, x in blocks:
        if x.numel():
            top = max(top, float(x.abs().max()))
            total += float(x.double().pow(2).sum())
            count += x.numel()
    return top, math.sqrt(total / count) if count else 0.0


def long_term_spectrum(
    read: Span, length: int, sample_rate: int, *, n_fft: int = 4096, frames_per_block: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Welch power spectrum of a signal (``n_fft`` Hann frames, hop ``n_fft / 4``, no centre
    padding; a signal shorter than one frame is zero-padded to one), averaged over frames and
    channels: ``(freqs Hz, power)``.

    Frames are taken ``frames_per_block`` at a time from ``read``; the STFT is float32, the
    running sum of powers float64 (``n_fft / 2 + 1`` values).
    """
    hop = n_fft // 4
    n_frames = 1 if length <= n_fft else (length - n_fft) // hop + 1
    window = torch.hann_window(n_fft, dtype=torch.float32)
    total = torch.zeros(n_fft // 2 + 1, dtype=torch.float64)
    count = 0
    for f0 in range(0, n_frames, frames_per_block):
        f1 = min(n_frames, f0 + frames_per_block)
        x = read(f0 * hop, (f1 - 1) * hop + n_fft).float()
        spec = torch.stft(
            x, n_fft, hop_length=hop, window=window, center=False, return_complex=True
        )
        power = spec.real.square() + spec.imag.square()  # (C, K, frames)
        total += power.double().sum(dim=(0, 2))
        count += int(power.shape[0] * power.shape[2])
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    return freqs, (total / max(count, 1)).numpy()

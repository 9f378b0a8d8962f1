"""Settings shared by every separation scheme and by the in-memory and the streamed separate
paths (:mod:`audiotool.tasks.separate`, :mod:`audiotool.tasks.separate_stream`,
:mod:`audiotool.tasks.separate_demucs`, :mod:`audiotool.tasks.separate_ensemble`): a model's
stems, the chunk plans and the channel policy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from audiotool.errors import UsageError

if TYPE_CHECKING:
    from audiotool.tasks.separate import SeparateOptions

MAX_SHIFT_SECONDS = 0.5


def model_stems(config: Any) -> tuple[str, ...]:
    """The stems a separation config produces."""
    for name in ("stems", "sources"):
        value = getattr(config, name, None)
        if value:
            return tuple(value)
    raise UsageError(f"model family '{config.family}' does not declare its stems")


def residual_name(chosen: Sequence[str]) -> str:
    return f"no_{chosen[0]}" if len(chosen) == 1 else "rest"


#: families chunked with their reference's own scheme (engine.segments) instead of overlap-add
SEGMENT_FAMILIES = frozenset({"roformer"})


def segment_chunking(config: Any, options: SeparateOptions) -> tuple[int, int]:
    """(chunk, step) in samples for the ``roformer`` family (python-audio-separator's scheme).

    Defaults: the model's ``chunk_size`` and ``chunk_size // num_overlap``. ``--chunk-seconds``
    is rounded to whole STFT hops; ``--overlap N`` with N >= 1 (an integer) is MSST's
    ``num_overlap`` (step ``chunk // N``), a fraction in [0, 1) gives step ``chunk * (1 - o)``;
    ``--hop-seconds`` gives the step directly.
    """
    rate, hop = int(config.sample_rate), int(config.stft_hop_length)
    chunk = int(config.chunk_size)
    if options.chunk_seconds is not None:
        if options.chunk_seconds <= 0:
            raise UsageError(f"--chunk-seconds must be positive, got {options.chunk_seconds:g}")
        chunk = hop * max(1, round(options.chunk_seconds * rate / hop))
    if options.overlap is not None and options.hop_seconds is not None:
        raise UsageError("give either --overlap or --hop-seconds, not both")
    if options.hop_seconds is not None:
        step = round(options.hop_seconds * rate)
    elif options.overlap is not None:
        o = options.overlap
        if o >= 1:
            if o != int(o):
                raise UsageError(
                    f"--overlap must be a fraction in [0, 1) or a whole num_overlap, got {o:g}"
                )
            step = chunk // int(o)
        elif o >= 0:
            step = max(1, round(chunk * (1.0 - o)))
        else:
            raise UsageError(f"--overlap must not be negative, got {o:g}")
    else:
        step = chunk // int(config.num_overlap)
    if not 1 <= step <= chunk:
        raise UsageError(f"the hop must be in [1, {chunk}] samples (the chunk), got {step}")
    return chunk, step


def chunk_plan(config: Any, options: SeparateOptions) -> tuple[float, float]:
    """(chunk_seconds, hop_seconds) from the options and the model's defaults."""
    if getattr(config, "family", "") in SEGMENT_FAMILIES:
        chunk_n, step_n = segment_chunking(config, options)
        return chunk_n / config.sample_rate, step_n / config.sample_rate
    chunk = options.chunk_seconds or float(getattr(config, "default_chunk_seconds", 6.0))
    if options.overlap is not None and options.hop_seconds is not None:
        raise UsageError("give either --overlap or --hop-seconds, not both")
    if options.hop_seconds is not None:
        hop = options.hop_seconds
    elif options.overlap is not None:
        if not 0.0 <= options.overlap < 1.0:
            raise UsageError(f"--overlap must be in [0, 1), got {options.overlap}")
        hop = chunk * (1.0 - options.overlap)
    elif options.chunk_seconds is not None:
        hop = chunk / 2
    else:
        hop = float(getattr(config, "default_hop_seconds", chunk / 2))
    if not 0 < hop <= chunk:
        raise UsageError(f"the hop must be in (0, chunk={chunk:g} s], got {hop:g} s")
    return chunk, hop


def channel_groups(x: Tensor, model_channels: int) -> list[Tensor]:
    """The separation channel policy, for every scheme: the model inputs ``(C_m, T)`` for a
    ``(C, T)`` mixture are the mixture itself when the channel counts match, else each channel
    on its own, duplicated to ``C_m`` (the caller averages its stems back to one channel)."""
    if x.shape[0] == model_channels:
        return [x]
    return [x[c : c + 1].expand(model_channels, -1) for c in range(x.shape[0])]

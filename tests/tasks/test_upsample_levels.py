"""Issue #14: the kept band and the level are promises, also on loud and noisy input.

Runs the bundled ``upsample-tiny`` model (2 DDIM steps, 2 s clips) on loud inputs (-0.5 dBFS
peak): real speech and music from ``examples/``, band-limited music, hiss, a square wave, drum
transients; 8 / 16 / 22.05 / 44.1 kHz in; mono, stereo, dual-mono and 8 channels. Checks:

- the band below the cutoff (outside the crossfade) equals the input's (SNR >= 40 dB) under
  every clip policy;
- the generated band never pushes a sample over full scale: ``|out| <= max(1, |kept|)``;
- the output's RMS is within 1 dB of the full-band reference where one exists;
- no burst at the file edges; identical channels in -> identical channels out; the whole output
  does not depend on the batch size.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

from audiotool.audio import apply_clip, read_audio, resample
from audiotool.hub import load_model
from audiotool.models.latent_diffusion import LatentDiffusion, LatentDiffusionConfig
from audiotool.tasks.common import Runtime
from audiotool.tasks.upsample import UpsampleOptions, UpsampleResult, upsample_tensor

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RATE = 48000
PEAK = 10 ** (-0.5 / 20)
OPTS = UpsampleOptions(steps=2)


@functools.lru_cache(maxsize=1)
def _model() -> tuple[LatentDiffusion, LatentDiffusionConfig]:
    loaded = load_model("upsample-tiny", task="upsample")
    assert isinstance(loaded.model, LatentDiffusion)
    assert isinstance(loaded.config, LatentDiffusionConfig)
    return loaded.model, loaded.config


def _run(
    x: Tensor, rate: int, *, batch_size: int = 1, options: UpsampleOptions = OPTS
) -> UpsampleResult:
    model, config = _model()
    rt = Runtime(device=torch.device("cpu"), dtype=None, batch_size=batch_size, seed=0)
    return upsample_tensor(model, config, x, rate, options=options, runtime=rt)


def _normalise(x: Tensor) -> Tensor:
    return x * (PEAK / float(x.abs().max()))


@functools.lru_cache(maxsize=1)
def _speech() -> Tensor:
    """2 s of the bundled 16 kHz speech clip, (1, T)."""
    return read_audio(EXAMPLES / "speech_16k.flac").samples[:, 8000:40000]


@functools.lru_cache(maxsize=1)
def _music48() -> Tensor:
    """2 s of the bundled 44.1 kHz stereo music at 48 kHz, (2, T): a full-band reference."""
    x = read_audio(EXAMPLES / "music_44k.flac").samples[:, : 2 * 44100]
    return resample(x, 44100, RATE)


def _drums48() -> Tensor:
    """Kick + snare + hats, one hit every 250 ms, at 48 kHz: transients, (1, T)."""
    g = torch.Generator().manual_seed(3)
    n = 2 * RATE
    t = torch.arange(n) / RATE
    out = torch.zeros(n)
    for k, start in enumerate(range(0, n, RATE // 4)):
        tt = t[: n - start]
        env = torch.exp(-tt / 0.08)
        hit = torch.sin(2 * math.pi * (50 + 80 * torch.exp(-tt / 0.02)) * tt) * env
        noise = torch.randn(len(tt), generator=g)
        if k % 2:
            hit = hit + 0.8 * noise * torch.exp(-tt / 0.05)  # snare
        hat = torch.diff(noise, prepend=noise[:1]) * torch.exp(-tt / 0.01) * 0.3
        out[start:] += hit + hat
    return out[None]


@dataclass(frozen=True)
class Case:
    x: Tensor  # (C, T) at rate
    rate: int
    reference: Tensor | None  # full-band (C, T48) at 48 kHz, same scale as x


@functools.cache
def _case(name: str) -> Case:
    if name == "speech16":
        return Case(_normalise(_speech()), 16000, None)
    if name == "hiss16":
        s = _speech()
        g = torch.Generator().manual_seed(0)
        hiss = torch.randn(s.shape, generator=g) * float(s.pow(2).mean().sqrt()) * 10 ** (-30 / 20)
        return Case(_normalise(s + hiss), 16000, None)
    if name == "square16":
        t = torch.arange(2 * 16000) / 16000
        return Case(PEAK * torch.sign(torch.sin(2 * math.pi * 220 * t + 0.1))[None], 16000, None)
    if name == "music44":
        x = read_audio(EXAMPLES / "music_44k.flac").samples[:, : 2 * 44100]
        return Case(_normalise(x), 44100, None)
    if name in ("music8", "music16", "music22"):
        rate = {"music8": 8000, "music16": 16000, "music22": 22050}[name]
        ref = _music48()
        low = resample(ref, RATE, rate)
        gain = PEAK / float(low.abs().max())
        return Case(low * gain, rate, ref * gain)
    if name == "drums22":
        ref = _drums48()
        low = resample(ref, RATE, 22050)
        gain = PEAK / float(low.abs().max())
        return Case(low * gain, 22050, ref * gain)
    if name == "dualmono16":
        return Case(_normalise(_speech()).repeat(2, 1), 16000, None)
    if name == "eight16":
        s = _normalise(_speech()[:, :16000])
        chans = [torch.roll(s[0], 7 * k) * (1 - 0.08 * k) for k in range(8)]
        return Case(torch.stack(chans), 16000, None)
    raise KeyError(name)


@functools.cache
def _result(name: str) -> UpsampleResult:
    case = _case(name)
    return _run(case.x, case.rate)


CASES = [
    "speech16",
    "hiss16",
    "square16",
    "music8",
    "music16",
    "music22",
    "music44",
    "drums22",
    "dualmono16",
    "eight16",
]


def _input48(name: str, length: int) -> Tensor:
    case = _case(name)
    x = resample(case.x, case.rate, RATE)
    return x[..., :length]


def _kept_band_snr(out: Tensor, ref: Tensor, top_hz: float, edge: int = 2) -> float:
    """SNR (dB) of ``out`` against ``ref`` in the STFT bins below ``top_hz`` (edge frames out)."""
    win = torch.hann_window(2048)
    spec = lambda s: torch.stft(s, 2048, 512, window=win, return_complex=True)  # noqa: E731
    o, r = spec(out), spec(ref)
    k = int(top_hz * 2048 / RATE)
    o, r = o[:, :k, edge:-edge], r[:, :k, edge:-edge]
    return 10 * math.log10(float(r.abs().pow(2).sum()) / float((o - r).abs().pow(2).sum() + 1e-20))


def _kept_band(x48: Tensor, cutoff: float) -> Tensor:
    """The input's band the output keeps: STFT mask 1 below the crossfade, raised cosine across."""
    win = torch.hann_window(2048)
    spec = torch.stft(x48, 2048, 512, window=win, return_complex=True)
    freqs = torch.arange(spec.shape[-2]) * RATE / 2048
    width = min(0.1 * cutoff, 1000.0)
    mask = 0.5 * (1 + torch.cos(math.pi * ((freqs - cutoff + width) / width).clamp(0, 1)))
    return torch.istft(spec * mask[:, None], 2048, 512, window=win, length=x48.shape[-1])


def _below_crossfade(cutoff: float) -> float:
    return 0.97 * (cutoff - min(0.1 * cutoff, 1000.0))


@pytest.mark.parametrize("name", CASES)
def test_kept_band_survives_every_clip_policy(name: str) -> None:
    res = _result(name)
    x48 = _input48(name, res.audio.shape[-1])
    top = _below_crossfade(res.cutoff_hz)
    kept_fits = float(x48.abs().max()) <= 0.999
    for mode in ("none", "rescale", "clamp"):
        if mode != "none" and not kept_fits:
            continue  # the input itself overs at 48 kHz: only `none` can keep it
        out = apply_clip(res.audio, mode)
        assert _kept_band_snr(out, x48, top) >= 40.0, mode


@pytest.mark.parametrize("name", CASES)
def test_generated_band_adds_no_overs(name: str) -> None:
    res = _result(name)
    out = res.audio
    x48 = _input48(name, out.shape[-1])
    kept = _kept_band(x48, res.cutoff_hz)
    # per sample, within full scale or within the kept band's own excursion
    allowed = torch.clamp(kept.abs() + 1e-4, min=1.0)
    assert bool((out.abs() <= allowed).all()), float((out.abs() - allowed).max())
    for mode in ("rescale", "clamp"):
        assert float(apply_clip(out, mode).abs().max()) <= 1.0


@pytest.mark.parametrize("name", ["music8", "music16", "music22", "drums22"])
def test_level_matches_the_full_band_reference(name: str) -> None:
    case = _case(name)
    assert case.reference is not None
    res = _result(name)
    ref = case.reference[..., : res.audio.shape[-1]]
    for mode in ("none", "rescale", "clamp"):
        out = apply_clip(res.audio, mode)
        diff = 20 * math.log10(float(out.pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()))
        assert abs(diff) <= 1.0, (mode, diff)


@pytest.mark.parametrize("name", CASES)
def test_no_burst_at_the_file_edges(name: str) -> None:
    res = _result(name)
    out = res.audio
    x48 = _input48(name, out.shape[-1])
    hf = out - x48  # the input has nothing above its Nyquist: this is the generated band
    n = RATE // 50  # 20 ms
    body = hf[..., n:-n].abs().amax(dim=-1)
    for edge in (slice(0, n), slice(-n, None)):
        peak_hf = hf[..., edge].abs().amax(dim=-1)
        peak_in = x48[..., edge].abs().amax(dim=-1)
        # never louder than the input there, nor than the generated band's peak elsewhere
        assert bool((peak_hf <= torch.maximum(peak_in, body) + 1e-3).all()), (peak_hf, peak_in)


def test_identical_channels_give_identical_outputs() -> None:
    out = _result("dualmono16").audio
    assert out.shape[0] == 2 and torch.equal(out[0], out[1])


def test_whole_output_independent_of_batch_size() -> None:
    x = _normalise(_speech())
    opts = UpsampleOptions(steps=2, chunk_seconds=0.64, overlap_seconds=0.16)
    one = _run(x, 16000, batch_size=1, options=opts)
    three = _run(x, 16000, batch_size=3, options=opts)
    assert one.chunks >= 3
    assert torch.equal(one.audio, three.audio), float((one.audio - three.audio).abs().max())

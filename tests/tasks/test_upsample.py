"""The upsample job end to end on a tiny random model (few steps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiotool.dsp import degrade, long_term_spectrum, lowpass
from audiotool.errors import UsageError
from audiotool.models.latent_diffusion import LatentDiffusion, build_model, tiny_config
from audiotool.tasks.common import Runtime
from audiotool.tasks.upsample import UpsampleOptions, upsample_tensor

RT = Runtime(device=torch.device("cpu"), dtype=None, batch_size=4, seed=0)
FAST = UpsampleOptions(steps=2, chunk_seconds=2.56, overlap_seconds=0.32)


@pytest.fixture(scope="module")
def tiny() -> LatentDiffusion:
    torch.manual_seed(0)
    return build_model(tiny_config()).eval()


def _speechlike(seconds: float, rate: int, channels: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    t = torch.arange(int(seconds * rate)) / rate
    env = 0.5 * (1 + torch.sin(2 * torch.pi * 3 * t))
    x = sum(torch.sin(2 * torch.pi * 140 * k * t) / k for k in range(1, 40)) * env * 0.1
    x = x + 0.01 * torch.randn(len(t), generator=g)
    return torch.stack([x * (1 - 0.2 * c) for c in range(channels)])  # type: ignore[misc]


@pytest.mark.parametrize("seconds", [1.0, 5.0, 10.0, 25.0])
def test_shapes_for_several_lengths(tiny: LatentDiffusion, seconds: float) -> None:
    x = _speechlike(seconds, 16000)
    out = upsample_tensor(tiny, tiny_config(), x, 16000, options=FAST, runtime=RT)
    assert out.audio.shape == (1, int(seconds * 48000))
    assert out.generated and torch.isfinite(out.audio).all()
    if seconds >= 5:
        assert out.chunks > 1  # several chunks, stitched


def test_low_band_preserved_and_level_matched(tiny: LatentDiffusion) -> None:
    x48 = lowpass(_speechlike(4.0, 48000), 48000, 6000)
    out = upsample_tensor(tiny, tiny_config(), x48, 48000, options=FAST, runtime=RT).audio
    f, p_in = long_term_spectrum(x48, 48000)
    _, p_out = long_term_spectrum(out, 48000)
    low = (f > 100) & (f < 6000 * 0.85)
    # the STFT mask is 1 below cutoff - transition: the input passes through (< 0.1 dB)
    assert np.abs(10 * np.log10(p_out[low] / p_in[low])).max() < 0.1
    lvl_in = float(x48.pow(2).mean().sqrt())
    lvl_out = float(lowpass(out, 48000, 5000).pow(2).mean().sqrt())
    assert abs(20 * np.log10(lvl_out / float(lowpass(x48, 48000, 5000).pow(2).mean().sqrt()))) < 0.1
    assert lvl_in > 0


def test_stereo_is_processed_per_channel(tiny: LatentDiffusion) -> None:
    x = _speechlike(2.0, 22050, channels=2)
    out = upsample_tensor(tiny, tiny_config(), x, 22050, options=FAST, runtime=RT).audio
    assert out.shape == (2, 96000)
    mono = upsample_tensor(tiny, tiny_config(), x[1:], 22050, options=FAST, runtime=RT).audio
    # the low band of channel 1 is the same whether or not it shares a batch
    assert torch.allclose(lowpass(out[1:], 48000, 8000), lowpass(mono, 48000, 8000), atol=1e-4)


def test_deterministic_for_a_seed_and_eta(tiny: LatentDiffusion) -> None:
    x = _speechlike(1.5, 16000)
    opts = UpsampleOptions(steps=3, eta=1.0, sampler="ddim")  # η: DDIM only
    a = upsample_tensor(tiny, tiny_config(), x, 16000, options=opts, runtime=RT).audio
    b = upsample_tensor(tiny, tiny_config(), x, 16000, options=opts, runtime=RT).audio
    rt2 = Runtime(device=RT.device, dtype=None, batch_size=1, seed=0)
    c = upsample_tensor(tiny, tiny_config(), x, 16000, options=opts, runtime=rt2).audio
    assert torch.equal(a, b)
    assert torch.allclose(a, c, atol=1e-4)  # batch size does not change the result


def test_default_solver_deterministic_and_eta_rejected(tiny: LatentDiffusion) -> None:
    assert tiny_config().default_sampler == "dpmpp-2m"
    x = _speechlike(1.0, 16000)
    opts = UpsampleOptions(steps=3)
    a = upsample_tensor(tiny, tiny_config(), x, 16000, options=opts, runtime=RT).audio
    b = upsample_tensor(tiny, tiny_config(), x, 16000, options=opts, runtime=RT).audio
    assert torch.equal(a, b) and torch.isfinite(a).all()
    with pytest.raises(UsageError, match="ddim sampler only"):
        upsample_tensor(
            tiny,
            tiny_config(),
            x,
            16000,
            options=UpsampleOptions(steps=3, eta=0.5, sampler="unipc"),
            runtime=RT,
        )


def test_global_context_computed_once_per_file(
    tiny: LatentDiffusion, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, ...]] = []
    original = tiny.encode_global

    def counting(mel: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(tuple(mel.shape))
        return original(mel)

    monkeypatch.setattr(tiny, "encode_global", counting)
    x = _speechlike(12.0, 16000, channels=2)
    out = upsample_tensor(tiny, tiny_config(), x, 16000, options=FAST, runtime=RT)
    assert out.chunks >= 4
    assert len(calls) == 1 and calls[0][0] == 2 and calls[0][1] >= 1200  # whole file, both ch
    calls.clear()
    upsample_tensor(
        tiny,
        tiny_config(),
        x,
        16000,
        options=UpsampleOptions(steps=2, global_context=False),
        runtime=RT,
    )
    assert calls == []


def test_full_band_input_is_only_resampled(tiny: LatentDiffusion) -> None:
    x = 0.1 * torch.randn(1, 48000, generator=torch.Generator().manual_seed(0))
    res = upsample_tensor(tiny, tiny_config(), x, 48000, options=FAST, runtime=RT)
    assert not res.generated and torch.allclose(res.audio, x)


def test_explicit_cutoff_and_output_rate(tiny: LatentDiffusion) -> None:
    x = degrade(_speechlike(1.0, 48000), 48000, 24000)
    opts = UpsampleOptions(steps=2, cutoff=11000.0, output_rate=44100)
    res = upsample_tensor(tiny, tiny_config(), x, 48000, options=opts, runtime=RT)
    assert res.cutoff_hz == 11000.0 and res.audio.shape == (1, 44100)


def test_cli_end_to_end(
    tmp_path: Path, tiny: LatentDiffusion, capsys: pytest.CaptureFixture[str]
) -> None:
    from audiotool.checkpoints import save_pretrained
    from tests.cli.test_app import run_main

    model_dir = save_pretrained(tiny, tiny_config(), tmp_path / "model")
    clip = Path(__file__).resolve().parents[2] / "examples" / "speech_16k.flac"
    if not clip.is_file():
        clip = tmp_path / "speech.wav"
        sf.write(clip, _speechlike(2.0, 16000)[0].numpy(), 16000)
    info = sf.info(str(clip))
    out = tmp_path / "out" / "up.wav"
    before = clip.read_bytes()
    code, stdout, err = run_main(
        [
            "upsample",
            str(clip),
            "-o",
            str(out),
            "--model",
            str(model_dir),
            "--steps",
            "2",
            "--json",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    data = json.loads(stdout)
    assert data["counts"]["ok"] == 1 and data["files"][0]["outputs"] == [str(out)]
    written = sf.info(str(out))
    assert written.samplerate == 48000 and written.channels == info.channels
    assert written.frames == round(info.frames * 48000 / info.samplerate)
    assert clip.read_bytes() == before
    # a second run refuses to overwrite, then --skip-existing skips it
    code, _, err = run_main(
        [
            "upsample",
            str(clip),
            "-o",
            str(out),
            "--model",
            str(model_dir),
            "--steps",
            "2",
            "--quiet",
        ],
        capsys,
    )
    assert code == 1 and "already exists" in err
    code, stdout, _ = run_main(
        [
            "upsample",
            str(clip),
            "-o",
            str(out),
            "--model",
            str(model_dir),
            "--skip-existing",
            "--json",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0 and json.loads(stdout)["counts"]["skipped"] == 1


def test_cli_bad_inputs_keep_going(
    tmp_path: Path, tiny: LatentDiffusion, capsys: pytest.CaptureFixture[str]
) -> None:
    from audiotool.checkpoints import save_pretrained
    from tests.cli.test_app import run_main

    model_dir = save_pretrained(tiny, tiny_config(), tmp_path / "model")
    good = tmp_path / "in" / "good.wav"
    good.parent.mkdir()
    sf.write(good, _speechlike(1.0, 16000)[0].numpy(), 16000)
    (tmp_path / "in" / "bad.wav").write_text("text")
    code, _, err = run_main(
        [
            "upsample",
            str(tmp_path / "in"),
            "-o",
            str(tmp_path / "o"),
            "--model",
            str(model_dir),
            "--steps",
            "1",
            "--quiet",
        ],
        capsys,
    )
    assert code == 1
    assert (tmp_path / "o" / "good_upsample.wav").is_file()
    assert not (tmp_path / "o" / "bad_upsample.wav").exists()
    assert "bad.wav: not a readable audio file" in err
    code, _, err = run_main(
        ["upsample", str(good), "--cutoff", "loud", "--model", str(model_dir)], capsys
    )
    assert code == 2 and "--cutoff" in err


def test_cuda_graphs_auto_is_off_on_the_cpu_and_changes_nothing(tiny: LatentDiffusion) -> None:
    import dataclasses

    x = _speechlike(3.0, 16000)
    outs = {
        mode: upsample_tensor(
            tiny,
            tiny_config(),
            x,
            16000,
            options=dataclasses.replace(FAST, cuda_graphs=mode),
            runtime=RT,
        ).audio
        for mode in ("auto", "off")
    }
    assert torch.equal(outs["auto"], outs["off"])
    with pytest.raises(UsageError, match="needs a CUDA device"):
        upsample_tensor(
            tiny,
            tiny_config(),
            x,
            16000,
            options=dataclasses.replace(FAST, cuda_graphs="on"),
            runtime=RT,
        )


def test_channels_last_unet_on_the_cpu_agrees_and_stays_batch_invariant() -> None:
    from audiotool.tasks.upsample import prefer_channels_last

    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    x = _speechlike(6.0, 16000, channels=2)
    options = UpsampleOptions(steps=2, chunk_seconds=2.56, overlap_seconds=0.32)
    plain = upsample_tensor(model, tiny_config(), x, 16000, options=options, runtime=RT).audio
    prefer_channels_last(model, torch.device("cpu"))
    assert model.unet.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    fast = upsample_tensor(model, tiny_config(), x, 16000, options=options, runtime=RT).audio
    one = Runtime(device=RT.device, dtype=None, batch_size=1, seed=0)
    single = upsample_tensor(model, tiny_config(), x, 16000, options=options, runtime=one).audio
    assert torch.allclose(fast, single, atol=1e-4)  # batch size still does not matter
    # the layout changes round-off only, which Griffin-Lim's phase retrieval spreads a little
    # (see UNetModel); the spectrum, which is what the metrics compare, stays put
    assert float((fast - plain).pow(2).mean() / plain.pow(2).mean()) < 1e-3
    f, p_fast = long_term_spectrum(fast, 48000)
    _, p_plain = long_term_spectrum(plain, 48000)
    band = (f > 100) & (f < 23000)
    assert np.abs(10 * np.log10(p_fast[band] / p_plain[band])).mean() < 0.1

"""The separate job: stems, channel/rate policy, residual, formats, templates, OOM, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import Tensor, nn

from audiotool.checkpoints import save_pretrained
from audiotool.errors import UsageError
from audiotool.models.separation import BandSplitConfig, build_model, tiny_config
from audiotool.tasks._separate_plan import chunk_plan, residual_name
from audiotool.tasks.common import Runtime
from audiotool.tasks.separate import SeparateOptions, choose_stems, separate_tensor
from tests.cli.test_app import run_main

RT = Runtime(device=torch.device("cpu"), dtype=None, batch_size=3, seed=0)


class Split(nn.Module):
    """A deterministic 'separator': fixed gains per stem (sums to 1)."""

    gains: ClassVar[dict[str, float]] = {"vocals": 0.4, "drums": 0.3, "bass": 0.2, "other": 0.1}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {s: x * g for s, g in self.gains.items()}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = tiny_config()
    return save_pretrained(build_model(cfg), cfg, tmp_path_factory.mktemp("m") / "sep")


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize(("rate", "seconds"), [(44100, 0.3), (22050, 2.5), (48000, 1.0)])
def test_channels_rates_lengths(channels: int, rate: int, seconds: float) -> None:
    from audiotool.dsp import lowpass

    cfg = tiny_config()
    # band-limited below both Nyquists: resampling there and back is transparent
    x = lowpass(0.1 * torch.randn(channels, int(rate * seconds)), rate, 0.8 * min(rate, 44100) / 2)
    out = separate_tensor(Split(), cfg, x, rate, options=SeparateOptions(), runtime=RT)
    assert set(out) == set(Split.gains)
    for s, g in Split.gains.items():
        assert out[s].shape == x.shape
        core = slice(200, -200)  # resampling edges
        assert torch.allclose(out[s][:, core], g * x[:, core], atol=2e-3)


def test_mixture_consistency_and_shifts() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    x = 0.1 * torch.randn(2, 20000)
    opts = SeparateOptions(mixture_consistent=True, shifts=2)
    out = separate_tensor(model, tiny_config(), x, 44100, options=opts, runtime=RT)
    assert torch.allclose(sum(out.values()), x, atol=1e-5)  # type: ignore[arg-type]
    again = separate_tensor(model, tiny_config(), x, 44100, options=opts, runtime=RT)
    assert all(torch.equal(out[s], again[s]) for s in out)  # deterministic for a seed
    other_seed = Runtime(device=RT.device, dtype=None, batch_size=3, seed=1)
    diff = separate_tensor(model, tiny_config(), x, 44100, options=opts, runtime=other_seed)
    assert not torch.allclose(out["vocals"], diff["vocals"])


def test_oom_backoff_through_separation() -> None:
    seen: list[int] = []

    class Fragile(Split):
        def forward(self, x: Tensor) -> dict[str, Tensor]:
            if x.shape[0] > 1:
                raise torch.OutOfMemoryError("simulated")
            seen.append(x.shape[0])
            return super().forward(x)

    x = 0.1 * torch.randn(2, 44100 * 3)
    rt = Runtime(device=RT.device, dtype=None, batch_size=8, seed=0)
    out = separate_tensor(Fragile(), tiny_config(), x, 44100, options=SeparateOptions(), runtime=rt)
    assert torch.allclose(out["drums"], 0.3 * x, atol=1e-5)
    assert seen and set(seen) == {1}


def test_stem_selection_and_errors() -> None:
    assert choose_stems(("a", "b", "c"), None) == ("a", "b", "c")
    assert choose_stems(("a", "b", "c"), ["c", "a"]) == ("c", "a")
    with pytest.raises(UsageError, match="it produces a, b, c"):
        choose_stems(("a", "b", "c"), ["vocals"])
    assert residual_name(["vocals"]) == "no_vocals" and residual_name(["a", "b"]) == "rest"
    cfg = BandSplitConfig()
    assert chunk_plan(cfg, SeparateOptions(chunk_seconds=4, overlap=0.25)) == (4, 3)
    with pytest.raises(UsageError):
        chunk_plan(cfg, SeparateOptions(overlap=0.5, hop_seconds=1))
    with pytest.raises(UsageError):
        chunk_plan(cfg, SeparateOptions(overlap=1.5))


def _mix(path: Path, rate: int = 44100, channels: int = 2, seconds: float = 1.0) -> Path:
    rng = np.random.default_rng(0)
    sf.write(
        path, (0.1 * rng.standard_normal((int(rate * seconds), channels))).astype(np.float32), rate
    )
    return path


def test_cli_end_to_end_default_layout(
    tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    song = _mix(tmp_path / "song.wav", rate=22050, channels=1)
    out = tmp_path / "sep"
    code, stdout, err = run_main(
        ["separate", str(song), "-o", str(out), "--model", str(tiny_dir), "--json", "--quiet"],
        capsys,
    )
    assert code == 0, err
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.wav"))
    assert files == ["song/bass.wav", "song/drums.wav", "song/other.wav", "song/vocals.wav"]
    info = sf.info(str(out / "song" / "vocals.wav"))
    assert (info.samplerate, info.channels, info.frames) == (22050, 1, 22050)
    assert json.loads(stdout)["counts"]["ok"] == 1


def test_cli_stems_residual_format_template(
    tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    song = _mix(tmp_path / "a.wav")
    out = tmp_path / "o"
    code, _, err = run_main(
        [
            "separate",
            str(song),
            "-o",
            str(out),
            "--model",
            str(tiny_dir),
            "--stems",
            "vocals",
            "--residual",
            "--format",
            "flac",
            "--bit-depth",
            "16",
            "--filename",
            "{track}_{stem}_{model}.{ext}",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a_no_vocals_sep.flac", "a_vocals_sep.flac"]
    v, _ = sf.read(out / "a_vocals_sep.flac")
    nv, _ = sf.read(out / "a_no_vocals_sep.flac")
    mix, _ = sf.read(song)
    assert sf.info(str(out / "a_vocals_sep.flac")).subtype == "PCM_16"
    assert np.abs(v + nv - mix).max() < 3e-4  # residual = mixture - stem (16-bit rounding)


def test_cli_errors(tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    song = _mix(tmp_path / "a.wav")
    code, _, err = run_main(
        ["separate", str(song), "--model", str(tiny_dir), "--stems", "guitar"], capsys
    )
    assert code == 2 and "vocals, drums, bass, other" in err
    code, _, err = run_main(
        [
            "separate",
            str(song),
            "--model",
            str(tiny_dir),
            "-o",
            str(tmp_path),
            "--filename",
            "../{stem}.wav",
        ],
        capsys,
    )
    assert code == 2 and "escapes" in err  # a usage error, found before the model runs
    code, _, err = run_main(
        [
            "separate",
            str(song),
            "--model",
            str(tiny_dir),
            "--format",
            "flac",
            "--bit-depth",
            "32f",
            "-o",
            str(tmp_path / "x"),
        ],
        capsys,
    )
    assert code == 2 and "flac" in err
    assert not (tmp_path / "x").exists()  # refused before anything runs


def test_query_models_get_a_context_once_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from audiotool.models.audio_branch import PRESETS
    from audiotool.models.audio_branch import build_model as build_branch
    from audiotool.tasks import embed as embed_mod

    torch.manual_seed(0)
    ecfg = PRESETS["tiny"]()
    emb_dir = save_pretrained(build_branch(ecfg), ecfg, tmp_path / "emb")
    calls: list[int] = []
    original = embed_mod.embed_tensor

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(int(args[2].shape[-1]))
        return original(*args, **kwargs)

    monkeypatch.setattr(embed_mod, "embed_tensor", counting)
    for source in ("mixture", "reference"):
        cfg = tiny_config().replace(query_dim=32, stems=("target",), query_source=source)
        sep_dir = save_pretrained(build_model(cfg), cfg, tmp_path / f"sep-{source}")
        songs = [_mix(tmp_path / f"{source}{i}.wav", seconds=2.5) for i in range(2)]
        calls.clear()
        args = [
            "separate",
            *map(str, songs),
            "--model",
            str(sep_dir),
            "--query-model",
            str(emb_dir),
            "-o",
            str(tmp_path / f"out-{source}"),
            "--quiet",
            "--chunk-seconds",
            "0.5",
        ]
        if source == "reference":
            code, _, err = run_main(args, capsys)
            assert code == 2 and "--query" in err
            args += ["--query", str(songs[0])]
        code, _, err = run_main(args, capsys)
        assert code == 0, err
        # one embedding per file (mixture) or one for the whole batch (reference), never per chunk
        assert len(calls) == (2 if source == "mixture" else 1)
        assert (tmp_path / f"out-{source}" / songs[1].stem / "target.wav").is_file()

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from audiotool.errors import InputError
from audiotool.models.separation import (
    BandSplitConfig,
    band_edges,
    build_model,
    separation_loss,
    small_config,
    tiny_config,
)


@pytest.mark.parametrize("layout", ["musical", "uniform"])
@pytest.mark.parametrize(("n_fft", "rate"), [(2048, 44100), (512, 16000), (256, 44100)])
def test_band_edges_cover_every_bin(layout: str, n_fft: int, rate: int) -> None:
    edges = band_edges(n_fft, rate, layout, 8)
    assert edges[0][0] == 0 and edges[-1][1] == n_fft // 2 + 1
    assert all(a < b for a, b in edges)
    assert all(e[1] == f[0] for e, f in zip(edges, edges[1:], strict=False))


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("length", [100, 255, 1000, 4097])
def test_stems_and_shapes(channels: int, length: int) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config().replace(audio_channels=channels)).eval()
    x = torch.randn(2, channels, length)
    with torch.no_grad():
        out = model(x)
    assert list(out) == ["vocals", "drums", "bass", "other"]
    assert all(v.shape == (2, channels, length) for v in out.values())


def test_other_rate_and_stems() -> None:
    cfg = tiny_config().replace(sample_rate=16000, stems=("speech", "noise"), band_layout="musical")
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 2, 3000))
    assert set(out) == {"speech", "noise"}


def test_batch_consistency() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    x = torch.randn(3, 2, 2000)
    with torch.no_grad():
        batch = model(x)
        single = [model(x[i : i + 1]) for i in range(3)]
    for stem in batch:
        for i in range(3):
            assert torch.allclose(batch[stem][i], single[i][stem][0], atol=1e-5)


def test_query_conditioning() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config().replace(query_dim=8, stems=("target",))).eval()
    x = torch.randn(2, 2, 1500)
    q1, q2 = torch.randn(1, 8), torch.randn(1, 8)
    with torch.no_grad():
        a = model(x, query=q1)["target"]
        b = model(x, query=q2)["target"]
        c = model(x, query=q1.expand(2, 8))["target"]
    assert not torch.allclose(a, b)
    assert torch.allclose(a, c, atol=1e-6)  # a (1, Q) query broadcasts
    with pytest.raises(InputError, match="query"):
        model(x)


def test_bounded_receptive_field_chunk_equals_whole() -> None:
    torch.manual_seed(0)
    cfg = tiny_config().replace(time_model="conv")
    model = build_model(cfg).eval()
    r = model.receptive_field_samples
    assert r is not None
    x = torch.randn(1, 2, 8000)
    a, b = 47 * 64, 63 * 64  # chunk edges on the STFT hop grid (the engine's hops are too)
    lo, hi = a - r, b + r
    with torch.no_grad():
        whole = model(x)
        part = model(x[..., lo:hi])
    for stem in whole:
        assert torch.allclose(whole[stem][..., a:b], part[stem][..., a - lo : b - lo], atol=1e-5), (
            stem
        )
    with torch.no_grad():  # the BLSTM variant has no such bound
        lstm = build_model(tiny_config()).eval()
        w2, p2 = lstm(x), lstm(x[..., lo:hi])
    assert not torch.allclose(w2["vocals"][..., a:b], p2["vocals"][..., a - lo : b - lo], atol=1e-5)


def test_loss_and_training_step() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config())
    x = torch.randn(2, 2, 2048)
    ref = {s: x * w for s, w in zip(model.stems, (0.5, 0.2, 0.2, 0.1), strict=True)}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = separation_loss(model(x), ref)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_small_preset_fits_the_zoo_budget() -> None:
    with torch.device("meta"):
        model = build_model(small_config())
    n = sum(p.numel() for p in model.parameters())
    assert 1e6 < n and n * 4 < 25e6


def test_round_trip(tmp_path: Path) -> None:
    from audiotool.checkpoints import save_pretrained
    from audiotool.hub import load_model

    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_model(cfg).eval()
    save_pretrained(model, cfg, tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"), task="separate")
    x = torch.randn(1, 2, 1000)
    with torch.no_grad():
        assert torch.equal(model(x)["bass"], loaded.model(x)["bass"])
    assert isinstance(loaded.config, BandSplitConfig) and loaded.config.stems == cfg.stems

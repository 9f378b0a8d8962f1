from __future__ import annotations

from pathlib import Path

import pytest
import torch

from audiotool.errors import ConfigError
from audiotool.models.audio_branch import (
    PRESETS,
    SegmentAttentionPooling,
    build_model,
    nt_xent,
)


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(PRESETS["tiny"]()).eval()


@pytest.mark.parametrize("samples", [50, 400, 1280, 16000, 50000])
def test_shapes_any_length(tiny: torch.nn.Module, samples: int) -> None:
    with torch.no_grad():
        seg, pooled = tiny(torch.randn(2, samples))
        frames, lengths = tiny.encode_frames(torch.randn(2, samples))
    assert seg.shape == (2, 8, 32) and pooled.shape == (2, 32)
    assert frames.shape[0] == 2 and frames.shape[2] == 32 and int(lengths[0]) >= 1
    assert torch.isfinite(seg).all()


@pytest.mark.parametrize("pooling", ["attention", "max", "avg", "learnable"])
def test_each_pooling_strategy(pooling: str) -> None:
    torch.manual_seed(0)
    pool = SegmentAttentionPooling(
        dim=16,
        num_segments=4,
        pooling=pooling,  # type: ignore[arg-type]
        num_heads=2,
        temporal_encoding=False,
    ).eval()
    frames = torch.randn(2, 40, 16)
    with torch.no_grad():
        out = pool(frames)
        # each segment only sees its own frames: changing frames of segment 3 leaves 0-2 alone
        changed = frames.clone()
        changed[:, 30:] += 5
        out2 = pool(changed)
    assert out.shape == (2, 4, 16)
    assert torch.allclose(out[:, :3], out2[:, :3], atol=1e-6)
    assert not torch.allclose(out[:, 3], out2[:, 3])
    if pooling == "avg":
        assert torch.allclose(out[:, 0], frames[:, :10].mean(1), atol=1e-6)
    if pooling == "max":
        assert torch.allclose(out[:, 1], frames[:, 10:20].max(1).values)


def test_padding_is_ignored_by_pooling() -> None:
    pool = SegmentAttentionPooling(dim=8, num_segments=2, pooling="avg").eval()
    frames = torch.randn(1, 10, 8)
    padded = torch.cat([frames, 100 * torch.ones(1, 6, 8)], dim=1)
    a = pool(frames)
    b = pool(padded, torch.tensor([10]))
    assert torch.allclose(a, b, atol=1e-6)


def test_short_clip_fewer_frames_than_segments() -> None:
    pool = SegmentAttentionPooling(dim=8, num_segments=8, pooling="attention", num_heads=2)
    out = pool(torch.randn(1, 3, 8))
    assert out.shape == (1, 8, 8) and torch.isfinite(out).all()
    with pytest.raises(ConfigError, match="pooling"):
        SegmentAttentionPooling(dim=8, pooling="median")  # type: ignore[arg-type]


def test_deterministic_and_batch_consistent(tiny: torch.nn.Module) -> None:
    x = torch.randn(3, 8000)
    with torch.no_grad():
        a = tiny(x)[1]
        b = tiny(x)[1]
        single = torch.cat([tiny(x[i : i + 1])[1] for i in range(3)])
    assert torch.equal(a, b)
    assert torch.allclose(a, single, atol=1e-5)


def test_frame_model_matches_frame_rate(tiny: torch.nn.Module) -> None:
    with torch.no_grad():
        out = tiny.frame_model(torch.randn(2, 1, 1280 * 10))
    assert out.shape == (2, 32, 10)


def test_presets_sizes() -> None:
    with torch.device("meta"):
        light = build_model(PRESETS["light"]())
        full = build_model(PRESETS["full"]())
        small = build_model(PRESETS["small"]())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 20e6 < count(light) < 35e6  # seed 002: ~25.6 M
    assert count(full) > 3 * count(light)
    assert count(small) * 4 < 25e6


def test_contrastive_loss_learns() -> None:
    torch.manual_seed(0)
    a = torch.randn(8, 16)
    assert float(nt_xent(a, a + 0.01 * torch.randn(8, 16))) < float(nt_xent(a, torch.randn(8, 16)))


def test_round_trip(tmp_path: Path, tiny: torch.nn.Module) -> None:
    from audiotool.checkpoints import save_pretrained
    from audiotool.hub import load_model

    save_pretrained(tiny, PRESETS["tiny"](), tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"), task="embed")
    x = torch.randn(1, 4000)
    with torch.no_grad():
        assert torch.equal(loaded.model(x)[1], tiny(x)[1])


def test_supcon_prefers_label_clusters() -> None:
    from audiotool.models.audio_branch import supcon

    labels = torch.tensor([0, 0, 1, 1])
    clustered = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    assert float(supcon(clustered, labels)) < float(supcon(mixed, labels))
    assert float(supcon(clustered, torch.tensor([0, 1, 2, 3]))) == 0.0  # no positives


@pytest.mark.parametrize("normalize", [False, True])
def test_padded_batch_equals_one_by_one(normalize: bool) -> None:
    import dataclasses

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(PRESETS["tiny"](), normalize=normalize)).eval()
    # lengths with mel-frame counts that are not multiples of 8 (partial last frames)
    clips = [torch.randn(16000), torch.randn(9000), torch.randn(5100)]
    lengths = torch.tensor([len(c) for c in clips])
    batch = torch.stack([torch.nn.functional.pad(c, (0, 16000 - len(c))) for c in clips])
    with torch.no_grad():
        frames, frame_len = model.encode_frames(batch, lengths)
        seg, pooled = model(batch, lengths)
        for i, clip in enumerate(clips):
            f1, n1 = model.encode_frames(clip[None])
            s1, p1 = model(clip[None])
            assert int(frame_len[i]) == int(n1[0])
            assert torch.allclose(frames[i, : int(n1[0])], f1[0], atol=1e-5)
            assert torch.allclose(seg[i], s1[0], atol=1e-5)
            assert torch.allclose(pooled[i], p1[0], atol=1e-5)


def test_per_utterance_normalisation() -> None:
    from audiotool.features import LogMel

    mel = LogMel(normalize=True)
    x = torch.randn(2, 16000) * torch.tensor([[0.01], [1.0]])
    out = mel(x)
    assert torch.allclose(out.mean(1), torch.zeros(2, 80), atol=1e-4)
    assert torch.allclose(out.std(1, unbiased=False), torch.ones(2, 80), atol=1e-2)
    assert torch.equal(out, mel(x))  # deterministic
    # well above the log floor a gain change is only an offset, which normalisation removes
    assert torch.allclose(mel(10 * x[1:]), out[1:], atol=1e-3)

from __future__ import annotations

import torch
from torchaudio.models import HDemucs, hdemucs_low

from audiotool.models.hdemucs import PRESETS, HDemucsConfig, build_model

TINY = HDemucsConfig(stems=("drums", "bass"), channels=8, depth=4, nfft=256)


def test_wrapper_equals_torchaudio() -> None:
    torch.manual_seed(0)
    ours = build_model(TINY).eval()
    raw = HDemucs(sources=["drums", "bass"], channels=8, depth=4, nfft=256).eval()
    raw.load_state_dict({k[len("model.") :]: v for k, v in ours.state_dict().items()})
    x = torch.randn(1, 2, 5000)
    with torch.no_grad():
        out, ref = ours(x), raw(x)
    assert torch.equal(out["drums"], ref[:, 0]) and torch.equal(out["bass"], ref[:, 1])


def test_mono_and_odd_lengths() -> None:
    model = build_model(TINY).eval()
    with torch.no_grad():
        for n in (777, 4410):
            out = model(torch.randn(1, 1, n))
            assert out["bass"].shape == (1, 1, n)


def test_presets_match_torchaudio_factories() -> None:
    with torch.device("meta"):
        ours = build_model(PRESETS["low"]()).model
        ref = hdemucs_low(["drums", "bass", "other", "vocals"])
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())

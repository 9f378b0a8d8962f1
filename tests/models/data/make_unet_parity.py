"""Regenerate unet_parity.json: AudioSR's own UNet on closed-form weights and inputs.

Needs a checkout of haoheliu/versatile_audio_super_resolution (the reference) and ``einops``.
Only three of its files are copied and imported; its ``latent_diffusion/util.py`` pulls in
PIL for plotting helpers, so a stub providing ``instantiate_from_config`` takes its place::

    python tests/models/data/make_unet_parity.py /path/to/versatile_audio_super_resolution

The weights are copied from audiotool's UNet (filled by
``tests.models.test_unet.deterministic_weights``) into the reference with strict loading, so
the key names are checked too.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root

from audiotool.models.unet import UNetModel
from tests.models.test_unet import (
    PARITY,
    PARITY_ARGS,
    deterministic_input,
    deterministic_weights,
)

FILES = (
    "audiosr/latent_diffusion/modules/diffusionmodules/openaimodel.py",
    "audiosr/latent_diffusion/modules/diffusionmodules/util.py",
    "audiosr/latent_diffusion/modules/attention.py",
)


def _import_reference(repo: Path) -> Any:
    root = Path(tempfile.mkdtemp())
    for rel in FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo / rel, root / rel)
    (root / "audiosr/latent_diffusion/util.py").write_text(
        "def instantiate_from_config(config):\n    raise NotImplementedError\n"
    )
    for pkg in (
        "audiosr",
        "audiosr/latent_diffusion",
        "audiosr/latent_diffusion/modules",
        "audiosr/latent_diffusion/modules/diffusionmodules",
    ):
        (root / pkg / "__init__.py").touch()
    sys.path.insert(0, str(root))
    from audiosr.latent_diffusion.modules.diffusionmodules.openaimodel import (
        UNetModel as RefUNet,
    )

    assert isinstance(RefUNet, type)
    return RefUNet


def main(repo: str) -> None:
    ref_cls = _import_reference(Path(repo))
    kw: dict[str, Any] = dict(PARITY_ARGS)
    ref = ref_cls(
        image_size=64,
        use_spatial_transformer=True,
        context_dim=None,
        **{
            **kw,
            "channel_mult": list(kw["channel_mult"]),
            "attention_resolutions": list(kw["attention_resolutions"]),
        },
    ).eval()
    ours = UNetModel(**kw)
    deterministic_weights(ours)
    ref.load_state_dict(ours.state_dict(), strict=True)
    shape = (2, int(kw["in_channels"]), 16, 8)
    timesteps = [1, 981]
    with torch.no_grad():
        out = ref(
            deterministic_input(*shape),
            torch.tensor(timesteps),
            context_list=[],
            context_attn_mask_list=[],
        )
    PARITY.write_text(
        json.dumps(
            {
                "source": "haoheliu/versatile_audio_super_resolution openaimodel.UNetModel",
                "input_shape": list(shape),
                "timesteps": timesteps,
                "output": [round(v, 7) for v in out.flatten().tolist()],
            }
        )
    )
    print(f"{out.numel()} values, max |out| {out.abs().max():.3f} -> {PARITY}")


if __name__ == "__main__":
    main(sys.argv[1])

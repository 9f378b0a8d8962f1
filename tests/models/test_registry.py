"""The family registry: one line per family, configs readable without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from audiotool.errors import ConfigError
from audiotool.models import registry
from audiotool.models._config import TASKS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", registry.family_names())
def test_every_family_agrees_with_its_config_class(name: str) -> None:
    family = registry.get_family(name)
    assert family.config_cls is registry.config_class(name)
    assert family.name == name == family.config_cls.family
    assert family.task in TASKS
    for preset in family.presets:
        assert type(family.preset(preset)) is family.config_cls


def test_unknown_family_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown model family 'nope'"):
        registry.config_from_dict({"family": "nope"})
    with pytest.raises(ConfigError, match="unknown preset"):
        registry.get_family("codec").preset("huge")


def test_reading_every_zoo_config_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from audiotool.hub import read_config, zoo_entries\n"
        "configs = [read_config(e.path) for e in zoo_entries()]\n"
        "assert configs, 'empty zoo'\n"
        "assert [c.task for c in configs] == [e.task for e in zoo_entries()]\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchaudio'))\n"
        "assert not bad, bad[:5]\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr


def test_models_info_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from audiotool.cli.app import app\n"
        "r = CliRunner().invoke(app, ['models', 'info', 'upsample-tiny', '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        'assert \'"task": "upsample"\' in r.output, r.output\n'
        "assert 'torch' not in sys.modules\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr


def test_inconsistent_configs_are_config_errors_at_build_time() -> None:
    from audiotool.checkpoints import build_model
    from audiotool.models.configs import AudioBranchConfig, LatentDiffusionConfig

    bad_rates = LatentDiffusionConfig(hifigan_rates=(6, 5, 4, 2, 1))
    with pytest.raises(ConfigError, match="hifigan_rates"):
        build_model(bad_rates)
    with pytest.raises(ConfigError, match="multiple of hop"):
        LatentDiffusionConfig(hop=7)
    with pytest.raises(ConfigError, match=r"config\.json: sample_rate"):
        registry.config_from_dict({"family": "latent_diffusion", "hop": 7})
    heads = AudioBranchConfig(d_model=30, num_heads=4, ffn_dim=8, num_layers=1)
    with pytest.raises(ConfigError, match="cannot be built"):  # torch's own check
        build_model(heads)


def test_model_code_raises_no_usage_error() -> None:
    for path in (ROOT / "audiotool" / "models").glob("*.py"):
        assert "UsageError" not in path.read_text(encoding="utf-8"), path.name

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from audiotool.checkpoints import build_model
from audiotool.errors import ConfigError, UsageError
from audiotool.hub import load_model
from audiotool.training.loop import EMA, train, update_card_eval
from audiotool.training.recipe import load_recipe, recipe_from_dict
from tests.training.toy import ToyAdapter, toy_recipe

CPU = torch.device("cpu")


def test_learns_and_exports_a_zoo_folder(tmp_path: Path, test_family: object) -> None:
    recipe = toy_recipe()
    result = train(recipe, ToyAdapter(), build=build_model, out_dir=tmp_path / "m", device=CPU)
    log = [
        json.loads(line) for line in (tmp_path / "m" / "train_log.jsonl").read_text().splitlines()
    ]
    assert result.steps == 60
    assert log[-1]["val_mse"] < 0.5 * next(r for r in log if "loss" in r)["loss"]
    loaded = load_model(str(tmp_path / "m"))
    card = (tmp_path / "m" / "README.md").read_text()
    assert "library_name: audiotool" in card and "wall time" in card and "random toy" in card
    update_card_eval(tmp_path / "m", "| LSD | 1.0 |")
    assert "| LSD | 1.0 |" in (tmp_path / "m" / "README.md").read_text()
    assert loaded.config.family == "test_scale"


def test_resume_gives_the_same_weights(tmp_path: Path, test_family: object) -> None:
    recipe = toy_recipe()
    train(recipe, ToyAdapter(), build=build_model, out_dir=tmp_path / "full", device=CPU)
    part = train(
        recipe,
        ToyAdapter(),
        build=build_model,
        out_dir=tmp_path / "split",
        device=CPU,
        max_steps=30,
    )
    assert part.steps == 30 and not (tmp_path / "split" / "model.safetensors").exists()
    train(recipe, ToyAdapter(), build=build_model, out_dir=tmp_path / "split", device=CPU)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise


def test_checkpoint_state_loads_with_weights_only(tmp_path: Path, test_family: object) -> None:
    train(
        toy_recipe(),
        ToyAdapter(),
        build=build_model,
        out_dir=tmp_path / "m",
        device=CPU,
        max_steps=10,
    )
    state = torch.load(tmp_path / "m" / "checkpoints" / "train_state.pt", weights_only=True)
    assert state["step"] == 10 and "optimizer" in state


def test_ema_math() -> None:
    lin = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(lin.weight, 0.0)
    ema = EMA(lin, decay=0.9)
    torch.nn.init.constant_(lin.weight, 1.0)
    ema.update(lin)  # decay min(0.9, 1/10) = 0.1 -> 0.1*0 + 0.9*1
    assert float(ema.shadow["weight"]) == pytest.approx(0.9)
    ema.update(lin)  # decay min(0.9, 2/11)
    d = 2 / 11
    assert float(ema.shadow["weight"]) == pytest.approx(d * 0.9 + (1 - d))
    with ema.swapped_in(lin):
        assert float(lin.weight) == pytest.approx(d * 0.9 + (1 - d))
    assert float(lin.weight) == 1.0


def test_recipe_strictness(tmp_path: Path, test_family: object) -> None:
    with pytest.raises(ConfigError, match="lrr"):
        toy_recipe(lrr=0.1)
    with pytest.raises(ConfigError, match="number"):
        toy_recipe(lr="fast")
    with pytest.raises(ConfigError, match="hiddn"):
        recipe_from_dict(
            {
                "task": "upsample",
                "model": {"family": "test_scale", "preset": "tiny", "overrides": {"hiddn": 3}},
            }
        )
    with pytest.raises(ConfigError, match="serves"):
        recipe_from_dict({"task": "separate", "model": {"family": "test_scale", "preset": "tiny"}})
    path = tmp_path / "r.yaml"
    path.write_text(
        "task: upsample\nmodel: {family: test_scale, preset: tiny}\ntrain: {steps: 5}\nextra: 1\n"
    )
    with pytest.raises(ConfigError, match="extra"):
        load_recipe(path)


def test_fp16_on_cpu_is_refused(tmp_path: Path, test_family: object) -> None:
    with pytest.raises(UsageError, match="fp16"):
        train(
            toy_recipe(amp="fp16"),
            ToyAdapter(),
            build=build_model,
            out_dir=tmp_path / "m",
            device=CPU,
        )


def test_shipped_recipes_parse() -> None:
    root = Path(__file__).resolve().parents[2] / "recipes"
    recipes = sorted(root.glob("*.yaml"))
    assert len(recipes) >= 4
    for path in recipes:
        recipe = load_recipe(path)
        assert recipe.task in ("upsample", "separate", "embed", "reconstruct")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_process_data_parallel_on_gloo(tmp_path: Path) -> None:
    script = Path(__file__).with_name("ddp_worker.py")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
            str(script),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    sums = [float((out / f"rank{r}.sum").read_text()) for r in (0, 1)]
    assert sums[0] == sums[1]  # both ranks end with identical weights


class _DropoutAdapter(ToyAdapter):
    """The toy task with dropout drawn from the global RNG, as nn.Dropout inside a model is."""

    def loss(
        self, model: torch.nn.Module, batch: Any, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = batch
        h = torch.nn.functional.dropout(model(x), 0.3, training=True)
        return ((h - y) ** 2).mean(), {}


def test_resume_is_exact_with_global_rng_dropout(tmp_path: Path, test_family: object) -> None:
    recipe = toy_recipe(steps=20, val_every=10, ckpt_every=5, log_every=5)
    kw: dict[str, Any] = {"build": build_model, "device": CPU}
    train(recipe, _DropoutAdapter(), out_dir=tmp_path / "full", **kw)
    train(recipe, _DropoutAdapter(), out_dir=tmp_path / "split", max_steps=7, **kw)
    train(recipe, _DropoutAdapter(), out_dir=tmp_path / "split", **kw)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "split" / "train_log.jsonl").read_text().splitlines()
    ]
    assert steps == [5, 7, 10, 15, 20]  # 7: the stop; nothing repeated by the resume
    ckpts = sorted(p.name for p in (tmp_path / "split" / "checkpoints").glob("*-*.safetensors"))
    assert ckpts == ["ema-00000020.safetensors", "model-00000020.safetensors"]


def test_grad_clip_zero_means_no_clipping(tmp_path: Path, test_family: object) -> None:
    result = train(
        toy_recipe(grad_clip=0.0),
        ToyAdapter(),
        build=build_model,
        out_dir=tmp_path / "m",
        device=CPU,
    )
    first = json.loads((tmp_path / "m" / "train_log.jsonl").read_text().splitlines()[0])
    assert result.final_metrics["mse"] < 0.5 * first["loss"]


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("amp", "fp32", "one of"),
        ("lr_schedule", "linear", "one of"),
        ("steps", 2.5, "whole number"),
        ("steps", 0, "steps"),
        ("val_every", 0, "val_every"),
        ("betas", [0.9], "2 numbers"),
        ("ema_decay", 1.5, "ema_decay"),
    ],
)
def test_recipe_values_are_checked(
    test_family: object, key: str, value: object, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        toy_recipe(**{key: value})


def test_recipe_overrides_must_be_a_mapping(test_family: object) -> None:
    with pytest.raises(ConfigError, match="overrides"):
        recipe_from_dict(
            {
                "task": "upsample",
                "model": {"family": "test_scale", "preset": "tiny", "overrides": [1]},
            }
        )


def test_run_writes_atomically_with_umask_permissions(
    tmp_path: Path, test_family: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints, log, zoo folder and card go through paths.replace_atomically: modes follow
    the umask, the umask is never changed (process-wide, not thread-safe), no temporaries."""
    import os
    import stat

    previous = os.umask(0o027)
    monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("os.umask called"))
    try:
        recipe = toy_recipe(steps=4, val_every=2, ckpt_every=2, log_every=1)
        train(recipe, ToyAdapter(), build=build_model, out_dir=tmp_path / "m", device=CPU)
        update_card_eval(tmp_path / "m", "| LSD | 1.0 |")
    finally:
        monkeypatch.undo()
        os.umask(previous)
    files = [p for p in (tmp_path / "m").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {
        "model.safetensors",
        "config.json",
        "README.md",
        "train_log.jsonl",
        "train_state.pt",
        "best.safetensors",
        "model-00000004.safetensors",
        "ema-00000004.safetensors",
    }
    assert not [p for p in files if p.name.startswith(".")]  # no temporaries left
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    assert set(modes.values()) == {0o640}, modes

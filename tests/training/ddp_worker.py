"""Launched by torch.distributed.run in test_loop: the toy task on 2 CPU processes (gloo)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from audiotool.checkpoints import build_model
from audiotool.models import registry
from audiotool.training import distributed
from audiotool.training.loop import train
from tests.training.toy import ToyAdapter, toy_recipe

registry._MODULES["test_scale"] = ("tests.conftest", "tests.conftest")
out = Path(sys.argv[1])
torch.set_num_threads(1)
device = distributed.init(torch.device("cpu"))
model_holder: dict[str, torch.nn.Module] = {}


def build(cfg):  # type: ignore[no-untyped-def]
    model_holder["m"] = build_model(cfg)
    return model_holder["m"]


train(toy_recipe(steps=20, val_every=10), ToyAdapter(), build=build, out_dir=out, device=device)
total = sum(float(p.sum()) for p in model_holder["m"].parameters())
(out / f"rank{distributed.rank()}.sum").write_text(repr(total))
distributed.shutdown()

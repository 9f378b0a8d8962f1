"""A toy task for the training-loop tests: regress a fixed linear map (test_scale family)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from audiotool.training.recipe import Recipe, recipe_from_dict

TARGET = torch.tensor([[0.5, -1.0], [2.0, 0.25]])


def toy_recipe(**train: Any) -> Recipe:
    cfg = {
        "steps": 60,
        "batch_size": 16,
        "lr": 0.05,
        "warmup_steps": 5,
        "val_every": 20,
        "ckpt_every": 10,
        "log_every": 10,
        "ema_decay": 0.9,
        "seed": 0,
        **train,
    }
    return recipe_from_dict(
        {"task": "upsample", "model": {"family": "test_scale", "preset": "tiny"}, "train": cfg}
    )


class ToyAdapter:
    name = "toy"
    best_metric = "mse"
    higher_is_better = False

    def prepare(self, model: nn.Module) -> None:
        return None

    def train_batch(self, step: int, rank: int, batch_size: int, generator: torch.Generator) -> Any:
        x = torch.randn(batch_size, 2, generator=generator)
        return x, x @ TARGET.T

    def loss(
        self, model: nn.Module, batch: Any, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        x, y = batch
        return ((model(x) - y) ** 2).mean(), {}

    def validate(self, model: nn.Module, *, max_batches: int) -> dict[str, float]:
        x = torch.randn(64, 2, generator=torch.Generator().manual_seed(99))
        return {"mse": float(((model(x) - x @ TARGET.T) ** 2).mean())}

    def card_facts(self) -> dict[str, Any]:
        return {"data": "random toy data"}

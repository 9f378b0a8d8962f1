"""Data-parallel training through torchrun: ``torchrun --nproc_per_node N -m audiotool train``.

torchrun sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; the process group uses NCCL on CUDA and
gloo on the CPU. Each rank draws its own batches (its rank is in the batch seed); only rank 0
writes checkpoints, logs and the card.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device: torch.device) -> torch.device:
    """Start the process group when launched by torchrun; returns the device for this rank."""
    if world_size() <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return device


def broadcast_parameters(model: nn.Module) -> None:
    """Make every rank start from rank 0's weights and buffers."""
    if not dist.is_initialized():
        return
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)


def average_gradients(params: list[nn.Parameter]) -> None:
    """All-reduce and average gradients across ranks (data parallelism, as DDP does).

    Done explicitly after ``backward`` rather than through the DDP wrapper because the task
    losses call model methods other than ``forward`` (encoders, decoders), which DDP's
    hooks would not see.
    """
    if not dist.is_initialized():
        return
    n = float(dist.get_world_size())
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= n
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

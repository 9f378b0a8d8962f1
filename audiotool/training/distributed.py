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
    # a parameter may get no gradient on some ranks (a branch not taken): reduce zeros for it
    # there, so every rank all-reduces the same layout, and give it the average wherever any
    # rank had one (as DDP does)
    flat = torch.cat(
        [
            p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1)
            for p in params
        ]
        + [torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)]
    )
    dist.all_reduce(flat)
    flat[: flat.numel() - len(params)] /= n
    present = (flat[flat.numel() - len(params) :] > 0).tolist()
    offset = 0
    for i, p in enumerate(params):
        chunk = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
        if p.grad is not None:
            p.grad.copy_(chunk)
        elif present[i]:
            p.grad = chunk.clone()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (e.g. a time limit, which ranks
    could otherwise see at different steps and then wait on each other forever)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

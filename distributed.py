"""Tiny helpers for torchrun / DistributedDataParallel. Single-process runs need none
of this: every function falls back to rank 0 of a world of 1.

    torchrun --standalone --nproc_per_node 8 main.py --train y --stage 1 --data_dir DFMM
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from config import UserError


def setup(device_name: str = "auto"):
    """Start the process group when launched by torchrun. Returns (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise UserError(f"{world} processes on this node need {local_rank + 1} GPUs or more, it "
                        f"has {torch.cuda.device_count()}: start one process per GPU, or pass "
                        "--device cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier():
    if is_dist():
        dist.barrier()


def all_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over all ranks (itself in a single process)."""
    if not is_dist():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def any_flag(flag: bool, device) -> bool:
    """True on every rank when any rank raised the flag (e.g. a stop signal)."""
    if not is_dist():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sync_buffers(*modules):
    """Copy rank 0's buffers (BatchNorm statistics) to every rank. DDP does this at each
    forward; after the last step the ranks' own updates differ, so call it before saving."""
    if not is_dist():
        return
    for m in modules:
        if m is not None:
            for b in m.buffers():
                dist.broadcast(b.data, 0)


def cleanup():
    if is_dist():
        dist.destroy_process_group()

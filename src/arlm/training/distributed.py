"""Data-parallel training under torchrun (torch.distributed DDP; gloo on CPU, NCCL on CUDA).

The same ``arlm train`` command runs under ``torchrun --nproc_per_node N``: each rank draws its
own slice of every batch (``train.batch_size`` rows per rank, so the global batch is N times
larger), gradients are averaged by DDP, and rank 0 alone writes the run folder. Every decision
that must be unanimous (stop on a signal or a time limit, skip a non-finite step) is taken on
all-reduced values, so no rank waits forever on a collective the others skipped.
The model code knows nothing of this: the wrapping happens here, from outside.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..config import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); a plain run is rank 0 of 1."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ConfigError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them)") from None
    return DistInfo(rank, world, local)


def setup(info: DistInfo, device: torch.device) -> tuple[torch.device, bool]:
    """Join the process group and return this rank's device, and whether this call created the
    group (and so should destroy it at the end)."""
    if not info.enabled:
        return device, False
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return device, False
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device, True


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """The module to run forward/backward through: DDP over ``model`` when distributed."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def no_sync(module: nn.Module, last: bool):
    """Skip the gradient all-reduce on every micro-batch but the last (gradient accumulation)."""
    if last or not hasattr(module, "no_sync"):
        return contextlib.nullcontext()
    return module.no_sync()


def reduce_step(info: DistInfo, loss: torch.Tensor, *flags: bool) -> tuple[float, ...]:
    """Mean loss over ranks, and for each flag whether any rank raised it, in one collective."""
    if not info.enabled:
        return (float(loss), *flags)
    t = torch.tensor([0.0, *map(float, flags)], device=loss.device)
    t[0] = loss.detach().float().reshape(())
    dist.all_reduce(t)
    return (float(t[0]) / info.world_size, *(bool(v > 0) for v in t[1:].tolist()))


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def gather_objects(info: DistInfo, obj) -> list:
    """Every rank's ``obj`` on every rank (used for per-rank RNG states)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def teardown(owned: bool) -> None:
    if owned and dist.is_initialized():
        dist.destroy_process_group()

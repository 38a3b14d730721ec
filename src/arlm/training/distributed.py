"""Data-parallel training under torchrun (gloo on CPU, NCCL on CUDA): DDP, or FSDP2.

The same ``arlm train`` command runs under ``torchrun --nproc_per_node N``: each rank draws its
own slice of every batch (``train.batch_size`` rows per rank, so the global batch is N times
larger), gradients are averaged, and rank 0 alone writes the run folder. With
``train.distributed: ddp`` every rank holds the whole model and DDP all-reduces gradients; with
``fsdp`` (torch's ``fully_shard``, one unit per block plus the root) parameters, gradients and
optimizer state are sharded across ranks and gathered per block for compute, so a model that
does not fit one device's memory with its optimizer state can still train. Every decision
that must be unanimous (stop on a signal or a time limit, skip a non-finite step) is taken on
all-reduced values, so no rank waits forever on a collective the others skipped.
The model code knows nothing of this: the wrapping happens here, from outside.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable

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


def shard(model: nn.Module) -> nn.Module:
    """FSDP2 in place: each block is one unit (gathered for its forward and backward, then
    freed), the root holds the embeddings and the head. Returns the same model."""
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def parallelize(model: nn.Module, optimizer, info: DistInfo, device: torch.device, mode: str,
                build_optimizer: Callable[[nn.Module], object], restored: bool) -> tuple[nn.Module, object]:
    """Wrap a built (and possibly restored) model for this run; returns the module to run
    forward/backward through and the optimizer to step.

    ``fsdp`` shards ``model`` in place and rebuilds the optimizer over the shards with the same
    state (``restored``: the optimizer holds a checkpoint's moments to carry over); otherwise the
    model is DDP-wrapped when distributed, and the optimizer is returned unchanged.
    """
    if not (info.enabled and mode == "fsdp"):
        return wrap(model, info, device), optimizer
    moments = optimizer_state_by_name(model, optimizer) if restored else None
    shard(model)
    optimizer = build_optimizer(model)
    if moments is not None:
        load_full_optimizer_state(model, optimizer, moments)
    return model, optimizer


def is_sharded(model: nn.Module) -> bool:
    return hasattr(model, "set_requires_gradient_sync")


@contextlib.contextmanager
def no_sync(module: nn.Module, last: bool):
    """Skip the gradient reduction on every micro-batch but the last (gradient accumulation)."""
    if last:
        yield
    elif is_sharded(module):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    elif hasattr(module, "no_sync"):
        with module.no_sync():
            yield
    else:
        yield


def full_state(model: nn.Module, optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state dicts of a sharded model, on CPU, for rank 0
    to write (other ranks get empty dicts). A collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def optimizer_state_by_name(model: nn.Module, optimizer) -> dict:
    """The optimizer's state keyed by parameter name (the layout ``load_sharded_optimizer`` takes)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))


def load_full_optimizer_state(model: nn.Module, optimizer, state: dict) -> None:
    """Load a full, name-keyed optimizer state into ``optimizer`` (sharded or not)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def grad_norm_value(norm) -> float:
    """clip_grad_norm_'s result as a float (a replicated DTensor under FSDP2)."""
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


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

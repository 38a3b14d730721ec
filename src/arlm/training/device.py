"""Where and in what precision training runs."""

from __future__ import annotations

import contextlib

import torch

from ..config import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; an unavailable device is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={name!r} but CUDA is not available here; use auto or cpu")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
        return dev
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device='mps' but MPS is not available here; use auto or cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> bool:
    """Whether to train under bf16 autocast: auto/bf16 on CUDA, fp32 everywhere else."""
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "bf16" and not cuda_bf16:
        raise ConfigError(
            f"train.precision='bf16' needs a CUDA device with bf16 support; the device is {device}. "
            "Use precision auto (bf16 where supported, fp32 otherwise) or fp32"
        )
    return precision in ("auto", "bf16") and cuda_bf16


def autocast_ctx(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

"""Optimizer construction: AdamW (or Adam) with weight decay on matrices only."""

from __future__ import annotations

import torch
from torch import nn

from ..config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: tensors with dim >= 2 (matmul weights and embeddings) decay; norm gains and
    biases (dim < 2) do not, as nanoGPT does. Shared parameters appear once."""
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() already yields a tied tensor once
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, or Adam (coupled L2 decay, as torch defines it) when ``cfg.optimizer == "adam"``.

    Fused kernels on CUDA. The learning rate is set by the trainer before every update.
    """
    groups = param_groups(model, cfg.weight_decay)
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    if device.type == "cuda":
        kwargs["fused"] = True
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, **kwargs)

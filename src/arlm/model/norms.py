"""Normalisation layers: LayerNorm (bias-free), RMSNorm, ScaleNorm, SimpleRMSNorm, and ``make_norm``
which picks one from the config.

Dims: C model dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019) written as x-transformers does: l2-normalise, times sqrt(C),
    times a learned gain, so converted weights give identical outputs."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**0.5
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.weight


class ScaleNorm(RMSNorm):
    """ScaleNorm (Nguyen & Salazar 2019): RMSNorm with one learned scalar gain."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self.weight = nn.Parameter(torch.ones(1))


class SimpleRMSNorm(nn.Module):
    """RMSNorm without a learned gain (Qin et al. 2023, TransNormerLLM's SimpleRMSNorm)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale


NORM_TYPES = (nn.LayerNorm, RMSNorm, SimpleRMSNorm)


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.dim
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim)
    if cfg.norm == "scalenorm":
        return ScaleNorm(dim)
    if cfg.norm == "simple_rmsnorm":
        return SimpleRMSNorm(dim)
    # bias-free LayerNorm: the x-transformers default, more stable than with a bias
    return nn.LayerNorm(dim, bias=False)

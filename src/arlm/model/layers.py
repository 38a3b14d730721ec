"""Norms, feed-forward variants and the transformer block.

Dims: B batch, T time, C model dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .attention import Attention


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019) written as x-transformers does: l2-normalise, times sqrt(C),
    times a learned gain, so converted weights give identical outputs."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**0.5
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.weight


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.dim
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim)
    # bias-free LayerNorm: the x-transformers default, more stable than with a bias
    return nn.LayerNorm(dim, bias=False)


class ReluSquared(nn.Module):
    """relu(x)**2 (So et al. 2021, Primer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


def make_activation(name: str) -> nn.Module:
    return {"gelu": nn.GELU(), "swish": nn.SiLU(), "relu_squared": ReluSquared()}[name]


class FeedForward(nn.Module):
    """Position-wise MLP; ``ff_glu`` gates it (Shazeer 2020, GLU variants)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        inner = cfg.ff_inner_dim
        self.glu = cfg.ff_glu
        self.proj_in = nn.Linear(cfg.dim, inner * (2 if cfg.ff_glu else 1), bias=cfg.ff_bias)
        self.act = make_activation(cfg.ff_activation)
        self.dropout = nn.Dropout(cfg.ff_dropout)
        self.proj_out = nn.Linear(inner, cfg.dim, bias=cfg.ff_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj_in(x)
        if self.glu:
            h, gate = h.chunk(2, dim=-1)
            h = h * self.act(gate)
        else:
            h = self.act(h)
        return self.proj_out(self.dropout(h))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + ff(norm(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg)
        self.ff_norm = make_norm(cfg)
        self.ff = FeedForward(cfg)
        self.layer_dropout = cfg.layer_dropout

    def _drop_path(self, branch: torch.Tensor) -> torch.Tensor:
        # Stochastic depth per row (Huang et al. 2016), rescaled so eval needs no correction.
        # x-transformers drops a layer for the whole batch without rescaling, which makes the
        # expected train-time output differ from eval; arlm does the unbiased version.
        if not self.training or self.layer_dropout == 0.0:
            return branch
        keep = 1.0 - self.layer_dropout
        mask = torch.empty(branch.shape[0], 1, 1, device=branch.device).bernoulli_(keep)
        return branch * mask / keep

    def forward(self, x, rope=None, mask=None, kv=None, input_pos=None):
        x = x + self._drop_path(self.attn(self.attn_norm(x), rope, mask, kv, input_pos))
        x = x + self._drop_path(self.ff(self.ff_norm(x)))
        return x

"""Feed-forward sublayers: the position-wise MLP and its variants (GLU gating, activations).

Dims: B batch, T time, C model dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .calls import call


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    """relu(x)**2 (So et al. 2021, Primer)."""
    return F.relu(x).square()


# plain functions, not modules: an activation has no state, and a module call per layer per
# decoded token is measurable overhead at batch 1
ACTIVATIONS = {"gelu": F.gelu, "swish": F.silu, "relu_squared": relu_squared}


class FeedForward(nn.Module):
    """Position-wise MLP; ``ff_glu`` gates it (Shazeer 2020, GLU variants): proj_in gives
    [up, gate] and the hidden is up * act(gate). As in x-transformers a GLU input projection keeps
    its bias when ``ff_bias`` is off. ``ff_post_act_ln`` normalises the hidden (NormFormer)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        inner = cfg.ff_inner_dim
        self.glu = cfg.ff_glu
        self.proj_in = nn.Linear(cfg.dim, inner * (2 if cfg.ff_glu else 1), bias=cfg.ff_bias or cfg.ff_glu)
        self.act = ACTIVATIONS[cfg.ff_activation]
        self.post_act_norm = nn.LayerNorm(inner, bias=False) if cfg.ff_post_act_ln else None
        self.dropout = cfg.ff_dropout
        self.proj_out = nn.Linear(inner, cfg.dim, bias=cfg.ff_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mods = self._modules  # a plain dict: no Module.__getattr__ per access
        h = call(mods["proj_in"], x)
        if self.glu:
            h, gate = h.chunk(2, dim=-1)
            h = h * self.act(gate)
        else:
            h = self.act(h)
        if self.post_act_norm is not None:
            h = self.post_act_norm(h)
        if self.dropout and self.training:
            h = F.dropout(h, self.dropout)
        return call(mods["proj_out"], h)

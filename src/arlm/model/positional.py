"""Positional information: learned absolute embeddings and rotary embeddings.

Dims: B batch, T time, H heads, D head size, R rotary size (R <= D, even).
"""

from __future__ import annotations

import torch
from torch import nn


class AbsolutePositionalEmbedding(nn.Module):
    """Learned absolute positions (GPT-2). Scaled by dim**-0.5 on the way out, as x-transformers
    does, so converted x-transformers weights give identical logits; the init compensates so the
    effective scale at init matches GPT-2's std 0.02."""

    def __init__(self, dim: int, max_seq_len: int):
        super().__init__()
        self.scale = dim**-0.5
        self.emb = nn.Embedding(max_seq_len, dim)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:  # (T,) or (B, T) -> (..., T, dim)
        return self.emb(positions) * self.scale


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021, RoFormer) on the first R dims of each head,
    rotating adjacent pairs (x[2i], x[2i+1]) as x-transformers does; partial rotary as GPT-J.

    The cos/sin table covers ``max_positions`` positions and is indexed by position, so cached
    decoding and ragged batches (per-row positions) cost nothing extra."""

    def __init__(self, rot_dim: int, max_positions: int, base: float = 10000.0):
        super().__init__()
        self.rot_dim = rot_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.float32) / rot_dim))
        t = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # (P, R/2)
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def table(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for positions (T,) -> (1, 1, T, R/2) or (B, T) -> (B, 1, T, R/2)."""
        cos, sin = self.cos[positions], self.sin[positions]
        if positions.dim() == 1:
            return cos[None, None], sin[None, None]
        return cos[:, None], sin[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first R dims of x (B, H, T, D) in adjacent pairs; the rest pass through."""
    r = cos.shape[-1] * 2
    rot, rest = x[..., :r], x[..., r:]
    pairs = rot.float().unflatten(-1, (-1, 2))  # (B, H, T, R/2, 2)
    x1, x2 = pairs.unbind(-1)
    out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    out = out.to(x.dtype)
    return out if rest.shape[-1] == 0 else torch.cat((out, rest), dim=-1)

"""Causal self-attention on ``F.scaled_dot_product_attention`` with a preallocated KV cache.

Dims: B batch, T query time, S key time (cache length), H query heads, K key/value heads
(K divides H: K == H multi-head, 1 < K < H grouped-query, K == 1 multi-query), D head size.

The cache is written at ``input_pos`` (static shapes, no concatenation), so a decode step has
the same shapes at every position and compiles into one CUDA graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .positional import apply_rotary


class KVCache:
    """Keys and values for every layer, preallocated: k, v are (L, B, K, S, D).

    ``layer(i)`` gives that layer's (k, v) views; attention writes new keys at ``input_pos``.
    """

    def __init__(self, depth: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 device=None, dtype=torch.float32):
        shape = (depth, batch, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[i], self.v[i]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (beam search, dropping finished rows)."""
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.n_kv_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, (self.heads + 2 * self.kv_heads) * self.head_dim, bias=False)
        self.out = nn.Linear(self.heads * self.head_dim, cfg.dim, bias=False)
        self.dropout = cfg.attn_dropout
        self.qk_norm = cfg.qk_norm
        # qk-norm (Henry et al. 2020): cosine-similarity attention with a fixed temperature
        self.scale = cfg.qk_norm_scale if cfg.qk_norm else None

    def forward(self, x, rope=None, mask=None, kv=None, input_pos=None):
        B, T, _ = x.shape
        H, K, D = self.heads, self.kv_heads, self.head_dim
        q, k, v = self.qkv(x).split((H * D, K * D, K * D), dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, K, D).transpose(1, 2)  # (B, K, T, D)
        v = v.view(B, T, K, D).transpose(1, 2)  # (B, K, T, D)
        if self.qk_norm:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if kv is not None:
            k_cache, v_cache = kv  # (B, K, S, D)
            k_cache.index_copy_(2, input_pos, k.to(k_cache.dtype))
            v_cache.index_copy_(2, input_pos, v.to(v_cache.dtype))
            k, v = k_cache.to(q.dtype), v_cache.to(q.dtype)
        dropout = self.dropout if self.training else 0.0
        causal = mask is None
        if K != H:
            # expand K heads to H (a view, no copy until SDPA needs it)
            k = k[:, :, None].expand(B, K, H // K, k.shape[2], D).reshape(B, H, k.shape[2], D)
            v = v[:, :, None].expand(B, K, H // K, v.shape[2], D).reshape(B, H, v.shape[2], D)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                           is_causal=causal, scale=self.scale)  # (B, H, T, D)
        return self.out(y.transpose(1, 2).reshape(B, T, H * D))

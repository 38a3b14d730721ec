"""The one model: token embedding -> blocks -> norm -> logits.

Dims: B batch, T time, S cache length, C model dim, V vocabulary.

One forward serves training (no cache: causal SDPA, no mask materialised) and cached decoding
(``cache`` + ``input_pos``: keys written at those slots; queries see slots <= their own).
``start`` (B,) marks the first real slot of each row for left-padded ragged batches: positions
count from there and earlier slots are masked, so a row gives what it would give alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .attention import KVCache
from .layers import Block, make_norm
from .positional import AbsolutePositionalEmbedding, Rotary


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.token_emb = nn.Embedding(cfg.padded_vocab, cfg.dim)
        self.pos_emb = AbsolutePositionalEmbedding(cfg.dim, cfg.max_seq_len) if cfg.pos_emb == "absolute" else None
        self.rotary = Rotary(cfg.rotary_emb_dim, cfg.max_seq_len, cfg.rotary_base) if cfg.pos_emb == "rotary" else None
        self.emb_dropout = nn.Dropout(cfg.emb_dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = make_norm(cfg)
        self.head = None if cfg.tie_embedding else nn.Linear(cfg.dim, cfg.padded_vocab, bias=False)
        # tied logits are scaled by dim**-0.5, as x-transformers does
        self.tied_scale = cfg.dim**-0.5
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, and the residual output projections
        scaled by 1/sqrt(2 * depth) so the residual stream's variance does not grow with depth."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                # norm gains start at 1, biases at 0
                p.fill_(1.0 if name.endswith("norm.weight") else 0.0)
                continue
            s = std
            if name.endswith(("attn.out.weight", "ff.proj_out.weight")):
                s = std / math.sqrt(2 * self.cfg.depth)
            if self.pos_emb is not None and p is self.pos_emb.emb.weight:
                s = std / self.pos_emb.scale
            p.normal_(0.0, s, generator=generator)

    def new_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> KVCache:
        """A preallocated KV cache for ``batch_size`` rows and ``max_len`` slots."""
        p = self.token_emb.weight
        max_len = max_len or self.cfg.max_seq_len
        if max_len > self.cfg.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds the model context max_seq_len={self.cfg.max_seq_len}")
        return KVCache(self.cfg.depth, batch_size, self.cfg.n_kv_heads, max_len, self.cfg.head_dim,
                       device=device or p.device, dtype=dtype or p.dtype)

    def forward(self, ids: torch.Tensor, input_pos: torch.Tensor | None = None,
                cache: KVCache | None = None, start: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None, return_embeddings: bool = False) -> torch.Tensor:
        """ids (B, T) -> logits (B, T, V), or final embeddings (B, T, C).

        input_pos: (T,) slots of these tokens (default 0..T-1); required with ``cache``.
        start: (B,) first real slot per row (left padding); None means 0 for every row.
        key_mask: (B, T) booleans, False hides that token from later queries (no cache only;
        used by Forgetful Causal Masking). Each token always sees itself.
        """
        B, T = ids.shape
        if cache is not None and input_pos is None:
            raise ValueError("cached forward needs input_pos (the cache slots of these tokens)")
        if input_pos is None:
            input_pos = torch.arange(T, device=ids.device)
        positions = input_pos if start is None else (input_pos[None, :] - start[:, None]).clamp(min=0)  # (T,) | (B, T)

        x = self.token_emb(ids)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        x = self.emb_dropout(x)
        rope = self.rotary.table(positions) if self.rotary is not None else None

        mask = None
        if cache is not None or start is not None:
            mask = self._mask(input_pos, start, cache.max_len if cache is not None else T)
        if key_mask is not None:
            if cache is not None:
                raise ValueError("key_mask is for uncached forwards only")
            base = mask if mask is not None else self._mask(input_pos, None, T)
            mask = base & (key_mask[:, None, None, :] | torch.eye(T, dtype=torch.bool, device=ids.device))
        for i, block in enumerate(self.blocks):
            x = block(x, rope, mask, cache.layer(i) if cache is not None else None, input_pos)
        x = self.norm(x)
        if return_embeddings:
            return x
        logits = self.head(x) if self.head is not None else (x @ self.token_emb.weight.t()) * self.tied_scale
        if self.cfg.padded_vocab != self.cfg.vocab_size:
            logits = logits[..., : self.cfg.vocab_size]
        return logits

    @staticmethod
    def _mask(input_pos: torch.Tensor, start: torch.Tensor | None, S: int) -> torch.Tensor:
        """Boolean (B|1, 1, T, S): slot j is visible to the query at slot i iff start <= j <= i.
        A query at a padding slot (i < start) sees itself only, so no row is all-masked."""
        slots = torch.arange(S, device=input_pos.device)
        qi = input_pos[:, None]  # (T, 1)
        visible = slots[None, :] <= qi  # (T, S)
        if start is None:
            return visible[None, None]
        visible = visible[None] & (slots[None, None, :] >= start[:, None, None])  # (B, T, S)
        visible = visible | (slots[None, None, :] == qi[None])
        return visible[:, None]

    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding:
            n -= self.token_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.emb.weight.numel()
        return n

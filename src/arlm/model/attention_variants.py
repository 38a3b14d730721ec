"""Attention projection, gate and value variants: the parts of ``Attention`` that change what goes
into the kernel (latent projections) or what comes out of it (gates, sinks, value projections).

Dims: B batch, T query time, S key time, H query heads, K key/value heads, D query/key head
size, Dv value head size, C model dim.

Each piece works on one token's features at a time (or on parameters), so every option here is
causal and exact under the KV cache by construction; the learned sink adds a key column that
every query sees. Multi-head latent attention can also decode from a cache of latents
(``LatentQKV.absorbed``, ``Attention._latent_attention``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig


class ZeroLinear(nn.Linear):
    """A linear map that starts at zero (gate logits start at 0: sigmoid 0.5, SiLU 0)."""

    @torch.no_grad()
    def init_option_(self, generator=None) -> None:
        self.weight.zero_()
        if self.bias is not None:
            self.bias.zero_()


class LowRankGate(nn.Module):
    """Gate logits through a rank-r bottleneck: up(act(down(x))), ``up`` zero-initialised so the
    gate starts where a full-rank zero gate starts (Hybrid Gated Attention; SiLU in the middle
    as there, or nothing)."""

    def __init__(self, n_in: int, n_out: int, rank: int, silu: bool):
        super().__init__()
        self.down = nn.Linear(n_in, rank, bias=False)
        self.up = ZeroLinear(rank, n_out, bias=False)
        self.silu = silu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(x)
        return self.up(F.silu(h) if self.silu else h)


def gate_projection(n_in: int, heads: int, width: int, rank: int | None, headwise: bool, silu: bool) -> nn.Module:
    """Gate logits per head (headwise: one per head) or per feature (``width`` = heads x Dv)."""
    n_out = heads if headwise else width
    return ZeroLinear(n_in, n_out, bias=False) if rank is None else LowRankGate(n_in, n_out, rank, silu)


def gate_attended(y: torch.Tensor, x: torch.Tensor, heads: int, value_gate: nn.Module | None,
                  output_gate: nn.Module | None, silu: bool) -> torch.Tensor:
    """Gated attention: y (B, T, H*Dv) times act(logits), the logits summed from a gate on the
    layer input x (B, T, C) (Jumper et al. 2021, AlphaFold2) and a gate on y itself (Qiu et al.
    2025, "Gated Attention for LLMs"; both fused additively as in Hybrid Gated Attention). A
    head-wise gate gives one logit per head, broadcast over that head's features. ``silu``:
    SiLU instead of sigmoid (SwiGLU-style values)."""
    B, T, _ = y.shape
    logits = 0.0
    if value_gate is not None:
        logits = logits + value_gate(x).view(B, T, heads, -1)  # (B, T, H, 1 | Dv)
    if output_gate is not None:
        logits = logits + output_gate(y).view(B, T, heads, -1)
    gate = F.silu(logits) if silu else torch.sigmoid(logits)
    return (y.view(B, T, heads, -1) * gate).view(B, T, -1)


class HeadGate(nn.Linear):
    """Per-head sigmoid gate on the attended values from the layer input (Bondarenko et al. 2023,
    "Quantizable Transformers: ... Helping Attention Heads Do Nothing"). Starts open: zero
    weights, bias 10 (sigmoid ~ 1)."""

    def __init__(self, dim: int, heads: int):
        super().__init__(dim, heads, bias=True)

    @torch.no_grad()
    def init_option_(self, generator=None) -> None:
        self.weight.zero_()
        self.bias.fill_(10.0)

    def gate(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """y (B, H, T, Dv), x (B, T, C) -> y scaled per head and token."""
        return y * torch.sigmoid(self(x)).transpose(1, 2)[..., None].to(y.dtype)


class LearnedSink(nn.Module):
    """A learned attention sink per head (OpenAI 2025, gpt-oss; cf. Xiao et al. 2023, StreamingLLM):
    one more logit in every query's softmax, with nothing to read, so a head can put weight
    nowhere. Implemented as a zero key and value in front of the keys whose additive mask entry
    is the head's logit (q . 0 = 0), which keeps the fused kernel."""

    def __init__(self, heads: int):
        super().__init__()
        self.logit = nn.Parameter(torch.zeros(heads))

    @torch.no_grad()
    def init_option_(self, generator=None) -> None:
        self.logit.zero_()

    def extend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, H, T, D), k (B, H, S, D), v (B, H, S, Dv) and the kernel's mask (None with
        ``causal``: the causal fast path; None without it: all visible) -> k, v with the sink
        column first and the additive float mask (B|1, H, T, 1 + S)."""
        H, T, S = q.shape[1], q.shape[2], k.shape[2]
        if mask is None:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device)
            if causal:
                mask = mask.tril(S - T)
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
        mask = mask.to(q.dtype)
        mask = mask.view((1,) * (4 - mask.dim()) + tuple(mask.shape))
        n = mask.shape[0]
        sink = self.logit.to(q.dtype).view(1, H, 1, 1).expand(n, H, T, 1)
        mask = torch.cat((sink, mask.expand(n, H, T, S)), dim=-1)
        return F.pad(k, (0, 0, 1, 0)), F.pad(v, (0, 0, 1, 0)), mask


def _reject(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x minus its component along y, over the last dim, in float64 (the projection subtracts
    two close numbers)."""
    x64 = x.double()
    u = F.normalize(y.double(), dim=-1)
    return (x64 - (x64 * u).sum(dim=-1, keepdim=True) * u).to(x.dtype)


def orthogonal_values(y: torch.Tensor, values: torch.Tensor, heads: int, whole: bool, per_head: bool) -> torch.Tensor:
    """Orthogonal projected values ("belief attention", ICLR 2026, openreview Ard2QzPAUK): keep
    only the part of the attended output y (B, T, H*Dv) orthogonal to the token's own values
    (B, K, T, Dv) -- over all heads together (``whole``) and/or per head; both concatenated.
    Per token, so causal and cache-exact (x-transformers projects over the whole sequence)."""
    B, K, T, Dv = values.shape
    v = values.transpose(1, 2)[:, :, None].expand(B, T, heads // K, K, Dv)  # query head h reads KV head h % K
    v = v.reshape(B, T, heads * Dv)
    parts = []
    if whole:
        parts.append(_reject(y, v))
    if per_head:
        parts.append(_reject(y.view(B, T, heads, Dv), v.view(B, T, heads, Dv)).view(B, T, -1))
    return torch.cat(parts, dim=-1)


class LatentQKV(nn.Module):
    """Multi-head latent attention projections (DeepSeek-AI 2024, DeepSeek-V2): queries from a
    low-rank query latent, keys and values from a shared key/value latent; with
    ``latent_rope_subheads`` the last n key heads come straight from the input instead (their
    "decoupled RoPE": only those heads are rotated). Replaces the fused qkv projection."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H, K, D, Dv = cfg.heads, cfg.n_kv_heads, cfg.head_dim, cfg.value_head_dim
        n = cfg.attn_latent_rope_subheads or 0
        self.shape = (H, K, D)
        self.latent_q = nn.Linear(cfg.dim, cfg.attn_dim_latent_q, bias=False) if cfg.attn_use_latent_q else None
        self.latent_kv = nn.Linear(cfg.dim, cfg.attn_dim_latent_kv, bias=False) if cfg.attn_use_latent_kv else None
        kv_in = cfg.attn_dim_latent_kv if cfg.attn_use_latent_kv else cfg.dim
        self.q = nn.Linear(cfg.attn_dim_latent_q if cfg.attn_use_latent_q else cfg.dim, H * D, bias=False)
        self.k = nn.Linear(kv_in, (K - n) * D, bias=False)
        self.v = nn.Linear(kv_in, K * Dv, bias=False)
        self.rope_k = nn.Linear(cfg.dim, n * D, bias=False) if n else None
        self.n_rope = n
        # the KV head each query head reads (h % K), for the absorbed projections; derived, so made
        # on the CPU even under a meta device (not in the state dict; .to() moves it)
        self.register_buffer("kv_index", torch.arange(H, device="cpu") % K, persistent=False)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x (B, T, C) -> queries (B, T, H, D), the key/value latent (B, T, L) and the decoupled
        key heads (B, T, n, D) or None."""
        B, T, _ = x.shape
        H, K, D = self.shape
        q = self.q(self.latent_q(x) if self.latent_q is not None else x).view(B, T, H, D)
        c = self.latent_kv(x) if self.latent_kv is not None else x
        kr = self.rope_k(x).view(B, T, self.n_rope, D) if self.rope_k is not None else None
        return q, c, kr

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> queries and keys (B, T, H + K, D) side by side, values (B, T, K*Dv)."""
        B, T, _ = x.shape
        H, K, D = self.shape
        q, c, kr = self.parts(x)
        parts = [q, self.k(c).view(B, T, K - self.n_rope, D)] + ([kr] if kr is not None else [])
        return torch.cat(parts, dim=2), self.v(c)

    def absorbed(self, q: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (B, H, T, D) and the cached rows (B, 1, S, L + n*D) -> kernel inputs whose dot
        products are the attention logits: latent heads h score q_h . W_k c = (W_k^T q_h) . c, the
        decoupled heads score their own rotated keys; zero padding keeps the two kinds apart in one
        kernel call. Values are the latent itself (``values_out`` projects them). Shapes (B, H, T, E),
        (B, H, S, E), (B, H, S, L) with E = L, or L + D with decoupled heads."""
        H, K, D = self.shape
        n, L = self.n_rope, self.v.in_features
        B, _, S, _ = cache.shape
        c = cache[..., :L]  # (B, 1, S, L)
        w_k = self.k.weight.unflatten(0, (K - n, D))[self.kv_index[:H - n]]  # (H - n, D, L)
        q_lat = torch.einsum("bhtd,hdl->bhtl", q[:, :H - n], w_k)
        v = c.expand(B, H, S, L)
        if not n:
            return q_lat, v, v
        kr = cache[:, 0, :, L:].unflatten(-1, (n, D)).transpose(1, 2)  # (B, n, S, D)
        q = torch.cat((F.pad(q_lat, (0, D)), F.pad(q[:, H - n:], (L, 0))), dim=1)
        k = torch.cat((F.pad(c, (0, D)).expand(B, H - n, S, L + D), F.pad(kr, (L, 0))), dim=1)
        return q, k, v

    def values_out(self, y: torch.Tensor) -> torch.Tensor:
        """Attended latents (B, H, T, L) -> attended values (B, H, T, Dv), through each head's
        value projection."""
        K = self.shape[1]
        w_v = self.v.weight.unflatten(0, (K, -1))[self.kv_index]  # (H, Dv, L)
        return torch.einsum("bhtl,hvl->bhtv", y, w_v)

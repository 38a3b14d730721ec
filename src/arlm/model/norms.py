"""Normalisation layers: LayerNorm (bias-free), RMSNorm, ScaleNorm, SimpleRMSNorm, the point-wise
replacements DynamicTanh and Derf, and ``make_norm`` which picks one from the config; LayerScale for
branch outputs; the per-head query/key/value norms of attention (QKNorm, HeadRMSNorm).

Every gain here is stored as the gain itself (x-transformers' ``norm_add_unit_offset`` stores
gain - 1; the converter adds the 1). The gains are 1-D, so arlm's optimizer never
decays them and the two parametrisations train identically.

Dims: B batch, T time, C model dim, N heads of one norm, D head size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019) written as x-transformers does: l2-normalise, times sqrt(C),
    times a learned gain, so converted weights give identical outputs. With ``eps`` it is Llama's
    form instead, x * rsqrt(mean(x^2) + eps) * gain in fp32, so imported Llama weights do too."""

    def __init__(self, dim: int, eps: float | None = None):
        super().__init__()
        self.scale = dim**0.5
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.eps is None:
            return F.normalize(x, dim=-1) * self.scale * self.weight
        h = x.float()
        h = h * torch.rsqrt(h.square().mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


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


class DynamicTanh(nn.Module):
    """Dynamic Tanh (Zhu et al. 2025, "Transformers without Normalization"): a point-wise
    weight * tanh(alpha * x) + bias in place of a norm, with one learned scalar alpha. No
    statistics over the features, so nothing couples positions or channels."""

    def __init__(self, dim: int, init_alpha: float = 1.0):
        super().__init__()
        self.init_alpha = init_alpha
        # (1,), not a 0-dim scalar: FSDP2 cannot shard scalar parameters
        self.alpha = nn.Parameter(torch.full((1,), float(init_alpha)))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x * self.alpha) * self.weight + self.bias

    @torch.no_grad()
    def init_option_(self, generator=None) -> None:
        self.alpha.fill_(self.init_alpha)
        self.weight.fill_(1.0)
        self.bias.zero_()


class Derf(nn.Module):
    """Dynamic erf (Chen et al. 2025, "Stronger Normalization-Free Transformers"):
    weight * erf(alpha * x + shift) + bias, alpha and shift learned scalars (init 0.5 and 0, as
    x-transformers)."""

    def __init__(self, dim: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), 0.5))  # (1,): FSDP2 cannot shard 0-dim parameters
        self.shift = nn.Parameter(torch.zeros(1))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x * self.alpha + self.shift) * self.weight + self.bias

    @torch.no_grad()
    def init_option_(self, generator=None) -> None:
        self.alpha.fill_(0.5)
        self.shift.zero_()
        self.weight.fill_(1.0)
        self.bias.zero_()


class LayerScale(nn.Module):
    """LayerScale (Touvron et al. 2021, CaiT): a learned per-channel gain on a residual branch's
    output, started small (x-transformers starts it at 0) so each branch begins near the identity."""

    def __init__(self, dim: int, init_value: float = 0.0):
        super().__init__()
        self.init_value = init_value
        self.gain = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain

    @torch.no_grad()
    def init_option_(self, generator=None) -> None:
        self.gain.fill_(self.init_value)


class QKNorm(nn.Module):
    """Query-key normalisation (Henry et al. 2020): l2-normalise queries and keys, optionally in
    ``groups`` equal slices of each head, and optionally times a learned per-head, per-dimension
    gain (x-transformers' ``qk_norm_dim_scale``, started at D**0.25 so q.k starts at D**0.5)."""

    def __init__(self, heads: int, kv_heads: int, head_dim: int, groups: int = 1, dim_scale: bool = False):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.groups = heads, kv_heads, head_dim, groups
        # queries' heads then keys' heads, flat: 1-D, so the optimizer treats it as a norm gain
        self.gain = nn.Parameter(torch.full(((heads + kv_heads) * head_dim,), head_dim**0.25)) if dim_scale else None

    def _l2(self, t: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:
            return F.normalize(t, dim=-1)
        return F.normalize(t.unflatten(-1, (self.groups, -1)), dim=-1).flatten(-2)

    def forward(self, qk: torch.Tensor) -> torch.Tensor:
        """qk (B, T, H + K, D): queries' heads then keys' heads."""
        qk = self._l2(qk)
        if self.gain is not None:
            qk = qk * self.gain.view(-1, self.head_dim).to(qk.dtype)
        return qk

    def memory_keys(self, mem_k: torch.Tensor) -> torch.Tensor:
        """Learned memory keys (K, M, D) get the keys' normalisation and gain."""
        mem_k = self._l2(mem_k)
        if self.gain is not None:
            mem_k = mem_k * self.gain.view(-1, self.head_dim)[self.heads:, None].to(mem_k.dtype)
        return mem_k

    @torch.no_grad()
    def init_option_(self, generator=None) -> None:
        if self.gain is not None:
            self.gain.fill_(self.head_dim**0.25)


class HeadRMSNorm(nn.Module):
    """RMSNorm over each head's D features with a learned gain per head and feature (Dehghani et
    al. 2023, ViT-22B's query/key norm; value norm as in AlphaGenome). ``first`` leading heads pass
    through untouched (keys-only norm on the stacked queries and keys)."""

    def __init__(self, head_dim: int, heads: int, first: int = 0):
        super().__init__()
        self.head_dim, self.first, self.scale = head_dim, first, head_dim**0.5
        self.gain = nn.Parameter(torch.ones(heads * head_dim))  # 1-D: a norm gain, never decayed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., first + N, D)."""
        rest = x[..., self.first:, :] if self.first else x
        rest = F.normalize(rest, dim=-1) * self.scale * self.gain.view(-1, self.head_dim).to(x.dtype)
        return torch.cat((x[..., :self.first, :], rest), dim=-2) if self.first else rest

    @torch.no_grad()
    def init_option_(self, generator=None) -> None:
        self.gain.fill_(1.0)


NORM_TYPES = (nn.LayerNorm, RMSNorm, SimpleRMSNorm)


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.dim
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps)
    if cfg.norm == "scalenorm":
        return ScaleNorm(dim)
    if cfg.norm == "simple_rmsnorm":
        return SimpleRMSNorm(dim)
    if cfg.norm == "dynamic_tanh":
        return DynamicTanh(dim, cfg.dynamic_tanh_init_alpha)
    if cfg.norm == "derf":
        return Derf(dim)
    # bias-free LayerNorm: the x-transformers default, more stable than with a bias (norm_bias: GPT-2's)
    return nn.LayerNorm(dim, eps=1e-5 if cfg.norm_eps is None else cfg.norm_eps, bias=cfg.norm_bias)

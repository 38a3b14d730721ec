"""Positional information: embeddings added to the tokens, rotary and polar embeddings applied to
queries and keys, and additive attention biases (ALiBi, T5 buckets, a dynamic MLP).

Dims: B batch, T query time, S key time, H heads, D head size, R rotary size (R <= D, even).
Positions are (T,) when shared by every row or (B, T) for left-padded ragged batches; biases
depend only on query position minus key position, so cached decoding computes them for the
slots it needs and gets the same values as a full forward.

Derived tables (rotary angles, sinusoid frequencies, ALiBi slopes) are computed on the CPU even
under ``torch.device("meta")``: they are not in the state dict, so a model built on the meta
device and loaded with ``load_state_dict(..., assign=True)`` still has them (``.to()`` moves them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class AbsolutePositionalEmbedding(nn.Module):
    """Learned absolute positions (GPT-2). Scaled by dim**-0.5 on the way out, as x-transformers
    does, so converted x-transformers weights give identical logits; the init compensates so the
    effective scale at init matches GPT-2's std 0.02. With ``l2norm`` the rows are unit-normed
    instead (the l2norm_embed option)."""

    def __init__(self, dim: int, max_seq_len: int, l2norm: bool = False):
        super().__init__()
        self.l2norm = l2norm
        self.scale = 1.0 if l2norm else dim**-0.5
        self.emb = nn.Embedding(max_seq_len, dim)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:  # (T,) | (B, T) -> (..., T, C)
        out = self.emb(positions) * self.scale
        return F.normalize(out, dim=-1) if self.l2norm else out


class ScaledSinusoidalEmbedding(nn.Module):
    """Fixed sinusoids times one learned scalar (Hua et al. 2022, "Transformer Quality in Linear
    Time"): [sin(p w_i), cos(p w_i)] with w_i = 10000**(-i / (C/2))."""

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        half = dim // 2
        self.scale = nn.Parameter(torch.full((1,), dim**-0.5))
        self.register_buffer("inv_freq", theta ** -(torch.arange(half, dtype=torch.float32, device="cpu") / half), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:  # (T,) | (B, T) -> (..., T, C)
        angles = positions.to(self.inv_freq.dtype)[..., None] * self.inv_freq  # (..., T, C/2)
        return torch.cat((angles.sin(), angles.cos()), dim=-1) * self.scale


class _PositionTables(nn.Module):
    """A module whose buffers are position tables: they keep their dtype under model.to(dtype) /
    .half() (a cast would round the angles, and a complex -> real cast drops the rotation
    altogether); only the device follows. Parameters convert as usual."""

    def _apply(self, fn, recurse=True):
        tables = dict(self._buffers)
        self._buffers.clear()
        try:
            super()._apply(fn, recurse)
        finally:
            for name, t in tables.items():
                self._buffers[name] = t.to(fn(torch.empty(0, device=t.device)).device)
        return self


class Rotary(_PositionTables):
    """Rotary position embedding (Su et al. 2021, RoFormer) on the first R dims of each head,
    rotating adjacent pairs (x[2i], x[2i+1]) as x-transformers does; partial rotary as GPT-J.

    Options: ``interpolation_factor`` divides positions (Chen et al. 2023, position interpolation);
    ``base_rescale_factor`` raises the base by factor**(R/(R-2)) ("NTK-aware" scaling, bloc97 2023);
    ``xpos`` adds xPos length-extrapolation decay (Sun et al. 2022): queries scaled by
    s**(p/base), keys by s**(-p/base), so q.k decays with distance. The exponent is centred on a
    fixed position (half the table) rather than on the current input, so a cached decode step and
    a full forward use the same numbers.

    The table of unit complex numbers e^(i * angle) covers ``max_positions`` positions and is
    indexed by position, so cached decoding and ragged batches (per-row positions) cost nothing
    extra; each rotation is one complex multiply."""

    def __init__(self, rot_dim: int, max_positions: int, base: float = 10000.0, interpolation_factor: float = 1.0,
                 base_rescale_factor: float = 1.0, xpos: bool = False, xpos_scale_base: float = 512.0,
                 head_dim: int | None = None):
        super().__init__()
        self.rot_dim = rot_dim
        if base_rescale_factor != 1.0:
            base = base * base_rescale_factor ** (rot_dim / (rot_dim - 2))
        inv_freq = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.float32, device="cpu") / rot_dim))
        t = torch.arange(max_positions, dtype=torch.float32, device="cpu")
        freqs = torch.outer(t, inv_freq) / interpolation_factor  # (P, R/2)
        # pass-through pairs (partial rotary) rotate by 1 + 0i, so a whole head is one multiply
        pad = ((head_dim or rot_dim) - rot_dim) // 2
        cis = F.pad(torch.polar(torch.ones_like(freqs), freqs), (0, pad), value=1.0)  # (P, D/2) complex
        self.register_buffer("cis", cis, persistent=False)
        self.xpos = xpos
        if xpos:
            decay = (torch.arange(0, rot_dim, 2, dtype=torch.float32, device="cpu") + 0.4 * rot_dim) / (1.4 * rot_dim)  # (R/2,)
            power = (t - max_positions // 2) / xpos_scale_base  # (P,)
            xscale = F.pad(decay[None, :] ** power[:, None], (0, pad), value=1.0)  # (P, D/2)
            self.register_buffer("xscale", xscale, persistent=False)

    def table(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(rotation, xPos scale or None) for heads laid out (B, T, N, D): positions (T,) ->
        (1, T, 1, D/2), (B, T) -> (B, T, 1, D/2)."""
        cis = self.cis[positions][..., None, :]
        scale = self.xscale[positions][..., None, :] if self.xpos else None
        if positions.dim() == 1:
            return cis[None], (scale[None] if scale is not None else None)
        return cis, scale

    def table_range(self, p: int, T: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``table`` for positions p..p+T-1 shared by every row, as views: (1, T, 1, D/2)."""
        cis = self.cis[p:p + T, None][None]
        return cis, (self.xscale[p:p + T, None][None] if self.xpos else None)


def apply_rotary(x: torch.Tensor, cis: torch.Tensor, scale: torch.Tensor | None = None,
                 inverse_scale: bool = False) -> torch.Tensor:
    """Rotate x (B, T, N, D) in adjacent pairs (x[2i] + i x[2i+1]) times ``cis`` (.., T, 1, D/2);
    pairs past the rotary dims have cis = 1. ``scale`` (xPos) multiplies the pairs, or divides
    them with ``inverse_scale`` (keys)."""
    pairs = x if x.dtype == torch.float32 else x.float()  # (a no-op cast still costs a dispatch)
    if scale is not None:
        scale = scale.reciprocal() if inverse_scale else scale
    if torch.compiler.is_compiling():
        # inductor generates no code for complex ops: the same rotation in real arithmetic fuses
        x1, x2 = pairs.unflatten(-1, (-1, 2)).unbind(-1)  # (B, T, N, D/2) each
        cos, sin = cis.real, cis.imag
        y1, y2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
        if scale is not None:
            y1, y2 = y1 * scale, y2 * scale
        return torch.stack((y1, y2), dim=-1).flatten(-2).to(x.dtype)
    try:
        z = torch.view_as_complex(pairs.unflatten(-1, (-1, 2)))  # (B, T, N, D/2) complex
    except RuntimeError:  # a view whose strides are not whole complex numbers
        z = torch.view_as_complex(pairs.contiguous().unflatten(-1, (-1, 2)))
    z = z * cis
    if scale is not None:
        z = z * scale
    y = torch.view_as_real(z).flatten(-2)
    return y if y.dtype == x.dtype else y.to(x.dtype)


class Polar(_PositionTables):
    """Polar position embedding, PoPE (Gopalakrishnan et al. 2025, "Decoupling the 'What' and
    'Where' With Polar Coordinate Positional Embeddings"): each of the D features of a query or
    key becomes a complex number with magnitude softplus(x_d) and phase p * w_d (w_d =
    10000**(-d/D), all D features, not pairs), so q.k = sum_d |q_d| |k_d| cos((i - j) w_d - b_hd):
    content sets the magnitudes only, position the phases only. b is a learned phase offset per
    head and feature, clamped to [-2 pi, 0]. Queries and keys grow to 2D real features.

    x-transformers adds b to the key phases; arlm subtracts it from the query phases (the same
    dot products), so grouped-query keys, shared by several query heads, carry no per-head term."""

    def __init__(self, head_dim: int, heads: int, max_positions: int, uniform_init: bool = False,
                 base: float = 10000.0):
        super().__init__()
        self.uniform_init = uniform_init
        inv_freq = base ** -(torch.arange(head_dim, dtype=torch.float32, device="cpu") / head_dim)  # (D,)
        angles = torch.arange(max_positions, dtype=torch.float32, device="cpu")[:, None] * inv_freq  # (P, D)
        self.register_buffer("angles", angles, persistent=False)  # (P, D)
        self.learned_bias = nn.Parameter(torch.zeros(heads, head_dim))  # (H, D) phase offsets

    @torch.no_grad()
    def init_option_(self, generator=None) -> None:
        # zero offsets, or uniform over the clamp range (x-transformers' polar_bias_uniform_init)
        if self.uniform_init:
            self.learned_bias.uniform_(-2 * math.pi, 0.0, generator=generator)
        else:
            self.learned_bias.zero_()

    def _tables(self, a: torch.Tensor):
        """Phases a (B|1, T, D) -> ((cos, sin) of the query phases (B|1, T, H, D), (cos, sin) of
        the key phases (B|1, T, 1, D)). Real arithmetic: inductor has no complex codegen."""
        qa = a[..., None, :] + self.learned_bias.float().clamp(-2 * math.pi, 0.0).neg()  # (B|1, T, H, D)
        ka = a[..., None, :]
        return (qa.cos(), qa.sin()), (ka.cos(), ka.sin())

    def table(self, positions: torch.Tensor):
        a = self.angles[positions]
        return self._tables(a if positions.dim() == 2 else a[None])

    def table_range(self, p: int, T: int):
        return self._tables(self.angles[p:p + T][None])


def apply_polar(qk: torch.Tensor, q_tab, k_tab, heads: int) -> torch.Tensor:
    """Queries and keys side by side (B, T, H + K, D) -> (B, T, H + K, 2D): magnitude softplus(x)
    times (cos, sin) of the phases from the tables of ``Polar``, each feature's pair adjacent."""
    m = F.softplus(qk.float())
    mq, mk = m[:, :, :heads], m[:, :, heads:]
    (qc, qs), (kc, ks) = q_tab, k_tab
    out = torch.cat((torch.stack((mq * qc, mq * qs), dim=-1), torch.stack((mk * kc, mk * ks), dim=-1)), dim=2)
    return out.flatten(-2).to(qk.dtype)  # (B, T, H + K, 2D)


def rotary_head_mask(heads: int, kv_heads: int, n: int) -> torch.Tensor:
    """(H + K, 1) True on the heads that rotate: the last n query heads and the last n key heads
    (x-transformers' rotate_num_heads; decoupled RoPE of DeepSeek-V2's multi-latent attention)."""
    h = torch.arange(heads + kv_heads, device="cpu")
    return ((h >= heads - n) & (h < heads) | (h >= heads + kv_heads - n))[:, None]


def partial_head_tables(cis: torch.Tensor, scale: torch.Tensor | None, rotate: torch.Tensor,
                        heads: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-head rotary tables (.., T, H + K, D/2) for queries and keys side by side: the identity
    (and a unit xPos scale) on heads that do not rotate; the keys' xPos scale is inverted here, so
    queries and keys rotate in one ``apply_rotary`` call."""
    cis = torch.where(rotate, cis, torch.ones((), dtype=cis.dtype, device=cis.device))
    if scale is not None:
        is_key = torch.arange(rotate.shape[0], device=rotate.device)[:, None] >= heads
        scale = torch.where(rotate, torch.where(is_key, scale.reciprocal(), scale), 1.0)
    return cis, scale


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi head slopes (Press et al. 2021): a geometric sequence starting at 2**(-8/n) for n a
    power of two; otherwise the nearest power's slopes plus every other slope of twice that."""

    def geometric(n: int) -> list[float]:
        first = 2.0 ** (-8.0 / n)
        return [first ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        return geometric(heads)
    p = 2 ** math.floor(math.log2(heads))
    return geometric(p) + geometric(2 * p)[0::2][: heads - p]


class AlibiBias(nn.Module):
    """ALiBi (Press et al. 2021, "Train Short, Test Long"): bias -slope_h * |i - j|; heads past
    ``alibi_heads`` get no bias (x-transformers' alibi_num_heads). ``slopes`` replaces the
    geometric slopes (x-transformers' rel_pos_kwargs=dict(slopes=...))."""

    def __init__(self, alibi_heads: int, heads: int, slopes: list[float] | None = None):
        super().__init__()
        given = slopes
        slopes = torch.zeros(heads, device="cpu")
        slopes[:alibi_heads] = torch.tensor(given if given is not None else alibi_slopes(alibi_heads), device="cpu")
        self.register_buffer("slopes", slopes[:, None, None], persistent=False)  # (H, 1, 1)

    def forward(self, dist: torch.Tensor) -> torch.Tensor:  # (B|1, T, S) query - key positions -> (B|1, H, T, S)
        return -dist.abs()[:, None].to(self.slopes.dtype) * self.slopes


class T5RelativeBias(nn.Module):
    """T5 relative position buckets (Raffel et al. 2020), causal: exact buckets for short
    distances, log-spaced up to ``max_distance``, one learned scalar per bucket and head, scaled by
    sqrt(head size) as x-transformers does."""

    def __init__(self, heads: int, scale: float, num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        self.scale, self.num_buckets, self.max_distance = scale, num_buckets, max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def bucket(self, dist: torch.Tensor) -> torch.Tensor:
        n = dist.clamp(min=0)  # causal: keys after the query are masked, bucket them with distance 0
        exact = self.num_buckets // 2
        far = exact + (torch.log(n.clamp(min=1).float() / exact) / math.log(self.max_distance / exact)
                       * (self.num_buckets - exact)).long()
        far = far.clamp(max=self.num_buckets - 1)
        return torch.where(n < exact, n, far)

    def forward(self, dist: torch.Tensor) -> torch.Tensor:  # (B|1, T, S) -> (B|1, H, T, S)
        return self.relative_attention_bias(self.bucket(dist)).permute(0, 3, 1, 2) * self.scale


class DynamicPositionBias(nn.Module):
    """A small MLP from relative distance to one bias per head (Wang et al. 2021, CrossFormer's
    dynamic position bias); evaluated once per distance and gathered, never per (i, j) pair.
    ``norm`` puts a LayerNorm after each hidden Linear (bias-free on the first one, as
    x-transformers), as in SwinV2's log-spaced continuous position bias (Liu et al. 2021)."""

    def __init__(self, dim: int, heads: int, max_positions: int, depth: int = 2, log_distance: bool = False,
                 norm: bool = False):
        super().__init__()
        self.log_distance = log_distance
        self.max_positions = max_positions
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(1 if i == 0 else dim, dim))
            if norm:
                layers.append(nn.LayerNorm(dim, bias=i > 0))
            layers.append(nn.SiLU())
        layers.append(nn.Linear(dim, heads))
        self.mlp = nn.Sequential(*layers)

    def forward(self, dist: torch.Tensor) -> torch.Tensor:  # (B|1, T, S) -> (B|1, H, T, S)
        # one MLP row per distance in [0, P) (a static shape: no host sync, same table at every
        # decode step); future keys (negative distance) are masked, so any value will do there
        d = dist.clamp(min=0)
        x = torch.arange(self.max_positions, device=dist.device, dtype=self.mlp[0].weight.dtype)[:, None]  # (P, 1)
        if self.log_distance:
            x = torch.log1p(x)
        table = self.mlp(x)  # (P, H)
        return table[d].permute(0, 3, 1, 2)

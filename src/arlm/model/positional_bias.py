"""Position biases that each attention layer computes from its own input: the forgetting
transformer's data-dependent ALiBi (per token, or per query-key pair), a learned basis of
distance curves mixed per query, and contextual positions (CoPE), which count from the scores.

Dims: B batch, T query rows, S key slots (internal rows: memory tokens first, no memory/zero
key-value columns), H heads, C model dim. Every module maps (x (B, T, C), ctx, step, S) to an
additive bias (B, H, T, S); keys after the query are masked by the caller, so any value will do
there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig


class ForgetGateBias(nn.Module):
    """Forgetting Transformer (Lin et al. 2025, "Forgetting Transformer: Softmax Attention with a
    Forget Gate"); x-transformers' data-dependent ALiBi. Each token t emits a forget gate per head,
    f_t = sigmoid(w . x_t + b), and query i discounts key j by every gate after it: bias =
    sum_{j < l <= i} log f_l (ALiBi with a slope that depends on the data). With c_t the running
    sum of log gates this is c_i - c_j.

    Under a KV cache each slot's log gates are kept (``cache.forget``) and a step sums them over
    the slots in use: the same sums as a full forward whatever slots the step writes (memory
    tokens are recomputed in front of every step; speculative decoding rewrites slots), for
    O(S) per layer beside attention's O(T S). Left-padding rows get gate 1 (log 0): a padded row
    sums the same gates as the row alone."""

    def __init__(self, dim: int, heads: int, bias_init: float = 5.0, post_log_scale: float = 1.0):
        super().__init__()
        self.to_gates = nn.Linear(dim, heads)
        self.bias_init, self.post_log_scale = bias_init, post_log_scale

    @torch.no_grad()
    def init_option_(self, generator=None) -> None:
        # a large gate bias starts every gate near 1: almost no forgetting (x-transformers' default 5)
        self.to_gates.bias.fill_(self.bias_init)

    def forward(self, x: torch.Tensor, ctx, step: int, S: int) -> torch.Tensor:
        g = F.logsigmoid(self.to_gates(x).float()) * self.post_log_scale  # (B, T, H) log gates
        if ctx.pad is not None:
            g = g.masked_fill(ctx.pad[..., None], 0.0)
        g = g.transpose(1, 2)  # (B, H, T)
        if ctx.cache is None:
            c = g.cumsum(dim=-1)  # (B, H, T) running sums
            return c[..., :, None] - c[..., None, :]  # (B, H, T, T)
        gates = ctx.forget_state(step)  # (B, H, all slots), float32
        gates.index_copy_(2, ctx.slots, g)
        c = gates[:, :, :S].cumsum(dim=-1)  # (B, H, S)
        return c.index_select(2, ctx.slots)[..., :, None] - c[..., None, :]  # (B, H, T, S)


class PairForgetGateBias(nn.Module):
    """x-transformers' per-row data-dependent ALiBi: the forgetting transformer with a gate per
    (query, key) pair from a small query-key product, f_il = sigmoid(q_i . k_l / sqrt(d)), and
    bias = sum_{j <= l < i} log f_il (the key itself counts, the query does not, as
    x-transformers). The cache keeps the small keys per slot (``cache.forget``); left-padding keys
    get gate 1."""

    def __init__(self, dim: int, heads: int, dim_head: int = 8, post_log_scale: float = 1.0):
        super().__init__()
        self.heads, self.dim_head, self.post_log_scale = heads, dim_head, post_log_scale
        self.to_qk = nn.Linear(dim, 2 * heads * dim_head, bias=False)

    def forward(self, x: torch.Tensor, ctx, step: int, S: int) -> torch.Tensor:
        B, T, _ = x.shape
        q, k = self.to_qk(x).view(B, T, 2, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)  # (B, H, T, d) each
        kslots = ctx.slots
        if ctx.cache is not None:
            keys = ctx.forget_state(step)  # (B, H, all slots, d)
            keys.index_copy_(2, ctx.slots, k.to(keys.dtype))
            k = keys[:, :, :S].to(q.dtype)
            kslots = torch.arange(S, device=x.device)
        g = F.logsigmoid(torch.matmul(q, k.transpose(-1, -2)).float() * self.dim_head**-0.5)  # (B, H, T, S)
        keep = (kslots[None, :] < ctx.slots[:, None])[None]  # (1, T, S) keys strictly before the query
        if ctx.real_keys is not None:
            keep = keep & ctx.real_keys[:, None, :]  # no left-padding keys
        g = g.masked_fill(~keep[:, None], 0.0) * self.post_log_scale
        return g.flip(-1).cumsum(dim=-1).flip(-1)  # sum over l >= j


class DistanceBasisBias(nn.Module):
    """x-transformers' relative projection position bias (after Thinking Machines' Inkling; no
    paper): a bank of R learned curves over distance 0..max_dist-1, mixed per query and head by a
    projection of the query's input, bias_hij = sum_r w_hr(x_i) bank_r(i - j); 0 from max_dist on."""

    def __init__(self, dim: int, heads: int, num_basis: int = 16, max_dist: int = 1024):
        super().__init__()
        self.heads, self.num_basis, self.max_dist = heads, num_basis, max_dist
        self.to_weights = nn.Linear(dim, heads * num_basis)
        self.distance_bank = nn.Parameter(torch.zeros(num_basis, max_dist))

    @torch.no_grad()
    def init_option_(self, generator=None) -> None:
        self.distance_bank.normal_(0.0, 0.02, generator=generator)  # as x-transformers

    def forward(self, x: torch.Tensor, ctx, step: int, S: int) -> torch.Tensor:
        B, T, _ = x.shape
        w = self.to_weights(x).view(B, T, self.heads, self.num_basis).transpose(1, 2)  # (B, H, T, R)
        curves = torch.matmul(w, self.distance_bank)  # (B, H, T, max_dist)
        dist = ctx.dist  # (B|1, T, S) query position - key position
        bias = curves.gather(-1, dist.clamp(0, self.max_dist - 1)[:, None].expand(B, self.heads, T, S))
        return bias.masked_fill(((dist < 0) | (dist >= self.max_dist))[:, None], 0.0)


class ContextualPositions(nn.Module):
    """CoPE (Golovneva et al. 2024, "Contextual Position Encoding: Learning to Count What's
    Important"): a key's position is counted by the context, p_ij = sum_{l >= j} sigmoid(s_il)
    over the keys query i sees (clamped to max_pos - 1), and the logit gains q_i . e(p_ij), with
    e interpolated between the two integer positions around p_ij (or, with ``soft_onehot``, a
    softmax over positions at temperature 0.05). Hidden keys count 0, so cached decoding,
    left padding and windows count exactly the keys the query attends to. ``talking_heads``
    mixes the heads' scores (an (H, H) matrix) before counting.

    Used on the explicit-score path: ``forward(q, s, visible)`` takes the masked scores."""

    def __init__(self, head_dim: int, heads: int, max_pos: int, soft_onehot: bool = False,
                 talking_heads: bool = False, temperature: float = 5e-2):
        super().__init__()
        self.max_pos, self.soft_onehot, self.temperature = max_pos, soft_onehot, temperature
        self.pos_emb = nn.Parameter(torch.zeros(max_pos, head_dim))  # zero init, as x-transformers
        self.talking_heads = nn.Parameter(torch.empty(heads, heads)) if talking_heads else None

    @torch.no_grad()
    def init_option_(self, generator=None) -> None:
        self.pos_emb.zero_()
        if self.talking_heads is not None:  # a 1x1 convolution's default init, as x-transformers
            bound = self.talking_heads.shape[1] ** -0.5
            self.talking_heads.uniform_(-bound, bound, generator=generator)

    def forward(self, q: torch.Tensor, s: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """q (B, H, T, D), s (B, H, T, S) with -inf where hidden, visible (B|1, 1, T, S) ->
        the logit gain (B, H, T, S)."""
        if self.talking_heads is not None:
            s = torch.einsum("gh,bhts->bgts", self.talking_heads, s.masked_fill(~visible, 0.0))
            s = s.masked_fill(~visible, float("-inf"))
        gates = torch.sigmoid(s.float())  # 0 on hidden keys
        pos = gates.flip(-1).cumsum(dim=-1).flip(-1).clamp(max=self.max_pos - 1)  # (B, H, T, S)
        gain = torch.matmul(q.float(), self.pos_emb.float().t())  # (B, H, T, max_pos)
        if self.soft_onehot:
            grid = torch.arange(self.max_pos, device=q.device, dtype=pos.dtype)
            w = torch.softmax(-(pos[..., None] - grid).abs() / self.temperature, dim=-1)  # (B, H, T, S, max_pos)
            out = torch.einsum("bhtsp,bhtp->bhts", w, gain)
        else:
            lo = pos.floor()
            frac = pos - lo
            out = gain.gather(-1, pos.ceil().long()) * frac + gain.gather(-1, lo.long()) * (1 - frac)
        return out.to(s.dtype)


class LayerPositionBias(nn.Module):
    """The attention layer's own position biases, summed (as x-transformers): a forget-gate bias
    (``forget``) and/or a distance-basis bias (``distance``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.forget = self.distance = None
        if cfg.data_dependent_alibi and cfg.data_dependent_alibi_per_row:
            self.forget = PairForgetGateBias(cfg.dim, cfg.heads, cfg.data_dependent_alibi_per_row_dim_head,
                                             cfg.data_dependent_alibi_post_log_scale)
        elif cfg.data_dependent_alibi:
            self.forget = ForgetGateBias(cfg.dim, cfg.heads, cfg.data_dependent_alibi_bias_init,
                                         cfg.data_dependent_alibi_post_log_scale)
        if cfg.rel_proj_pos_bias:
            self.distance = DistanceBasisBias(cfg.dim, cfg.heads, cfg.rel_proj_num_distance_basis, cfg.rel_proj_max_dist)

    def forward(self, x: torch.Tensor, ctx, step: int, S: int) -> torch.Tensor:
        parts = [m(x, ctx, step, S) for m in (self.forget, self.distance) if m is not None]
        return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def layer_pos_bias(cfg: ModelConfig) -> nn.Module | None:
    """The attention layer's own position bias module for this config, or None."""
    return LayerPositionBias(cfg) if cfg.layer_pos_bias else None


def forget_state_shape(cfg: ModelConfig, slots: int) -> tuple[int, ...] | None:
    """Per-layer cache state of the forgetting transformer (without the batch), or None."""
    if not cfg.data_dependent_alibi:
        return None
    if cfg.data_dependent_alibi_per_row:
        return (cfg.heads, slots, cfg.data_dependent_alibi_per_row_dim_head)
    return (cfg.heads, slots)

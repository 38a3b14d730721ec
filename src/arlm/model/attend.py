"""The attention kernel once q, k, v exist: fused SDPA, or explicit scores for the options that
need them (logit soft-clamping, talking heads, top-k sparse attention, residual attention).

Dims: B batch, H heads, T query time, S key time (cache slots plus memory/zero key columns), D head size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


def fused_attention(q, k, v, mask, causal: bool, scale: float, dropout: float) -> torch.Tensor:
    """SDPA. ``mask`` is boolean (True = visible) or an additive float bias with -inf where hidden;
    ``causal`` with no mask lets SDPA use its causal kernel without materialising any mask."""
    if mask is not None and mask.dtype != torch.bool and mask.dtype != q.dtype:
        mask = mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                          is_causal=causal and mask is None, scale=scale)  # (B, H, T, D)


def explicit_attention(q, k, v, *, scale: float, visible: torch.Tensor, bias: torch.Tensor | None,
                       prev_scores: torch.Tensor | None, pre_talking: torch.Tensor | None,
                       post_talking: torch.Tensor | None, softclamp: float | None, topk: int | None,
                       dropout: float, training: bool, cope=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention with the scores in hand. Returns (out (B, H, T, D), scores (B, H, T, S)),
    the pre-mask scores for residual attention. The order follows x-transformers: scale, add the
    previous layer's scores, pre-softmax talking heads, position bias, soft-clamp, mask, top-k."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, T, S)
    if prev_scores is not None:
        # residual attention (He et al. 2020, RealFormer): scores accumulate across layers
        s = s + prev_scores
    if pre_talking is not None:
        # talking heads (Shazeer et al. 2020): mix heads before the softmax; the identity init
        # makes this s + s at the start, as x-transformers
        s = s + torch.einsum("gh,bhts->bgts", pre_talking, s)
    if bias is not None:
        s = s + bias
    if softclamp is not None:
        # tanh soft-capping of the logits (Gemma 2; Dehghani et al. 2023)
        s = torch.tanh(s / softclamp) * softclamp
    scores = s
    s = s.masked_fill(~visible, float("-inf"))
    if cope is not None:
        # contextual positions count the visible keys from the masked scores (positional_bias.py);
        # the gain is part of the scores residual attention passes on, as x-transformers
        gain = cope(q, s, visible)
        s, scores = s + gain, scores + gain
    if topk is not None and topk < s.shape[-1]:
        # explicit sparse attention (Zhao et al. 2019): keep the k largest visible scores per query
        kth = s.topk(topk, dim=-1).values[..., -1:]
        s = s.masked_fill(s < kth, float("-inf"))
    p = s.float().softmax(dim=-1).to(q.dtype)
    if training and dropout > 0:
        p = F.dropout(p, dropout)
    if post_talking is not None:
        p = torch.einsum("gh,bhts->bgts", post_talking, p)
    return torch.matmul(p, v), scores


class AttnRecord(NamedTuple):
    """What one attention call saw, kept when a caller asks for attention intermediates (references,
    no copies): q (B, H, T, D), k (B, K, S, D) before expanding K heads to H, the explicit path's
    pre-mask ``scores`` (or None), and the masking the kernel used."""

    q: torch.Tensor
    k: torch.Tensor
    scores: torch.Tensor | None
    mask: torch.Tensor | None
    visible: torch.Tensor | None
    causal: bool
    scale: float
    topk: int | None


def attention_logits(q, k, *, scale: float, scores: torch.Tensor | None, mask, visible, causal: bool) -> torch.Tensor:
    """Each query's attention logits (B, H, T, S) in fp32, -inf where the key is hidden. Uses the
    explicit path's ``scores`` when given, else recomputes them (the fused kernel never exposes
    its logits, so this costs a (T, S) matmul per layer, only when asked for)."""
    if scores is None:
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # (B, H, T, S)
        if mask is not None and mask.dtype != torch.bool:
            scores = scores + mask  # additive position bias with -inf where hidden
            visible = torch.isfinite(mask)
        elif mask is not None:
            visible = mask
    if visible is None:  # fused causal path: query t sees keys <= t
        T, S = scores.shape[-2:]
        visible = torch.ones(T, S, dtype=torch.bool, device=scores.device).tril(S - T)
    return scores.float().masked_fill(~visible, float("-inf"))


def attention_lse(q, k, *, scale: float, scores: torch.Tensor | None, mask, visible, causal: bool) -> torch.Tensor:
    """log-sum-exp over the visible keys of each query's attention logits, (B, H, T), for the
    attention z-loss."""
    return attention_logits(q, k, scale=scale, scores=scores, mask=mask, visible=visible, causal=causal).logsumexp(dim=-1)

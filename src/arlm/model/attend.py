"""The attention kernel once q, k, v exist: fused SDPA, or explicit scores for the options that
need them (logit soft-clamping, talking heads, top-k sparse, sigmoid, hard, Gumbel, cog-signed and
selective attention, residual attention); plus the q/k and value transforms that keep l2-distance
and LASER attention on the fused kernel.

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
                       dropout: float, training: bool, weights: str = "softmax", straight_through: bool = False,
                       cog_signed: bool = False, pre_scale_post: torch.Tensor | None = None, select=None,
                       gumbel_temp: float = 1.0, gumbel_hard: bool = True,
                       cope=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention with the scores in hand. Returns (out (B, H, T, D), scores (B, H, T, S), the
    pre-mask logits the weights come from (residual attention and the z-loss read them), weights
    (B, H, T, S), signed, before dropout and post-softmax head mixing (attention maps read them)).

    The order follows x-transformers: scale, add the previous layer's scores, pre-softmax talking
    heads, position bias, soft-clamp, cog sign, mask, contextual positions (``cope``), selection,
    weights (``attention_weights``), sign, dropout, post-softmax talking heads. ``select`` maps the
    first head's logits (B, T, S) to the selective-attention penalty (``selective_penalty`` bound
    to this layer's state)."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, T, S)
    if prev_scores is not None:
        # residual attention (He et al. 2020, RealFormer): scores accumulate across layers
        s = s + prev_scores
    if pre_scale_post is not None:
        # x-transformers' variant of talking heads: the raw scores, mixed over heads, rescale the
        # attention weights after the softmax (identity init: each head scaled by its own score)
        rescale = torch.einsum("gh,bhts->bgts", pre_scale_post, s)
    if pre_talking is not None:
        # talking heads (Shazeer et al. 2020): mix heads before the softmax; the identity init
        # makes this s + s at the start, as x-transformers
        s = s + torch.einsum("gh,bhts->bgts", pre_talking, s)
    if bias is not None:
        s = s + bias
    if softclamp is not None:
        # tanh soft-capping of the logits (Gemma 2; Dehghani et al. 2023)
        s = torch.tanh(s / softclamp) * softclamp
    sign = None
    if cog_signed:
        # Cog attention (Lv et al. 2024, "More Expressive Attention with Negative Weights"): the
        # softmax ranks |score| and the weight takes the score's sign
        sign = s.sign()
        s = s.abs()
    scores = s
    s = s.masked_fill(~visible, float("-inf"))
    if cope is not None:
        # contextual positions count the visible keys from the masked scores (positional_bias.py);
        # the gain is part of the scores residual attention passes on, as x-transformers
        gain = cope(q, s, visible)
        s, scores = s + gain, scores + gain
    if select is not None:
        # (the gates read only visible keys, so the pre-mask scores serve)
        penalty = select(scores[:, 0])[:, None]
        s, scores = s - penalty, scores - penalty
    p = attention_weights(s.float(), weights, topk=topk, straight_through=straight_through, training=training,
                          temp=gumbel_temp, hard=gumbel_hard).to(q.dtype)
    if sign is not None:
        p = p * sign
    weights = p
    if training and dropout > 0:
        p = F.dropout(p, dropout)
    if post_talking is not None:
        p = torch.einsum("gh,bhts->bgts", post_talking, p)
    if pre_scale_post is not None:
        p = p * rescale
    return torch.matmul(p, v), scores, weights


def attention_weights(s: torch.Tensor, kind: str, *, topk: int | None, straight_through: bool, training: bool,
                      temp: float, hard: bool) -> torch.Tensor:
    """Masked logits (B, H, T, S), -inf where hidden, -> attention weights over the keys.

    kind: softmax (with ``topk``: sparse), sigmoid, hard or gumbel. Every kind is per query row,
    so hidden keys get weight 0 and the weights stay causal."""
    if kind == "sigmoid":
        # sigmoid attention (Ramapuram et al. 2024): each key weighted on its own, no normalisation
        return torch.sigmoid(s)
    if kind in ("hard", "gumbel"):
        if kind == "gumbel" and training:
            # Gumbel-softmax (Jang et al. 2017): Gumbel(0, 1) noise = -log(Exp(1)); hidden keys stay -inf.
            # Eval/decoding takes the noiseless mode, so cached decoding equals recomputation.
            s = s - torch.empty_like(s).exponential_().log()
        soft = (s / temp).softmax(dim=-1) if kind == "gumbel" else s.softmax(dim=-1)
        if kind == "gumbel" and not hard:
            return soft
        # hard attention: one-hot argmax forward, softmax gradient (straight-through estimator)
        one_hot = torch.zeros_like(soft).scatter_(-1, s.argmax(dim=-1, keepdim=True), 1.0)
        return one_hot + (soft - soft.detach())
    if topk is not None and topk < s.shape[-1]:
        # explicit sparse attention (Zhao et al. 2019): keep the k largest visible scores per query
        kth = s.topk(topk, dim=-1).values[..., -1:]
        sparse = s.masked_fill(s < kth, float("-inf")).softmax(dim=-1)
        if not straight_through:
            return sparse
        # the dense softmax's gradient reaches the dropped keys too (arXiv 2505.22074)
        soft = s.softmax(dim=-1)
        return sparse.detach() + (soft - soft.detach())
    return s.softmax(dim=-1)


def selective_penalty(s0: torch.Tensor, gateable: torch.Tensor, store: torch.Tensor | None = None,
                      slots: torch.Tensor | None = None) -> torch.Tensor:
    """Selective attention (Leviathan et al. 2024, "Selective Attention Improves Transformer"): query
    k lowers key j's logit for every later query by relu of the first head's logit s0[k, j].
    Returns the penalty (B, T, S), summed over the earlier queries.

    gateable (B|1, T, S): keys a query may lower (visible, not itself, not the first token, not
    memory/zero key-values; none for a left-padding query). Without a cache the T queries are the sequence from its start (an
    exclusive running sum). With one, each query's gates are kept at its slot in ``store``
    (B, R, S), fp32, and a query sums the rows of the slots before its own: exact under decoding, a
    multi-token step, and a rewound cache (rows past the cursor are never read)."""
    g = torch.relu(s0.float()).masked_fill(~gateable, 0.0)  # (B, T, S), summed in fp32
    if store is None:
        return F.pad(g, (0, 0, 1, -1)).cumsum(dim=1).to(s0.dtype)  # row t: sum of rows < t
    store.index_copy_(1, slots, g)
    earlier = torch.arange(store.shape[1], device=slots.device)[None, :] < slots[:, None]  # (T, R)
    return torch.matmul(earlier.float(), store).to(s0.dtype)  # (B, T, S)


def l2_distance_qk(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys (..., D) -> (..., D + 2) whose dot product is -|q - k|^2 = 2 q.k - |q|^2 - |k|^2,
    so l2-distance attention (Kim et al. 2021, "The Lipschitz Constant of Self-Attention") runs on
    the same kernels as dot-product attention."""
    qn = q.square().sum(dim=-1, keepdim=True)
    kn = k.square().sum(dim=-1, keepdim=True)
    q = torch.cat((2 * q, qn, torch.ones_like(qn)), dim=-1)
    k = torch.cat((k, -torch.ones_like(kn), -kn), dim=-1)
    return q, k


def laser_values(v: torch.Tensor, clamp: float, zero_kv: bool) -> torch.Tensor:
    """LASER (Duvvuri & Dhillon 2024, "LASER: Attention with Exponential Transformation"): attend
    over exp(values), soft-clamped first so exp cannot overflow; the caller takes the log of the
    output. v (B, K, S, D); with ``zero_kv`` slot 0 is the zero value, which stays 0 (as x-transformers,
    which adds it after the transform)."""
    v = (torch.tanh(v / clamp) * clamp).exp()
    if zero_kv:
        v = torch.cat((torch.zeros_like(v[:, :, :1]), v[:, :, 1:]), dim=2)
    return v


class AttnRecord(NamedTuple):
    """What one attention call saw, kept when a caller asks for attention intermediates (references,
    no copies): q (B, H, T, D), k (B, K, S, D) before expanding K heads to H, the explicit path's
    pre-mask ``scores`` (or None), and the masking the kernel used; ``weights``: the explicit path's
    attention weights (sigmoid, hard, signed... weights are not a softmax of the logits), or None."""

    q: torch.Tensor
    k: torch.Tensor
    scores: torch.Tensor | None
    mask: torch.Tensor | None
    visible: torch.Tensor | None
    causal: bool
    scale: float
    topk: int | None
    weights: torch.Tensor | None = None


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

"""Logit filters with x-transformers' names and keyword arguments.

Each takes logits (..., V) and returns logits of the same shape with the removed tokens at -inf.
The most likely token is always kept, so a filtered row can always be sampled.
Invalid parameters raise ``ValueError`` naming the parameter and the allowed range.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

NEG_INF = float("-inf")


def top_k(logits: torch.Tensor, frac_num_tokens: float = 0.1, k: int | None = None) -> torch.Tensor:
    """Keep the k most likely tokens (k defaults to ceil(frac_num_tokens * V))."""
    V = logits.shape[-1]
    if k is None:
        if not (0.0 < frac_num_tokens <= 1.0):
            raise ValueError(f"top_k: frac_num_tokens must be in (0, 1], got {frac_num_tokens}")
        k = math.ceil(frac_num_tokens * V)
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"top_k: k must be an integer >= 1, got {k}")
    k = min(int(k), V)
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p(logits: torch.Tensor, thres: float = 0.9) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2019): keep the smallest set of most likely tokens whose
    probability mass reaches ``thres``."""
    if not (0.0 < thres <= 1.0) or math.isnan(thres):
        raise ValueError(f"top_p: thres must be in (0, 1], got {thres}")
    sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # drop a token when the mass before it already reaches thres (so the top token always stays)
    remove = (cum - sorted_logits.softmax(dim=-1)) >= thres
    remove_unsorted = remove.scatter(-1, idx, remove)
    return logits.masked_fill(remove_unsorted, NEG_INF)


def top_a(logits: torch.Tensor, min_p_pow: float = 2.0, min_p_ratio: float = 0.02) -> torch.Tensor:
    """Top-a (BlinkDL): drop tokens with probability below min_p_ratio * p_max ** min_p_pow."""
    if min_p_pow < 0 or not (0.0 <= min_p_ratio <= 1.0):
        raise ValueError(f"top_a: need min_p_pow >= 0 and min_p_ratio in [0, 1], got {min_p_pow}, {min_p_ratio}")
    probs = logits.softmax(dim=-1)
    limit = probs.amax(dim=-1, keepdim=True).pow(min_p_pow) * min_p_ratio
    return logits.masked_fill(probs < limit, NEG_INF)


def min_p(logits: torch.Tensor, min_p: float = 0.1) -> torch.Tensor:
    """Min-p sampling (Nguyen et al. 2024): drop tokens with probability below min_p * p_max."""
    if not (0.0 <= min_p <= 1.0):
        raise ValueError(f"min_p: min_p must be in [0, 1], got {min_p}")
    probs = logits.softmax(dim=-1)
    limit = probs.amax(dim=-1, keepdim=True) * min_p
    return logits.masked_fill(probs < limit, NEG_INF)


def identity(logits: torch.Tensor) -> torch.Tensor:
    """No filtering: sample from the full distribution."""
    return logits


FILTERS: dict[str, Callable[..., torch.Tensor]] = {
    "top_k": top_k, "top_p": top_p, "top_a": top_a, "min_p": min_p, "none": identity,
}


def resolve_filter(fn: str | Callable | None) -> Callable[..., torch.Tensor]:
    """A filter given by name or as a callable."""
    if fn is None:
        return identity
    if isinstance(fn, str):
        if fn not in FILTERS:
            raise ValueError(f"unknown filter {fn!r}; available: {', '.join(FILTERS)}")
        return FILTERS[fn]
    if not callable(fn):
        raise ValueError(f"filter_logits_fn must be a name or a callable, got {type(fn).__name__}")
    return fn

"""Contrastive decoding (Li et al. 2022), in the logit form of O'Brien & Lewis 2023.

Tokens the expert finds implausible (probability below ``alpha`` times its best) are removed;
the rest are scored (1 + beta) * expert - beta * amateur, favouring what the expert knows and
the smaller amateur model does not.
"""

from __future__ import annotations

import math

import torch

from .decode import Stepper


def contrastive_logits(expert: torch.Tensor, amateur: torch.Tensor, alpha: float = 0.1, beta: float = 0.5) -> torch.Tensor:
    """Combine expert and amateur logits (B, V) into contrastive logits (B, V)."""
    expert, amateur = expert.float(), amateur.float()
    # plausibility is judged on the expert's log-probabilities
    logp = expert.log_softmax(dim=-1)
    cutoff = math.log(alpha) + logp.amax(dim=-1, keepdim=True)
    scores = (1 + beta) * expert - beta * amateur
    return scores.masked_fill(logp < cutoff, float("-inf"))


def check_contrastive(alpha: float, beta: float) -> None:
    if not (0.0 < alpha <= 1.0):
        raise ValueError(f"contrastive alpha must be in (0, 1], got {alpha}")
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"contrastive beta must be a finite number >= 0, got {beta}")


def contrastive_hook(amateur_model, batch: int, start, cache_kv: bool, alpha: float = 0.1, beta: float = 0.5):
    """A ``logits_hook`` for ``stream_tokens`` running the amateur beside the expert."""
    check_contrastive(alpha, beta)
    stepper = Stepper(amateur_model, batch, start, cache_kv)

    def hook(hist: torch.Tensor, total: int, logits: torch.Tensor) -> torch.Tensor:
        return contrastive_logits(logits, stepper.logits(hist, total), alpha, beta)

    return hook

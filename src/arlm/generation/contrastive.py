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


def check_same_vocabulary(model, other, name: str) -> None:
    """Two models whose logits are compared id by id must have the same vocabulary; checked
    before any work (otherwise the logits' shapes clash mid-generation). Their tokenizers are the
    caller's to compare (``BaseTokenizer.fingerprint``): models carry only the size."""
    for what in ("vocab_size", "n_logits"):
        a, b = getattr(model.cfg, what), getattr(other.cfg, what)
        if a != b:
            raise ValueError(f"{name} has a vocabulary of {b} ids ({what}) but the model {a}; both must share "
                             "one tokenizer")


def contrastive_hook(amateur_model, batch: int, start, cache_kv: bool, alpha: float = 0.1, beta: float = 0.5, *,
                     expert=None):
    """A ``logits_hook`` for ``stream_tokens`` running the amateur beside the ``expert`` (whose
    vocabulary it must share)."""
    check_contrastive(alpha, beta)
    if expert is not None:
        check_same_vocabulary(expert, amateur_model, "amateur_model")
    stepper = None

    def hook(hist: torch.Tensor, total: int, logits: torch.Tensor) -> torch.Tensor:
        nonlocal stepper
        if stepper is None:  # the amateur's cache holds what hist can (prompt + new tokens)
            stepper = Stepper(amateur_model, batch, start, cache_kv, need=hist.shape[1])
        return contrastive_logits(logits, stepper.logits(hist, total), alpha, beta)

    return hook

"""Embedding and output variants of the model's ends: extra embedding tables, the gradient
fraction reaching the embeddings, per-token feed-forward multipliers, and logit heads other than
one linear layer.

Dims: B batch, T time, C model dim, E embedding dim, V logits, K mixture components, L depth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def frac_gradient(x: torch.Tensor, frac: float) -> torch.Tensor:
    """Same values, but only ``frac`` of the gradient flows back into x (Ding et al. 2021, CogView;
    Zeng et al. 2022, GLM-130B: shrinking the embedding gradient stabilises large models)."""
    return x * frac + x.detach() * (1.0 - frac)


def sigsoftmax(logits: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax is sigsoftmax: exp(z) * sigmoid(z), normalised (Kanai et al. 2018)."""
    return logits + F.logsigmoid(logits)


def extra_embeddings(num_tokens: dict[str, int] | None, dim: int) -> nn.ModuleDict | None:
    """One table per named extra input (e.g. BERT's segment ids), summed with the token embedding;
    keys ``<name>_embed`` as x-transformers names them."""
    if not num_tokens:
        return None
    return nn.ModuleDict({f"{name}_embed": nn.Embedding(n, dim) for name, n in num_tokens.items()})


def extra_embedding_sum(embeds: nn.ModuleDict | None, embed_ids: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """The sum over the named tables of each table at its ids (B, T) -> (B, T, E); every table
    must be fed, as x-transformers asserts."""
    names = sorted(k[: -len("_embed")] for k in embeds) if embeds is not None else []
    given = sorted(embed_ids or {})
    if not names:
        raise TypeError("embed_ids needs TransformerWrapper(embed_num_tokens={name: num_ids, ...})")
    if given != names:
        raise ValueError(f"embed_ids must give ids for exactly {names} (embed_num_tokens), got {given}")
    return sum(embeds[f"{name}_embed"](ids) for name, ids in embed_ids.items())


def deep_embed_scales(table: torch.Tensor, ids: torch.Tensor, ff_steps: list[int], memory: int) -> dict[int, torch.Tensor]:
    """Per-token, per-layer multipliers of the feed-forward outputs (Bo Peng, RWKV-8 "deep
    embedding"; value embeddings of the nanoGPT speedrun): table (V, L, C) at ids (B, T) gives,
    for the l-th feed-forward call (execution step ``ff_steps[l]``), a (B, T, C) multiplier.
    Memory rows in front are not tokens: they get 1. Only the first L feed-forward calls are
    scaled (x-transformers' layout)."""
    rows = table[ids]  # (B, T, L, C)
    if memory:
        rows = F.pad(rows, (0, 0, 0, 0, memory, 0), value=1.0)
    return {step: rows[:, :, i] for i, step in enumerate(ff_steps[: table.shape[1]])}


class MixtureOfSoftmax(nn.Module):
    """Mixture of softmaxes (Yang et al. 2018, Breaking the Softmax Bottleneck): K projected
    copies of the hidden go through the shared logits head; their softmaxes are mixed with
    weights from the hidden. Returns log-probabilities (fp32), so sampling and cross-entropy
    read them as logits."""

    def __init__(self, dim: int, k: int):
        super().__init__()
        self.k = k
        self.to_mixture = nn.Linear(dim, dim * k, bias=False)
        self.combine = nn.Linear(dim, k, bias=False)

    def forward(self, x: torch.Tensor, head) -> torch.Tensor:
        weights = self.combine(x).float().log_softmax(dim=-1)  # (B, T, K)
        xk = self.to_mixture(x).unflatten(-1, (self.k, -1))  # (B, T, K, C)
        logp = head(xk).float().log_softmax(dim=-1)  # (B, T, K, V)
        # log sum_k w_k softmax_k, in log space (x-transformers sums probabilities, then takes the log)
        return torch.logsumexp(logp + weights[..., None], dim=-2)


def next_embed_head(dim: int) -> nn.Sequential:
    """A small MLP predicting the next position's (initial) embedding from the final hidden,
    for continuous-token heads; the layout of x-transformers' ``to_next_embed_pred``."""
    return nn.Sequential(nn.Linear(dim, dim, bias=False), nn.SiLU(), nn.Linear(dim, dim, bias=False))

"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023).

A small draft model proposes ``k`` tokens one at a time; the target scores all of them in one
forward. Draft token i is accepted with probability min(1, p_i(x) / q_i(x)); at the first
rejection a token is drawn from the residual max(0, p - q) (renormalised), and when all k are
accepted a bonus token is drawn from the target's next distribution. The output is distributed
exactly as sampling from the target alone; at temperature 0 it is the target's greedy output.

Batches: every row accepts its own count n_r; the batch advances by n = min(n_r) + 1 tokens so
the rows keep one shared cache cursor. Rows with n_r > n emit their accepted draft token at
position n, itself an exact sample from the target, so nothing is biased.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from .cpu_layout import decodes
from .contrastive import check_same_vocabulary
from .decode import Stepper, filtered_probs
from .filters import identity


@decodes(0, 1)
@torch.inference_mode()
def speculative_tokens(model, draft_model, ids: torch.Tensor, start: torch.Tensor | None, max_new_tokens: int, *,
                       num_draft_tokens: int = 4, temperature: float = 1.0, filter_fn: Callable = identity,
                       filter_kwargs: dict | None = None, generator: torch.Generator | None = None,
                       stats: dict | None = None) -> Iterator[torch.Tensor]:
    """Yield (B,) tokens per position. ``stats`` (a dict) receives proposed/accepted counts."""
    B, T = ids.shape
    k = num_draft_tokens
    dev = ids.device
    need = T + max_new_tokens + k + 1
    for m, name in ((model, "model"), (draft_model, "draft_model")):
        if need > m.cfg.max_seq_len:
            raise ValueError(f"speculative decoding needs prompt + new tokens + num_draft_tokens + 1 = {need} "
                             f"to fit the {name} context max_seq_len={m.cfg.max_seq_len} (no sliding window)")
    check_same_vocabulary(model, draft_model, "draft_model")
    hist = torch.empty(B, need, dtype=torch.long, device=dev)
    hist[:, :T] = ids
    total = T
    target, draft = Stepper(model, B, start, need=need), Stepper(draft_model, B, start, need=need)
    greedy = temperature == 0
    proposed = accepted = 0
    rows = torch.arange(B, device=dev)

    def dist(logits):  # (..., V) -> probabilities, or one-hot argmax at temperature 0
        if greedy:
            return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        return filtered_probs(logits, temperature, filter_fn, filter_kwargs)

    produced = 0
    while produced < max_new_tokens:
        # 1. the draft proposes k tokens
        q = []
        for j in range(k):
            qj = dist(draft.logits(hist, total + j))  # (B, V)
            tok = qj.argmax(-1) if greedy else torch.multinomial(qj, 1, generator=generator).squeeze(-1)
            hist[:, total + j] = tok
            q.append(qj)
        q = torch.stack(q, dim=1)  # (B, k, V)
        drafted = hist[:, total:total + k]  # (B, k)
        # 2. the target scores the prefix's last token and all k drafts in one forward
        p = dist(target.logits(hist, total + k, all_positions=True)[:, -(k + 1):])  # (B, k + 1, V)
        p_draft = p[:, :k].gather(-1, drafted[..., None]).squeeze(-1)  # (B, k)
        q_draft = q.gather(-1, drafted[..., None]).squeeze(-1)
        if greedy:
            ok = p_draft > 0
        else:
            u = torch.rand(B, k, device=dev, generator=generator)
            ok = u * q_draft <= p_draft  # accept with probability min(1, p / q)
        n_r = torch.where(ok.all(-1), k, (~ok).float().argmax(-1))  # accepted per row
        n = int(n_r.min())
        # 3. the token at position n for every row
        if n < k:
            residual = (p[:, n] - q[:, n]).clamp(min=0)
            residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p[:, n])
            fix = residual.argmax(-1) if greedy else torch.multinomial(residual / residual.sum(-1, keepdim=True), 1,
                                                                       generator=generator).squeeze(-1)
            nxt = torch.where(n_r > n, drafted[:, n], fix)
        else:
            bonus = p[:, k]
            nxt = bonus.argmax(-1) if greedy else torch.multinomial(bonus, 1, generator=generator).squeeze(-1)
        hist[rows, total + n] = nxt
        proposed += k * B
        accepted += int(n_r.sum())
        if stats is not None:
            stats.update(proposed=proposed, accepted=accepted, acceptance_rate=accepted / proposed)
        new = hist[:, total:total + n + 1]
        total += n + 1
        target.rewind(total - 1)
        draft.rewind(total - 1)
        for j in range(new.shape[1]):
            if produced == max_new_tokens:
                break
            produced += 1
            yield new[:, j]

"""Beam search with finished hypotheses, EOS and length normalisation.

Each prompt keeps ``beams`` live hypotheses in one batch of B * beams rows sharing a KV cache
(rows are reordered in place when beams are re-ranked). A hypothesis that emits EOS is moved to
that prompt's finished list with score logp / length ** length_penalty (Wu et al. 2016, GNMT
without the constant). A prompt is done once it holds ``beams`` finished hypotheses, so
``beams=1`` is exactly greedy decoding. ``stochastic=True`` samples candidates without
replacement with the Gumbel top-k trick (Kool et al. 2019) at ``temperature``.
"""

from __future__ import annotations

import torch

from .cpu_layout import decodes
from .decode import Stepper


def _norm(score: float, length: int, length_penalty: float) -> float:
    return score / (max(length, 1) ** length_penalty)


@decodes()
@torch.inference_mode()
def beam_search(model, ids: torch.Tensor, start: torch.Tensor | None, seq_len: int, *, beams: int = 4,
                eos_token: int | None = None, length_penalty: float = 1.0, stochastic: bool = False,
                temperature: float = 1.0, pad_value: int = 0, generator: torch.Generator | None = None,
                cache_kv: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (sequences (B, beams, seq_len) best first, padded after EOS; scores (B, beams))."""
    B, T = ids.shape
    dev = ids.device
    if T > model.cfg.max_seq_len:
        raise ValueError(f"prompt of {T} tokens is longer than the model context max_seq_len={model.cfg.max_seq_len}")
    rows = B * beams
    hist = torch.full((rows, T + seq_len), pad_value, dtype=torch.long, device=dev)
    hist[:, :T] = ids.repeat_interleave(beams, dim=0)
    row_start = None if start is None else start.repeat_interleave(beams)
    stepper = Stepper(model, rows, row_start, cache_kv, need=T + seq_len)
    # only the first beam of each prompt is live at step 0, so the first expansion is not duplicated
    scores = torch.full((B, beams), float("-inf"), device=dev)
    scores[:, 0] = 0.0
    finished: list[list[tuple[float, float, torch.Tensor]]] = [[] for _ in range(B)]
    done = [False] * B
    V = model.cfg.vocab_size

    total = T
    for step in range(seq_len):
        logp = stepper.logits(hist, total).float().log_softmax(dim=-1).view(B, beams, V)
        cand = (scores[:, :, None] + logp).view(B, beams * V)  # (B, beams * V)
        if stochastic:
            u = torch.rand(cand.shape, device=dev, generator=generator).clamp_(1e-20, 1.0)
            keys = cand / max(temperature, 1e-6) - torch.log(-torch.log(u))
            top = keys.topk(2 * beams, dim=-1).indices
        else:
            top = cand.topk(2 * beams, dim=-1).indices
        top_scores = cand.gather(1, top)
        beam_idx, tok = top // V, top % V  # (B, 2 * beams)

        new_src = torch.zeros(B, beams, dtype=torch.long, device=dev)
        new_tok = torch.full((B, beams), pad_value, dtype=torch.long, device=dev)
        new_scores = torch.full((B, beams), float("-inf"), device=dev)
        top_scores_l, beam_l, tok_l = top_scores.tolist(), beam_idx.tolist(), tok.tolist()
        for b in range(B):
            k = 0
            if not done[b]:
                for s, bi, t in zip(top_scores_l[b], beam_l[b], tok_l[b]):
                    if s == float("-inf") or k == beams:
                        break
                    if eos_token is not None and t == eos_token:
                        seq = torch.cat((hist[b * beams + bi, T:total], hist.new_tensor([t])))
                        finished[b].append((_norm(s, step + 1, length_penalty), s, seq))
                        if len(finished[b]) >= beams:
                            done[b] = True
                            break
                        continue
                    new_src[b, k], new_tok[b, k], new_scores[b, k] = bi, t, s
                    k += 1
            if done[b]:
                new_scores[b] = float("-inf")
        src_rows = (torch.arange(B, device=dev)[:, None] * beams + new_src).view(-1)
        hist = hist.index_select(0, src_rows)
        if stepper.cache is not None:
            stepper.cache.reorder(src_rows)
        hist[:, total] = new_tok.view(-1)
        total += 1
        scores = new_scores
        if all(done):
            break

    out = torch.full((B, beams, seq_len), pad_value, dtype=torch.long, device=dev)
    out_scores = torch.full((B, beams), float("-inf"), device=dev)
    for b in range(B):
        hyps = list(finished[b])
        if not done[b]:  # unfinished prompts also rank their live beams
            for k in range(beams):
                s = float(scores[b, k])
                if s != float("-inf"):
                    hyps.append((_norm(s, total - T, length_penalty), s, hist[b * beams + k, T:total].clone()))
        hyps.sort(key=lambda h: h[0], reverse=True)
        for k, (norm_score, _, seq) in enumerate(hyps[:beams]):
            out[b, k, : seq.shape[0]] = seq
            out_scores[b, k] = norm_score
    return out, out_scores

"""Prefill + decode: the sampling loop as small free functions.

Prompts are left-padded into one (B, T) batch with ``start`` (B,) marking each row's first real
token, so every row is computed as if alone. The KV cache is preallocated for the model context;
when a sequence outgrows it, decoding continues on a sliding window: the last ``max_seq_len // 2``
tokens are prefilled into a fresh cache and decoding goes on from there (documented behaviour; the
uncached path slides by one token per step, as x-transformers does).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch

from .filters import identity


def check_sampling(temperature: float, seq_len: int) -> None:
    """Reject invalid sampling parameters before any work."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len (number of new tokens) must be an integer >= 1, got {seq_len!r}")
    if not isinstance(temperature, (int, float)) or math.isnan(temperature) or temperature < 0 or math.isinf(temperature):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")


def check_token_ids(ids: torch.Tensor, vocab_size: int, what: str = "prompt") -> None:
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise ValueError(f"{what} contains token id {bad}, outside the vocabulary [0, {vocab_size})")


def left_pad(prompts: list[torch.Tensor], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D prompts of different lengths, left-padded: returns ids (B, T) and start (B,)."""
    if not prompts:
        raise ValueError("prompts is an empty list; give at least one prompt")
    lens = [int(p.shape[0]) for p in prompts]
    if min(lens) < 1:
        raise ValueError("every prompt needs at least one token")
    T = max(lens)
    out = torch.full((len(prompts), T), pad_value, dtype=torch.long, device=prompts[0].device)
    for i, p in enumerate(prompts):
        out[i, T - lens[i]:] = p
    start = torch.tensor([T - n for n in lens], device=out.device)
    return out, start


def sample_next(logits: torch.Tensor, temperature: float, filter_fn: Callable = identity,
                filter_kwargs: dict | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token per row from logits (B, V): argmax at temperature 0, otherwise
    temperature first, then the filter, then sampling with ``generator``."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_fn(logits.float() / temperature, **(filter_kwargs or {}))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def stream_tokens(model, ids: torch.Tensor, start: torch.Tensor | None, max_new_tokens: int, *,
                  temperature: float = 1.0, filter_fn: Callable = identity, filter_kwargs: dict | None = None,
                  eos_token: int | None = None, pad_value: int = 0, cache_kv: bool = True,
                  generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), one step at a time.

    A row that emits ``eos_token`` is finished: it yields ``pad_value`` from then on. The loop
    ends when every row has finished or after ``max_new_tokens`` steps. An EOS inside the prompt
    does not finish a row.
    """
    B, T = ids.shape
    S = model.cfg.max_seq_len
    if T > S:
        raise ValueError(f"prompt of {T} tokens is longer than the model context max_seq_len={S}")
    hist = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=ids.device)
    hist[:, :T] = ids
    total = T
    finished = torch.zeros(B, dtype=torch.bool, device=ids.device)
    step = lambda logits: sample_next(logits, temperature, filter_fn, filter_kwargs, generator)

    if cache_kv:
        cache = model.new_cache(B, S)
        logits = model(ids, input_pos=torch.arange(T, device=ids.device), cache=cache, start=start)[:, -1]
        pos = T
    else:
        logits = model(ids, start=start)[:, -1]

    for i in range(max_new_tokens):
        tok = step(logits)
        if eos_token is not None:
            tok = tok.masked_fill(finished, pad_value)
            finished = finished | (tok == eos_token)
        hist[:, total] = tok
        total += 1
        yield tok
        if i == max_new_tokens - 1 or (eos_token is not None and bool(finished.all())):
            return
        if not cache_kv:
            off = max(0, total - S)
            window_start = None if start is None else (start - off).clamp(min=0)
            logits = model(hist[:, off:total], start=window_start)[:, -1]
        elif pos < S:
            logits = model(tok[:, None], input_pos=torch.tensor([pos], device=ids.device),
                           cache=cache, start=start)[:, -1]
            pos += 1
        else:  # cache full: continue on a sliding window of the last S // 2 tokens
            keep = max(1, S // 2)
            off = total - keep
            start = None if start is None else (start - off).clamp(min=0)
            logits = model(hist[:, off:total], input_pos=torch.arange(keep, device=ids.device),
                           cache=cache, start=start)[:, -1]
            pos = keep

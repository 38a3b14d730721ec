"""x-transformers' ``AutoregressiveWrapper``: next-token loss and generation over a model."""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .decode import check_sampling, check_token_ids, left_pad, stream_tokens
from .filters import resolve_filter, top_k


class AutoregressiveWrapper(nn.Module):
    """Wraps a ``TransformerWrapper`` / ``Transformer`` for training and sampling.

    ``loss = wrapper(seq)`` with seq (B, T+1): inputs seq[:, :-1], targets seq[:, 1:] (the shift
    happens inside), positions equal to ``ignore_index`` are ignored in the loss.
    ``mask_prob`` > 0 is Forgetful Causal Masking (Liu et al. 2022): during training that fraction
    of earlier tokens is hidden from attention (never the first token).
    """

    def __init__(self, net: nn.Module, *, ignore_index: int = -100, pad_value: int = 0, mask_prob: float = 0.0):
        super().__init__()
        if not hasattr(net, "cfg"):
            raise TypeError("AutoregressiveWrapper needs an arlm TransformerWrapper or Transformer")
        if not (0.0 <= mask_prob < 1.0):
            raise ValueError(f"mask_prob must be in [0, 1), got {mask_prob}")
        self.net = net
        self.max_seq_len = net.cfg.max_seq_len
        self.ignore_index = ignore_index
        self.pad_value = pad_value
        self.mask_prob = mask_prob

    def forward(self, x: torch.Tensor, return_outputs: bool = False):
        """Mean next-token cross-entropy of x (B, T+1); with ``return_outputs`` also the logits."""
        if x.dim() != 2 or x.shape[1] < 2:
            raise ValueError(f"expected token ids of shape (B, T+1) with T >= 1, got {tuple(x.shape)}")
        inp, target = x[:, :-1], x[:, 1:]
        inp = inp.masked_fill(inp == self.ignore_index, self.pad_value)
        check_token_ids(inp, self.net.cfg.vocab_size, "input")
        key_mask = None
        if self.mask_prob > 0 and self.training:
            B, T = inp.shape
            n_mask = min(int(T * self.mask_prob), T - 1)
            scores = torch.rand(B, T, device=x.device)
            scores[:, 0] = -1.0  # the first token is never hidden
            hidden = scores.topk(n_mask, dim=-1).indices
            key_mask = torch.ones(B, T, dtype=torch.bool, device=x.device).scatter(1, hidden, False)
        logits = self.net(inp, key_mask=key_mask) if key_mask is not None else self.net(inp)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=self.ignore_index)
        return (loss, logits) if return_outputs else loss

    def _prepare(self, prompts, prompt_lens):
        """-> (ids (B, T) left-padded, start (B,) or None, was_1d)."""
        if isinstance(prompts, (list, tuple)):
            if prompt_lens is not None:
                raise ValueError("prompt_lens is derived from a list of prompts; give one or the other")
            ids, start = left_pad([torch.as_tensor(p, dtype=torch.long) for p in prompts], self.pad_value)
            return ids, (start if bool(start.any()) else None), False
        was_1d = prompts.dim() == 1
        ids = prompts[None] if was_1d else prompts
        if ids.dim() != 2 or ids.shape[1] < 1:
            raise ValueError(f"prompts must be (T,) or (B, T) token ids with T >= 1, got {tuple(prompts.shape)}")
        if prompt_lens is None:
            return ids, None, was_1d
        # x-transformers convention: right-padded prompts with their lengths
        rows = [ids[i, : int(n)] for i, n in enumerate(prompt_lens)]
        ids, start = left_pad(rows, self.pad_value)
        return ids, start, was_1d

    def stream(self, prompts, seq_len: int, eos_token: int | None = None, temperature: float = 1.0,
               prompt_lens: torch.Tensor | None = None, filter_logits_fn: str | Callable | None = top_k,
               filter_kwargs: dict | None = None, cache_kv: bool = True,
               generator: torch.Generator | None = None, restrict_to_max_seq_len: bool = True,
               truncate_prompt: bool = False) -> Iterator[torch.Tensor]:
        """Like ``generate`` but yields each step's tokens (B,) as they are produced."""
        check_sampling(temperature, seq_len)
        filter_fn = resolve_filter(filter_logits_fn)
        ids, start, _ = self._prepare(prompts, prompt_lens)
        check_token_ids(ids, self.net.cfg.vocab_size)
        if eos_token is not None and not (0 <= eos_token < self.net.cfg.vocab_size):
            raise ValueError(f"eos_token {eos_token} is outside the vocabulary [0, {self.net.cfg.vocab_size})")
        S = self.max_seq_len
        if ids.shape[1] > S:
            if not truncate_prompt:
                raise ValueError(f"prompt of {ids.shape[1]} tokens is longer than the model context "
                                 f"max_seq_len={S}; shorten it or pass truncate_prompt=True to keep its last {S} tokens")
            off = ids.shape[1] - S
            ids = ids[:, off:]
            start = None if start is None else (start - off).clamp(min=0)
        if not restrict_to_max_seq_len and ids.shape[1] + seq_len > S:
            raise ValueError(f"prompt + seq_len = {ids.shape[1] + seq_len} exceeds max_seq_len={S} "
                             "and restrict_to_max_seq_len=False; allow the sliding window or ask for fewer tokens")
        was_training = self.net.training
        self.net.eval()
        try:
            yield from stream_tokens(self.net, ids, start, seq_len, temperature=temperature, filter_fn=filter_fn,
                                     filter_kwargs=filter_kwargs, eos_token=eos_token, pad_value=self.pad_value,
                                     cache_kv=cache_kv, generator=generator)
        finally:
            self.net.train(was_training)

    @torch.no_grad()
    def generate(self, prompts, seq_len: int, eos_token: int | None = None, temperature: float = 1.0,
                 prompt_lens: torch.Tensor | None = None, filter_logits_fn: str | Callable | None = top_k,
                 restrict_to_max_seq_len: bool = True, filter_kwargs: dict | None = None,
                 cache_kv: bool = True, generator: torch.Generator | None = None,
                 truncate_prompt: bool = False) -> torch.Tensor:
        """Sample ``seq_len`` new tokens after each prompt and return only the new tokens.

        prompts: (T,), (B, T), or a list of 1-D prompts of different lengths (each row then
        gives exactly what it gives alone). temperature 0 is greedy. Temperature is applied
        before the filter (x-transformers applies it after, which changes what top_p/min_p keep).
        ``filter_logits_fn``: top_k, top_p, top_a, min_p (callables or names) or None.
        Per-row EOS: a row ends at its first generated ``eos_token`` and is padded with
        ``pad_value`` after it; an EOS inside the prompt does not end a row.
        Returns (B, n) or (n,) for a 1-D prompt, n <= seq_len (fewer when every row ended early).
        """
        was_1d = not isinstance(prompts, (list, tuple)) and prompts.dim() == 1
        steps = list(self.stream(prompts, seq_len, eos_token, temperature, prompt_lens, filter_logits_fn,
                                 filter_kwargs, cache_kv, generator, restrict_to_max_seq_len, truncate_prompt))
        out = torch.stack(steps, dim=1)
        return out[0] if was_1d else out

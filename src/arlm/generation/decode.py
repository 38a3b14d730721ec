"""Prefill + decode: the sampling loop as small pieces.

Prompts are left-padded into one (B, T) batch with ``start`` (B,) marking each row's first real
token, so every row is computed as if alone. Each model gets a ``Stepper`` that owns its
preallocated KV cache and feeds it only the tokens it has not seen yet. When a sequence outgrows
the model context, decoding continues on a sliding window: the last ``max_seq_len // 2`` tokens
are prefilled into the cache again and decoding goes on from there (the uncached path slides by
one token per step, as x-transformers does).
"""

from __future__ import annotations

import weakref
from typing import Callable, Iterator

import torch

from .cpu_layout import decodes
from .filters import identity


def check_token_ids(ids: torch.Tensor, vocab_size: int, what: str = "prompt") -> None:
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"{what} must hold integer token ids, got dtype {ids.dtype} (floats and booleans are "
                         "not truncated to ids)")
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{what} contains token id {lo if lo < 0 else hi}, outside the vocabulary [0, {vocab_size})")


def as_token_ids(prompt, what: str = "prompt") -> torch.Tensor:
    """One prompt (a list, numpy array or tensor of integer ids) as a long tensor; floats and
    booleans are an error rather than ids."""
    t = torch.as_tensor(prompt)
    if t.numel() == 0:  # [] reads as float32
        t = t.long()
    check_token_ids(t, 2**63 - 1, what)
    return t.long()


def left_pad(prompts: list[torch.Tensor], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D prompts of different lengths, left-padded: returns ids (B, T) and start (B,)."""
    if not prompts:
        raise ValueError("prompts is an empty list; give at least one prompt")
    if any(p.dim() != 1 for p in prompts):
        raise ValueError("each prompt in a list must be a 1-D tensor of token ids")
    lens = [int(p.shape[0]) for p in prompts]
    if min(lens) < 1:
        raise ValueError("every prompt needs at least one token")
    T = max(lens)
    out = torch.full((len(prompts), T), pad_value, dtype=torch.long, device=prompts[0].device)
    for i, p in enumerate(prompts):
        out[i, T - lens[i]:] = p
    start = torch.tensor([T - n for n in lens], device=out.device)
    return out, start


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor, repetition: float, presence: float,
                    frequency: float) -> torch.Tensor:
    """Penalise tokens already in the sequence. counts (B, V): occurrences so far.
    repetition (Keskar et al. 2019, CTRL): positive logits / r, negative * r, for seen tokens.
    presence / frequency (OpenAI API): logits - presence * seen - frequency * count."""
    seen = counts > 0
    if repetition != 1.0:
        logits = torch.where(seen, torch.where(logits > 0, logits / repetition, logits * repetition), logits)
    if presence or frequency:
        logits = logits - presence * seen.to(logits.dtype) - frequency * counts.to(logits.dtype)
    return logits


def sample_next(logits: torch.Tensor, temperature: float, filter_fn: Callable = identity,
                filter_kwargs: dict | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token per row from logits (B, V): argmax at temperature 0, otherwise
    temperature first, then the filter, then sampling with ``generator``."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filtered_probs(logits, temperature, filter_fn, filter_kwargs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def filtered_probs(logits: torch.Tensor, temperature: float, filter_fn: Callable = identity,
                   filter_kwargs: dict | None = None) -> torch.Tensor:
    """The sampling distribution (B, V): softmax(filter(logits / temperature))."""
    return filter_fn(logits.float() / temperature, **(filter_kwargs or {})).softmax(dim=-1)


_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compiled_step(model, batch: int):
    """(cache, step) for one-token decode steps, compiled once per model and batch size.

    Static shapes and a cache at fixed addresses let the step compile once and be reused by
    later calls (the cache is reused too: stale slots are masked by position). On CUDA the step
    is captured into CUDA graphs (``reduce-overhead``); elsewhere inductor fuses it."""
    per_model = _COMPILED.setdefault(model, {})
    p = model.token_emb.weight
    key = (batch, p.device, p.dtype)
    if key not in per_model:
        cache = model.new_cache(batch, model.cfg.max_seq_len)
        for t in cache.tensors():
            torch._dynamo.mark_static_address(t)
        mode = "reduce-overhead" if p.device.type == "cuda" else None
        per_model[key] = (cache, torch.compile(model, mode=mode, fullgraph=True, dynamic=False))
    return per_model[key]


class Stepper:
    """Runs one model over a growing token history ``hist`` (B, N), with or without a cache.

    ``logits(hist, total)`` returns next-token logits (B, V) after the first ``total`` tokens,
    feeding the model only what its cache lacks. ``rewind(n)`` forgets cached tokens past n
    (speculative decoding): slots past the cursor are masked, so nothing needs clearing.
    ``prepend`` (B, P, C): embeddings in front of every window (x-transformers' prepend_embeds);
    they take the first P cache slots, tokens keep absolute positions counted from 0.
    ``need``: the most tokens ``hist`` will hold (prompt + new tokens); the eager cache is sized to
    it when that is less than the context (a compiled step keeps one full-size cache per model).
    """

    def __init__(self, model, batch: int, start: torch.Tensor | None, cache_kv: bool = True, compile: bool = False,
                 prepend: torch.Tensor | None = None, need: int | None = None):
        self.model, self.start, self.cache_kv = model, start, cache_kv
        self.prepend, self.P = prepend, 0 if prepend is None else prepend.shape[1]
        if prepend is not None and (start is not None or compile):
            raise ValueError("prepend_embeds cannot be combined with left-padded prompts or compile=True")
        self.S = model.cfg.max_seq_len - self.P  # tokens per window
        self.step_fn, self.compiled = model, compile
        if compile:
            if not cache_kv:
                raise ValueError("compile=True compiles the cached decode step; it needs cache_kv=True")
            self.cache, self.step_fn = compiled_step(model, batch)
        else:
            # only the slots this request can reach: a 20-token sample from a model with a
            # million-token context must not allocate the million
            slots = self.S if need is None or prepend is not None else max(1, min(self.S, need))
            self.cache = model.new_cache(batch, slots) if cache_kv else None
        p = model.token_emb.weight
        self.plain_fp32_cpu = p.device.type == "cpu" and p.dtype == torch.float32
        self.offset = 0  # hist index of cache slot 0 (moves when the window slides)
        self.seen = 0  # hist tokens [offset, seen) are in the cache

    def _start(self, offset: int):
        return None if self.start is None else (self.start - offset).clamp(min=0)

    def logits(self, hist: torch.Tensor, total: int, all_positions: bool = False) -> torch.Tensor:
        """Logits after hist[:, :total]: (B, V), or (B, n_fed, V) with ``all_positions``."""
        dev = hist.device
        if not self.cache_kv:
            if all_positions:
                raise ValueError("logits at every fed position need the KV cache (cache_kv=True)")
            off = max(0, total - self.S)
            return self._run(hist[:, off:total], input_pos=None, start=self._start(off),
                             **self._prepended(0, total - off))[:, -1]
        if total - self.offset > self.S:  # slide: re-prefill the last S // 2 tokens
            self.offset = total - max(1, self.S // 2)
            self.seen = self.offset
        ids = hist[:, self.seen:total]
        start = self._start(self.offset)
        if self.compiled and total - self.seen == 1:
            # one-token steps have static shapes: slots as a tensor, the whole cache, contiguous ids (strides too)
            pos = torch.arange(self.seen - self.offset, total - self.offset, device=dev)
            out = self.step_fn(ids.clone(memory_format=torch.contiguous_format), input_pos=pos, cache=self.cache,
                               start=start)
        elif self.prepend is not None:  # the window's first call writes the prepended rows too
            first = self.seen == self.offset
            out = self._run(ids, input_pos=0 if first else self.P + self.seen - self.offset, cache=self.cache,
                            **self._prepended(self.seen - self.offset, total - self.offset, first))
        else:  # eager: an int slot, so attention reads only the slots in use
            out = self._run(ids, input_pos=self.seen - self.offset, cache=self.cache, start=start)
        self.seen = total
        return out if all_positions else out[:, -1]

    def _prepended(self, a: int, b: int, with_rows: bool = True) -> dict:
        """Keywords that put the prepended rows in front and give tokens a..b-1 of the window
        their absolute positions (counted without the prepended rows, as x-transformers)."""
        if self.prepend is None:
            return {}
        kw = {"embed_pos": torch.arange(a, b, device=self.prepend.device)}
        if with_rows:
            kw["prepend_embeds"] = self.prepend
        return kw

    def _run(self, *args, **kwargs):
        """Call the model. fp32 on CPU runs with oneDNN off: its exact-GELU path costs ~17 us per
        call whatever the size, against ~5 us for ATen's own kernel (equal to within an ulp), and
        fp32 matmuls use MKL either way. bf16/fp16 keep oneDNN, which their CPU matmuls need."""
        if not (self.plain_fp32_cpu and torch.backends.mkldnn.enabled):
            return self.model(*args, **kwargs)
        torch.backends.mkldnn.enabled = False
        try:
            return self.model(*args, **kwargs)
        finally:
            torch.backends.mkldnn.enabled = True

    def rewind(self, total: int) -> None:
        self.seen = min(self.seen, total)


@decodes()
@torch.inference_mode()
def stream_tokens(model, ids: torch.Tensor, start: torch.Tensor | None, max_new_tokens: int, *,
                  temperature: float = 1.0, filter_fn: Callable = identity, filter_kwargs: dict | None = None,
                  eos_token: int | None = None, pad_value: int = 0, cache_kv: bool = True,
                  generator: torch.Generator | None = None, logits_hook: Callable | None = None,
                  repetition_penalty: float = 1.0, presence_penalty: float = 0.0,
                  frequency_penalty: float = 0.0, compile: bool = False,
                  prepend: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), one step at a time.

    A row that emits ``eos_token`` is finished: it yields ``pad_value`` from then on. The loop
    ends when every row has finished or after ``max_new_tokens`` steps. An EOS inside the prompt
    does not finish a row. ``logits_hook(hist, total, logits) -> logits`` lets contrastive
    decoding combine another model's logits.
    """
    B, T = ids.shape
    S = model.cfg.max_seq_len
    if T > S:
        raise ValueError(f"prompt of {T} tokens is longer than the model context max_seq_len={S}")
    hist = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=ids.device)
    hist[:, :T] = ids
    total = T
    finished = torch.zeros(B, dtype=torch.bool, device=ids.device)
    stepper = Stepper(model, B, start, cache_kv, compile, prepend, need=T + max_new_tokens)
    penalise = repetition_penalty != 1.0 or presence_penalty != 0.0 or frequency_penalty != 0.0
    if penalise:
        V = model.cfg.vocab_size
        real = torch.ones_like(ids, dtype=torch.bool) if start is None else \
            torch.arange(T, device=ids.device)[None] >= start[:, None]
        counts = torch.zeros(B, V, device=ids.device).scatter_add_(1, ids, real.float())
    sync_every = 1 if ids.device.type == "cpu" else 16  # checking "all finished" syncs the GPU

    for i in range(max_new_tokens):
        logits = stepper.logits(hist, total)
        if logits_hook is not None:
            logits = logits_hook(hist, total, logits)
        if penalise:
            logits = apply_penalties(logits.float(), counts, repetition_penalty, presence_penalty, frequency_penalty)
        tok = sample_next(logits, temperature, filter_fn, filter_kwargs, generator)
        if eos_token is not None:
            tok = tok.masked_fill(finished, pad_value)
            finished = finished | (tok == eos_token)
        if penalise:
            counts.scatter_add_(1, tok[:, None], torch.ones(B, 1, device=ids.device))
        hist[:, total] = tok
        total += 1
        yield tok
        if eos_token is not None and (i + 1) % sync_every == 0 and bool(finished.all()):
            return

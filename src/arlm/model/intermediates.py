"""What an x-transformers-style forward returns besides the logits: the state to pass back as
``cache`` for the next step, the attention z-loss, attention maps and QK-clip.

Dims: B batch, H query heads, K key/value heads, T query time, S key time, D head size.

x-transformers keeps its cache as tensors that grow by concatenation, so an old cache stays
valid when a newer one exists. arlm's ``KVCache`` is preallocated and written in place; a
``LayerIntermediates`` therefore holds the cache storage plus how much of it is its own, and
the storage counts writes: continuing from an intermediates object that is no longer the
latest writer of its storage (two continuations of one prefix) first copies the storage, so
every object keeps meaning exactly the sequence it was returned for. The storage grows
(doubling, up to ``max_seq_len``) when a sequence outgrows it.
"""

from __future__ import annotations

import weakref

import torch

from .attend import AttnRecord, attention_logits
from .attention import KVCache


class _Storage:
    """A KVCache, the model it belongs to and a count of the forwards that wrote it."""

    __slots__ = ("cache", "writes", "owner")

    def __init__(self, cache: KVCache, model):
        self.cache, self.writes, self.owner = cache, 0, weakref.ref(model)


class AttnIntermediate:
    """One attention call's logits and weights, computed on demand from what the call saw (its
    queries and keys are kept by reference), as x-transformers' attention ``Intermediates``."""

    def __init__(self, record: AttnRecord):
        self.record = record

    @property
    def pre_softmax_attn(self) -> torch.Tensor:
        """Attention logits (B, H, T, S) in fp32 after position bias and soft-clamping, -inf
        where a key is hidden. Key columns: memory/zero key-values, memory tokens, then slots."""
        r = self.record
        B, H = r.q.shape[:2]
        K, S, D = r.k.shape[1:]
        k = r.k if K == H else r.k[:, None].expand(B, H // K, K, S, D).reshape(B, H, S, D)
        return attention_logits(r.q, k.to(r.q.dtype), scale=r.scale, scores=r.scores, mask=r.mask,
                                visible=r.visible, causal=r.causal)

    @property
    def post_softmax_attn(self) -> torch.Tensor:
        """Attention weights (B, H, T, S) (after top-k sparsification, before post-softmax
        talking heads, as x-transformers)."""
        if self.record.weights is not None:  # the explicit path's own weights (sigmoid, hard, signed...)
            return self.record.weights.float()
        s = self.pre_softmax_attn
        if self.record.topk is not None and self.record.topk < s.shape[-1]:
            kth = s.topk(self.record.topk, dim=-1).values[..., -1:]
            s = s.masked_fill(s < kth, float("-inf"))
        return s.softmax(dim=-1)

    def logit_max(self) -> torch.Tensor:
        """The largest visible attention logit of each head, (H,)."""
        return self.pre_softmax_attn.amax(dim=(0, 2, 3))


class Records(list):
    """What a forward collects for its intermediates: an ``AttnRecord`` per attention call, and in
    ``hiddens`` the input of each block that has attention."""

    def __init__(self):
        super().__init__()
        self.hiddens: list[torch.Tensor] = []


class LayerIntermediates:
    """Returned with ``return_intermediates=True``; pass it back as ``cache=`` to decode on.

    cache_length: rows the cache holds (prepended rows + tokens). attn_intermediates: one
    ``AttnIntermediate`` per attention call of this forward (its query rows only, as
    x-transformers). attn_z_loss, logit_entropies, last_hidden (final embeddings after the norm):
    set when asked for. hiddens: the residual stream entering each attention block (memory
    tokens and prepended rows included), as x-transformers.
    """

    def __init__(self, storage: _Storage | None, cache_length: int, start, key_mask, prepend_len: int,
                 records: list, batch: int):
        self._storage = storage
        self._writes = storage.writes if storage is not None else 0
        self.cache_length = cache_length
        self.start = start  # (B,) left padding (seq_start_pos) or None
        self.key_mask = key_mask  # (B, cache_length) keys hidden by ``mask`` so far, or None
        self.prepend_len = prepend_len
        self.batch = batch
        self.attn_intermediates = [AttnIntermediate(r) for r in records]
        self.attn_z_loss: torch.Tensor | None = None
        self.logit_entropies: torch.Tensor | None = None
        self.last_hidden: torch.Tensor | None = None
        # several residual streams (B, T, N, C) are laid out as x-transformers' (B*N, T, C)
        self.hiddens = [h.transpose(1, 2).flatten(0, 1) if h.dim() == 4 else h for h in getattr(records, "hiddens", [])]

    def cache_for(self, model, rows: int) -> KVCache:
        """The KVCache to write ``rows`` new rows after this object's, made private (copied when
        another forward wrote the storage since) and large enough (grown when not)."""
        if self._storage is None:
            raise ValueError("this intermediates object holds no KV cache: it came from a forward with gradients in "
                             "training mode; run the prefill under torch.no_grad() or in eval mode to decode from it")
        if self._storage.owner() is not model:
            raise ValueError("this cache was built by another model; pass each model its own intermediates")
        need = self.cache_length + rows
        cap = self._storage.cache.max_len
        if need > model.cfg.max_seq_len:
            raise ValueError(f"the sequence would reach {need} rows, past the model context max_seq_len="
                             f"{model.cfg.max_seq_len} (arlm's KV cache is preallocated to at most that)")
        if need > cap or self._storage.writes != self._writes:
            self._storage = _Storage(_copied(model, self._storage.cache, _capacity(model, need, cap)), model)
            self._writes = 0
        return self._storage.cache


def new_storage(model, batch: int, rows: int, like: torch.Tensor) -> _Storage:
    """A fresh storage for a prefill of ``rows`` rows."""
    return _Storage(model.new_cache(batch, _capacity(model, rows, 0), device=like.device), model)


def _capacity(model, need: int, current: int) -> int:
    """Doubling growth (at least 16 slots), never past the model context."""
    return min(model.cfg.max_seq_len, max(need, 2 * current, 16))


def _copied(model, old: KVCache, max_len: int) -> KVCache:
    new = model.new_cache(old.batch_size, max_len, device=old.k[0].device, dtype=old.k[0].dtype)
    for a, b in zip(new.tensors(), old.tensors()):
        # every state is indexed by slot from 0 along its slot dims (keys/values (B, K, S, D), shift
        # buffers (B, S, F), selective gates (B, S, S)...); the other dims are equal
        for d in range(1, a.dim()):
            n = min(a.shape[d], b.shape[d])
            a, b = a.narrow(d, 0, n), b.narrow(d, 0, n)
        a.copy_(b)
    return new


@torch.no_grad()
def qk_clip_(model, intermediates: LayerIntermediates, tau: float = 100.0) -> None:
    """QK-clip (Kimi K2's MuonClip, Moonshot AI 2025): for every attention call whose largest
    attention logit of head h, m_h, exceeded ``tau``, scale that head's query and key projection
    rows so its logits shrink by gamma_h = tau / m_h (sqrt(gamma_h) on each side, as
    x-transformers). Grouped key/value heads serve several query heads, so the key rows take
    sqrt of the largest gamma of their group and each query head the rest of its own gamma:
    every head's logits still scale by exactly its gamma_h, and no weight grows."""
    if model.cfg.qk_norm:
        raise ValueError("QK-clip rescales the query/key projections, which qk-norm (attn_qk_norm) normalises away")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    order = [model.blocks[i].attn for i in model.order if model.blocks[i].attn is not None]
    calls = intermediates.attn_intermediates
    if len(calls) != len(order):
        raise ValueError(f"the intermediates hold {len(calls)} attention calls, the model makes {len(order)}; "
                         "pass the intermediates of a forward of this model")
    peak: dict[int, tuple] = {}  # a weight-tied layer runs several times: clip by its largest logits
    for attn, inter in zip(order, calls):
        m = inter.logit_max()
        peak[id(attn)] = (attn, torch.maximum(peak[id(attn)][1], m) if id(attn) in peak else m)
    for attn, m in peak.values():
        if attn.qkv is None:
            raise ValueError("QK-clip needs separate query/key projections; latent (multi-latent) attention has none")
        H, K, D = attn.heads, attn.kv_heads, attn.head_dim
        gamma = torch.where(m > tau, tau / m, torch.ones_like(m))  # (H,); heads under tau keep 1
        key = gamma.view(H // K, K).amax(dim=0).sqrt()  # (K,) query head h reads key head h % K
        query = gamma / key.repeat(H // K)  # (H,)
        w = attn.qkv.weight  # rows: H*D queries, K*D keys, then the values
        w[: H * D].mul_(query.repeat_interleave(D)[:, None].to(w.dtype))
        w[H * D:(H + K) * D].mul_(key.repeat_interleave(D)[:, None].to(w.dtype))

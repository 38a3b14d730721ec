"""What one forward shares across layers: the per-step plan, rotary tables, the attention mask
(or the fused causal fast path), position biases and left-padding rows.

Dims: B batch, T query time, S key time (cache slots), H heads, M memory tokens, P memory/zero
key-value columns in front of the keys.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class Step(NamedTuple):
    """One execution step of the stack (a block call); -1 where the block has no such part."""

    kv_layer: int  # KV cache layer of the attention branch
    prev_attn: int  # the previous step that ran attention (residual attention reads its scores)
    attn_shift: int  # token-shift buffer of the attention branch
    ff_shift: int  # token-shift buffer of the feed-forward branch


def plan_steps(specs, order) -> tuple[list[Step], int]:
    """The ``Step`` of each execution step, and the first step that runs attention (-1: none).

    specs: (has_attn, has_ff) per block; order: block index per execution step."""
    steps, kv, shift, prev, first = [], 0, 0, -1, -1
    for step, b in enumerate(order):
        has_attn, has_ff = specs[b]
        steps.append(Step(kv if has_attn else -1, prev, shift if has_attn else -1, shift + has_attn if has_ff else -1))
        kv += has_attn
        shift += has_attn + has_ff
        if has_attn:
            prev = step
            first = step if first < 0 else first
    return steps, first


class Context:
    """Per-forward inputs shared by every layer (built once by the Transformer).

    rope: rotary (or polar) tables or None. slots: (T,) internal slots of the rows being computed (memory
    tokens first); kv_slots: the same in the KV cache, after its memory/zero key-value slots.
    mask: SDPA mask (bool visible, or additive float with -inf), None with ``causal`` for the
    fused causal kernel. visible/bias: the same split in two for the explicit-score path.
    pad: (B, T) True on left-padding rows (token shifting zeroes them, running means skip them), or None.
    steps: the per-step plan, a ``Step`` per execution step. State carried between layers (first-layer values, each step's scores) is
    keyed by step, so activation checkpointing can re-run any block and see the same inputs.
    """

    __slots__ = ("rope", "slots", "kv_slots", "causal", "mask", "visible", "bias", "pad", "cache", "steps",
                 "first_attn_step", "scores", "values", "z_lse", "kv_end", "slot0", "inject", "attn",
                 "ff_deep", "dist", "real_keys", "gateable", "hiddens")

    def __init__(self, steps, first_attn_step: int, rope=None, slots=None, kv_slots=None, pad=None, cache=None):
        self.steps, self.first_attn_step = steps, first_attn_step
        self.rope, self.slots, self.kv_slots, self.pad, self.cache = rope, slots, kv_slots, pad, cache
        self.causal, self.mask, self.visible, self.bias = True, None, None, None
        self.scores: dict[int, torch.Tensor] = {}
        self.values = None
        self.hiddens: dict[int, torch.Tensor] | None = None  # branch inputs by execution index (layer integration)
        self.z_lse: list[torch.Tensor] | None = None  # per-layer attention log-sum-exp, for the z-loss
        self.kv_end: int | None = None  # read cache slots [0, kv_end) only (None: all of them)
        self.slot0: int | None = None  # the rows are cache slots slot0.. (write by slicing, not index_copy)
        self.inject: torch.Tensor | None = None  # reinject_input: added to every branch input (B, T, C)
        self.attn: list | None = None  # per attention call, an AttnRecord (attention maps were asked for)
        self.ff_deep: dict[int, torch.Tensor] | None = None  # ff_deep_embed: step -> (B, T, C) output multiplier
        self.dist: torch.Tensor | None = None  # (B|1, T, S) query - key positions, for per-layer position biases
        self.real_keys: torch.Tensor | None = None  # (B, S) False on left-padding key slots (None: no padding)
        self.gateable: torch.Tensor | None = None  # (B|1, T, S) keys selective attention may lower

    def kv(self, step: int):
        if self.cache is None:
            return None
        i = self.steps[step].kv_layer
        return self.cache.k[i], self.cache.v[i]

    def _branch(self, step: int, kind: str) -> int:
        """The number of this branch run among all branch runs (its per-branch cache state)."""
        return self.steps[step].attn_shift if kind == "attn" else self.steps[step].ff_shift

    def shift_buffer(self, step: int, kind: str) -> torch.Tensor:
        return self.cache.shift[self._branch(step, kind)]

    def running_buffer(self, step: int, kind: str) -> torch.Tensor:
        """The running sums of a branch (mv_split_residual)."""
        return self.cache.running[self._branch(step, kind)]

    def forget_state(self, step: int) -> torch.Tensor:
        return self.cache.forget[self.steps[step].kv_layer]


def make_context(model, slots, positions, start, cache, key_mask, kv_len=None, doc_ids=None) -> Context:
    """Everything the layers share: rotary tables, the mask (or the causal fast path), the
    position bias, and the left-padding rows. slots (T,) are internal rows incl. memory;
    positions (T,) | (B, T) count from each row's first real token (memory first).
    doc_ids (B, T): document of each row (uncached, no memory); a query sees its own document only."""
    M = model.num_memory_tokens
    qk_pos = model.rotary or model.polar  # rotary or polar tables, applied to queries and keys
    rope = qk_pos.table(positions) if qk_pos is not None else None
    # (B, T) True on the left-padding rows (memory rows are never padding)
    pad_rows = None if start is None else (slots[None, :] < (start[:, None] + M)) & (slots[None, :] >= M)
    pad = pad_rows if model.cfg.shift_tokens or model.cfg.mv_split_residual or model.cfg.data_dependent_alibi else None
    P = model.kv_prefix
    ctx = Context(model._steps, model._first_attn_step, rope=rope, slots=slots,
                  kv_slots=slots + P if P else slots, pad=pad, cache=cache)
    if not (model.needs_mask or cache is not None or start is not None or key_mask is not None
            or doc_ids is not None):
        return ctx  # fused causal SDPA, nothing materialised
    S = cache.slots - P if cache is not None else slots.shape[0]  # key rows after the P prefix columns
    if cache is not None and kv_len is not None:
        S = M + kv_len  # read only the slots in use
        ctx.kv_end = P + S
        T = slots.shape[0]
        if not (model.needs_mask or start is not None or key_mask is not None) and (T == 1 or T == S):
            # one new token sees every slot in use; a prefill from slot 0 is plain causal
            ctx.causal = T > 1
            return ctx
    ctx.causal = False
    device = slots.device
    kslots = torch.arange(S, device=device) if cache is not None else slots  # (S,)
    visible = (kslots[None, :] <= slots[:, None])[None]  # (1, T, S)
    if start is not None:
        real = (kslots[None, :] >= start[:, None] + M) | (kslots[None, :] < M)  # (B, S)
        visible = (visible & real[:, None, :]) | (kslots[None, :] == slots[:, None])[None]  # (B, T, S)
        ctx.real_keys = real
    if key_mask is not None:
        # (B, n) over caller slots 0..n-1 (uncached: the rows); memory and later slots stay visible
        km = F.pad(key_mask.bool(), (M, S - M - key_mask.shape[1]), value=True)  # (B, S)
        visible = visible & (km[:, None, :] | (kslots[None, :] == slots[:, None])[None])
    if doc_ids is not None:
        # packed documents: attention stays inside each one, as if it stood alone in the window
        visible = visible & (doc_ids[:, :, None] == doc_ids[:, None, :])  # (B, T, S), S == T
    dist = None
    if model.pos_bias is not None or model.cfg.max_attend_past is not None or model.cfg.rel_proj_pos_bias:
        kpos = positions if cache is None else slot_positions(M, S, start, device)  # (S,) | (B, S)
        qp = positions if positions.dim() == 2 else positions[None]
        kp = kpos if kpos.dim() == 2 else kpos[None]
        dist = qp[:, :, None] - kp[:, None, :]  # (B|1, T, S) query position - key position
    if model.cfg.max_attend_past is not None:
        # sliding-window attention (Child et al. 2019; Beltagy et al. 2020, Longformer)
        visible = visible & (dist <= model.cfg.max_attend_past)
    ctx.dist = dist
    if model.cfg.attn_selective:
        # a query never lowers itself or the sequence's first token (memory token 0, else the
        # row's first real token), as x-transformers; memory/zero key columns stay ungated
        first = start[:, None, None] if start is not None and not M else 0
        own = kslots[None, None, :] == slots[None, :, None]
        gateable = visible & ~own & (kslots[None, None, :] != first)
        if start is not None:
            # left-padding queries lower nothing: they still see the memory tokens, and their
            # gates on them would reach the row's real queries, which a solo row never has
            gateable = gateable & ~pad_rows[:, :, None]
        ctx.gateable = F.pad(gateable, (P, 0), value=False)
    visible = visible[:, None]  # (B|1, 1, T, S)
    bias = model.pos_bias(dist) if model.pos_bias is not None else None  # (B|1, H, T, S)
    if P:  # memory / zero key columns: always visible, no position bias
        visible = F.pad(visible, (P, 0), value=True)
        bias = F.pad(bias, (P, 0), value=0.0) if bias is not None else None
    if model.cfg.needs_scores:
        ctx.visible, ctx.bias = visible, bias
    else:
        ctx.mask = visible if bias is None else bias.masked_fill(~visible, float("-inf"))
    return ctx


def slot_positions(M: int, S: int, start, device) -> torch.Tensor:
    """Positions of all S cache slots: memory m -> m, token slot s -> M + (s - M - start)."""
    s = torch.arange(S, device=device)
    if start is None:
        return s
    tok = (s[None, :] - M - start[:, None]).clamp(min=0) + M  # (B, S)
    return torch.where(s[None, :] < M, s[None, :], tok)

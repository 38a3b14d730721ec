"""Causal self-attention with a preallocated KV cache.

Dims: B batch, T query time, S key time (cache length), H query heads, K key/value heads
(K divides H: K == H multi-head, 1 < K < H grouped-query, K == 1 multi-query; query head h
reads KV head h % K), D head size.

The cache is written at fixed slots (static shapes, no concatenation), so a decode step has
the same shapes at every position and compiles into one CUDA graph. The kernel is fused SDPA
(causal, or with a boolean/additive mask) unless an option needs the scores themselves
(``ModelConfig.needs_scores``); see attend.py.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .attend import (AttnRecord, attention_lse, explicit_attention, fused_attention, l2_distance_qk,
                     laser_values, selective_penalty)
from .attention_variants import HeadGate, LatentQKV, LearnedSink, gate_attended, gate_projection, orthogonal_values
from .calls import call
from .context import Context
from .norms import HeadRMSNorm, QKNorm
from .positional import apply_polar, apply_rotary, partial_head_tables, rotary_head_mask
from .positional_bias import ContextualPositions, layer_pos_bias


class KVCache:
    """Keys and values for every attention call, preallocated: k, v are lists of L tensors
    (B, K, S, D) and (B, K, S, Dv), one per attention call (Dv: ``value_dim``, default D; multi-head
    latent attention keeps its latents in k, K = 1, and leaves v empty, Dv = 0). Separate tensors
    (not views of one stacked tensor) let a compiled step write each in place; a stacked cache compiles into a copy of the whole
    cache per layer per step.

    ``layer(i)`` gives that layer's (k, v); attention writes new keys at their slots.
    Leading slots are reserved: first ``kv_prefix`` for memory/zero key-values (so decoding
    never concatenates), then ``prefix`` for the model's memory tokens; both are 0 unless those
    options are on. ``shift`` (N tensors (B, prefix + max_len, F)) keeps earlier tokens'
    features for token shifting (None unless ``shift_tokens``). ``running`` (N tensors
    (B, prefix + max_len, R), fp32) keeps running sums over positions for ``mv_split_residual``
    (None unless it is on). ``select`` (L float32 tensors (B, prefix + max_len, kv_prefix + prefix +
    max_len)) keeps each query's selective-attention gates on the keys, at its slot (None unless
    ``attn_selective``). ``max_len`` counts token slots only.
    ``key_dim``: the key width when it differs from the value width (polar positions: 2D).
    ``forget`` (L float32 tensors (B, *forget_shape)) keeps the forgetting transformer's per-slot
    state (None unless ``data_dependent_alibi``; see positional_bias.py).
    """

    def __init__(self, depth: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 device=None, dtype=torch.float32, prefix: int = 0, shift_layers: int = 0, shift_dim: int = 0,
                 kv_prefix: int = 0, key_dim: int | None = None, running_layers: int = 0, running_dim: int = 0,
                 value_dim: int | None = None, forget_shape: tuple[int, ...] | None = None, latent: bool = False,
                 select: bool = False):
        shape = (batch, kv_heads, kv_prefix + prefix + max_len, head_dim)
        kshape = shape[:3] + (key_dim or head_dim,)
        vshape = shape[:3] + (head_dim if value_dim is None else value_dim,)
        self.k = [torch.zeros(kshape, device=device, dtype=dtype) for _ in range(depth)]
        self.v = [torch.zeros(vshape, device=device, dtype=dtype) for _ in range(depth)]
        self.prefix, self.kv_prefix = prefix, kv_prefix
        self.latent = latent  # k holds multi-head latent attention's latents
        self.shift = ([torch.zeros(batch, prefix + max_len, shift_dim, device=device, dtype=dtype)
                       for _ in range(shift_layers)] if shift_layers else None)
        self.running = ([torch.zeros(batch, prefix + max_len, running_dim, device=device, dtype=torch.float32)
                         for _ in range(running_layers)] if running_layers else None)
        self.forget = ([torch.zeros(batch, *forget_shape, device=device, dtype=torch.float32)
                        for _ in range(depth)] if forget_shape else None)
        self.select = ([torch.zeros(batch, prefix + max_len, shape[2], device=device, dtype=torch.float32)
                        for _ in range(depth)] if select else None)

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]

    @property
    def slots(self) -> int:
        """All slots per layer: kv_prefix + prefix + max_len."""
        return self.k[0].shape[2]

    @property
    def max_len(self) -> int:
        return self.slots - self.kv_prefix - self.prefix

    def tensors(self) -> list[torch.Tensor]:
        return [*self.k, *self.v, *(self.shift or []), *(self.running or []), *(self.forget or []),
                *(self.select or [])]

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[i], self.v[i]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (beam search, dropping finished rows)."""
        self.k = [t.index_select(0, index) for t in self.k]
        self.v = [t.index_select(0, index) for t in self.v]
        if self.shift is not None:
            self.shift = [t.index_select(0, index) for t in self.shift]
        if self.running is not None:
            self.running = [t.index_select(0, index) for t in self.running]
        if self.forget is not None:
            self.forget = [t.index_select(0, index) for t in self.forget]
        if self.select is not None:
            self.select = [t.index_select(0, index) for t in self.select]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, value_mix: bool = False):
        super().__init__()
        H, K, D, Dv = cfg.heads, cfg.n_kv_heads, cfg.head_dim, cfg.value_head_dim
        self.heads, self.kv_heads, self.head_dim, self.value_dim = H, K, D, Dv
        latent = cfg.attn_use_latent_q or cfg.attn_use_latent_kv
        self.qkv = None if latent else nn.Linear(cfg.dim, (H + K) * D + K * Dv, bias=cfg.attn_bias)
        self.latent = LatentQKV(cfg) if latent else None
        # the cache keeps the latent (when nothing transforms keys or values on the way)
        self.latent_cache = cfg.latent_kv_cache
        if self.latent_cache and cfg.pos_emb == "rotary":  # queries and the decoupled key heads
            n = cfg.attn_latent_rope_subheads
            self.register_buffer("latent_rotary", rotary_head_mask(H, n, n), persistent=False)
        # attention on attention (Huang et al. 2019): the output projection is a GLU
        self.on_attn = cfg.attn_on_attn
        self.out = (None if cfg.attn_project_out is False
                    else nn.Linear(cfg.attn_out_in_dim, cfg.dim * (2 if cfg.attn_on_attn else 1), bias=cfg.attn_bias))
        self.zero_init_output, self.out_depth = cfg.attn_zero_init_output, cfg.attn_output_proj_depth
        self.sublayer_dropout = cfg.attn_sublayer_dropout
        self.dropout = cfg.attn_dropout
        # qk-norm (Henry et al. 2020): cosine-similarity attention with a fixed temperature (or,
        # with learned per-dimension gains, the usual D**-0.5)
        self.qk_norm = QKNorm(H, K, D, cfg.qk_norm_groups, cfg.qk_norm_dim_scale) if cfg.qk_norm else None
        self.scale = cfg.qk_norm_scale if cfg.qk_norm and not cfg.qk_norm_dim_scale else D**-0.5
        # per-head RMSNorm of queries and keys (or keys only: the first H heads pass) and of values;
        # applied before the cache write, so cached keys/values are the normalised ones
        self.qk_rmsnorm = (HeadRMSNorm(D, H + K) if cfg.qk_rmsnorm else HeadRMSNorm(D, K, first=H) if cfg.k_rmsnorm
                           else None)
        self.normalises_queries = bool(cfg.qk_norm or cfg.qk_rmsnorm)
        self.value_rmsnorm = HeadRMSNorm(Dv, K) if cfg.value_rmsnorm else None
        # memory key/values (Sukhbaatar et al. 2019, "Augmenting Self-attention with Persistent Memory")
        self.num_mem_kv = cfg.attn_num_mem_kv
        if self.num_mem_kv:
            self.mem_k = nn.Parameter(torch.randn(K, self.num_mem_kv, D))
            self.mem_v = nn.Parameter(torch.randn(K, self.num_mem_kv, Dv))
        # a zero key/value every query can fall back on ("attention is off by one", Miller 2023)
        self.add_zero_kv = cfg.attn_add_zero_kv
        self.kv_prefix = self.num_mem_kv + int(self.add_zero_kv)
        # per-head learned output scale (Shleifer et al. 2021, NormFormer); 1-D, so no weight decay
        self.head_scale = nn.Parameter(torch.ones(H)) if cfg.attn_head_scale else None
        # gates on the attended values (attention_variants.py): from the layer input (value gate),
        # from the attended values themselves (output gate), one per head (head gate)
        gate = dict(heads=H, width=H * Dv, silu=cfg.attn_low_rank_silu_gates)
        self.value_gate = (gate_projection(cfg.dim, rank=cfg.attn_gate_values_rank, headwise=cfg.attn_gate_values_headwise,
                                           **gate) if cfg.attn_gate_values else None)
        self.output_gate = (gate_projection(H * Dv, rank=cfg.attn_output_gate_rank, headwise=cfg.attn_output_gate_headwise,
                                            **gate) if cfg.attn_output_gate else None)
        self.gated = cfg.attn_gate_values or cfg.attn_output_gate
        self.swiglu_values = cfg.attn_swiglu_values
        self.head_gate = HeadGate(cfg.dim, H) if cfg.attn_gate_value_heads else None
        self.sink = LearnedSink(H) if cfg.attn_head_learned_sink else None
        orthog = (cfg.attn_orthog_projected_values, cfg.attn_orthog_projected_values_per_head)
        self.orthog = orthog if any(orthog) else None  # (over all heads, per head)
        # value residual (Zhou et al. 2024, ResFormer): mix in the first layer's values, per token and KV head
        self.value_mix = nn.Linear(cfg.dim, K) if value_mix else None
        self.value_residual = cfg.add_value_residual
        self.explicit = cfg.needs_scores
        self.pre_talking_heads = nn.Parameter(torch.eye(H)) if cfg.attn_pre_talking_heads else None
        self.post_talking_heads = nn.Parameter(torch.eye(H)) if cfg.attn_post_talking_heads else None
        self.softclamp = cfg.attn_logit_softclamp_value if cfg.attn_softclamp_logits else None
        self.topk = cfg.attn_sparse_topk
        self.residual_attn = cfg.residual_attn
        # rotary on the last N query and key heads only (x-transformers' rotate_num_heads)
        # (latent attention's decoupled RoPE rotates its last attn_latent_rope_subheads heads the same way)
        n = cfg.rotary_num_heads if cfg.rotary_num_heads is not None else cfg.attn_latent_rope_subheads
        if n is not None and n < H:
            self.register_buffer("rotary_heads", rotary_head_mask(H, K, n), persistent=False)
        else:
            self.rotary_heads = None
        # polar positions (PoPE) turn each query/key feature into a complex number: 2D real features
        self.polar = cfg.pos_emb == "polar"
        self.key_dim = 2 * D if self.polar else D
        # a position bias of this layer's own (forgetting transformer, distance basis), or None
        self.layer_bias = layer_pos_bias(cfg)
        # contextual positions (CoPE), counted from this layer's scores on the explicit path
        self.cope = (ContextualPositions(D, H, cfg.cope_max_pos, cfg.cope_soft_onehot_pos, cfg.cope_talking_heads)
                     if cfg.cope else None)
        # (attention scores and kernels) see attend.py
        self.score_options = dict(
            weights=("sigmoid" if cfg.attn_sigmoid else "hard" if cfg.attn_hard
                     else "gumbel" if cfg.attn_gumbel_softmax else "softmax"),
            straight_through=cfg.attn_sparse_topk_straight_through, cog_signed=cfg.attn_cog_signed,
            gumbel_temp=cfg.attn_gumbel_softmax_temp, gumbel_hard=cfg.attn_gumbel_softmax_hard)
        self.pre_scale_post_talking_heads = nn.Parameter(torch.eye(H)) if cfg.attn_pre_scale_post_talking_heads else None
        self.selective = cfg.attn_selective
        self.l2_distance = cfg.attn_l2_distance
        self.laser = cfg.attn_laser_softclamp_value if cfg.attn_laser else None
        self.qkv_views = cfg.qkv_views  # some calls get separate query/key/value inputs (model/streams.py)

    def forward(self, x: torch.Tensor, ctx: Context, step: int = 0) -> torch.Tensor:
        B, T = x.shape[-3:-1]
        H, K, D, Dv = self.heads, self.kv_heads, self.head_dim, self.value_dim
        mods = self._modules
        if self.latent_cache and ctx.cache is not None and ctx.cache.latent:
            return self._output(*self._latent_attention(x, ctx, step), x)
        if self.qkv_views and x.dim() == 4:  # (3, B, T, C): q, k, v from different views (model/streams.py)
            qk, v = self._project_views(x)
            x = x[0]  # the query view also drives the gates and the value-residual mix
        elif self.latent is None:
            qk, v = call(mods["qkv"], x).split(((H + K) * D, K * Dv), dim=-1)
            qk = qk.view(B, T, H + K, D)  # queries and keys side by side: norm and rotate them at once
        else:
            qk, v = self.latent(x)
        if self.qk_norm is not None:
            qk = call(mods["qk_norm"], qk)
        if self.qk_rmsnorm is not None:
            qk = self.qk_rmsnorm(qk)
        if ctx.rope is not None:
            cis, xs = ctx.rope
            if self.polar:  # (query rotations per head, key rotations)
                qk = apply_polar(qk, cis, xs, H)
            elif self.rotary_heads is not None:
                qk = apply_rotary(qk, *partial_head_tables(cis, xs, self.rotary_heads, H))
            elif xs is None:
                qk = apply_rotary(qk, cis)
            else:  # xPos scales queries up and keys down
                qk = torch.cat((apply_rotary(qk[:, :, :H], cis, xs), apply_rotary(qk[:, :, H:], cis, xs, True)), dim=2)
        q = qk[:, :, :H].transpose(1, 2)  # (B, H, T, D), 2D for polar
        k = qk[:, :, H:].transpose(1, 2)  # (B, K, T, D), 2D for polar
        v = v.view(B, T, K, Dv).transpose(1, 2)  # (B, K, T, Dv)
        own_values = v
        if self.value_residual:
            v = self._mix_values(x, v, ctx, step)
        if self.value_rmsnorm is not None:  # after the value residual mix, as x-transformers
            v = self.value_rmsnorm(v.transpose(1, 2)).transpose(1, 2)
        kv = ctx.kv(step)
        P = self.kv_prefix
        if kv is not None:
            k_cache, v_cache = kv  # (B, K, P + S, D)
            if P:  # memory/zero key-values live in the first P slots (rewritten: they are parameters)
                pk, pv = self._prefix_kv(B, k_cache.dtype)
                k_cache[:, :, :P] = pk
                v_cache[:, :, :P] = pv
            if k.dtype != k_cache.dtype:  # (a no-op .to still costs a dispatch per layer per token)
                k, v = k.to(k_cache.dtype), v.to(v_cache.dtype)
            k, v = write_slots(k_cache, k, ctx), write_slots(v_cache, v, ctx)
            if k.dtype != q.dtype:
                k, v = k.to(q.dtype), v.to(q.dtype)
        elif P:
            pk, pv = self._prefix_kv(B, k.dtype)
            k, v = torch.cat((pk, k), dim=2), torch.cat((pv, v), dim=2)  # (B, K, P + T, D)
        S = k.shape[2]
        if self.l2_distance:
            q, k = l2_distance_qk(q, k)
        if self.laser is not None:
            v = laser_values(v, self.laser, self.add_zero_kv)
        k_kv = k  # (B, K, S, D): recorded unexpanded when attention maps are asked for
        if K != H:
            # expand K heads to H, query head h reading KV head h % K (x-transformers' layout, so
            # per-head weights and ALiBi slopes line up after conversion; Llama groups h // (H/K))
            k = k[:, None].expand(B, H // K, K, S, k.shape[-1]).reshape(B, H, S, k.shape[-1])
            v = v[:, None].expand(B, H // K, K, S, Dv).reshape(B, H, S, Dv)
        return self._output(self._kernel(q, k, v, ctx, step, x, k_kv), own_values, x)

    def _kernel(self, q, k, v, ctx: Context, step: int, x, k_kv) -> torch.Tensor:
        """q (B, H, T, D), k (B, H, S, D), v (B, H, S, Dv) -> attended values (B, H, T, Dv): fused
        SDPA, or explicit scores when an option needs them. The layer's own position bias (from
        x, the layer input) and a learned sink join the mask first; k_kv: the keys before
        grouped-query expansion, for attention records."""
        mask, causal, bias = ctx.mask, ctx.causal, ctx.bias
        if self.layer_bias is not None:
            mask, bias = self._with_layer_bias(x, ctx, step, k.shape[2] - self.kv_prefix)
        if self.sink is not None:
            k, v, mask = self.sink.extend(q, k, v, mask, causal)
            causal = False
        dropout = self.dropout if self.training else 0.0
        scores = weights = None
        if self.explicit:
            prev = ctx.scores.get(ctx.steps[step].prev_attn) if self.residual_attn else None
            y, scores, weights = explicit_attention(
                q, k, v, scale=self.scale, visible=ctx.visible, bias=bias, prev_scores=prev,
                pre_talking=self.pre_talking_heads, post_talking=self.post_talking_heads, softclamp=self.softclamp,
                topk=self.topk, dropout=self.dropout, training=self.training,
                pre_scale_post=self.pre_scale_post_talking_heads, select=self._selection(ctx, step, k.shape[2]),
                cope=self.cope, **self.score_options)
            if self.residual_attn:
                ctx.scores[step] = scores
        else:
            y = fused_attention(q, k, v, mask, causal, self.scale, dropout)  # (B, H, T, Dv)
        if ctx.attn is not None:
            # (with a learned sink, the keys as extended by it, already one per query head)
            rk = k_kv if self.sink is None else k  # the mask is this layer's own (per-layer position biases)
            rmask, rcausal = mask, causal
            ctx.attn.append(AttnRecord(q, rk, scores, rmask, ctx.visible, rcausal, self.scale, self.topk,
                                       weights))
        if ctx.z_lse is not None:
            ctx.z_lse.append(attention_lse(q, k, scale=self.scale, scores=scores, mask=mask,
                                           visible=ctx.visible, causal=causal))
        if self.laser is not None:  # LASER: back from exp(values) (laser_values)
            y = y.clamp(min=1e-20).log()
        return y

    def _output(self, y: torch.Tensor, values: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """Attended values y (B, H, T, Dv) -> the branch output (B, T, C): head scale and gates,
        orthogonal projection against the layer's own ``values`` (B, K, T, Dv), the output
        projection and dropout. x (B, T, C) is the layer input the gates read."""
        B, H, T, Dv = y.shape
        if self.head_scale is not None:
            y = y * self.head_scale[:, None, None].to(y.dtype)
        if self.head_gate is not None:
            y = self.head_gate.gate(y, x)
        y = y.transpose(1, 2).reshape(B, T, H * Dv)  # (B, T, H*Dv)
        if self.gated:
            y = gate_attended(y, x, H, self.value_gate, self.output_gate, self.swiglu_values)
        if self.orthog is not None:
            y = orthogonal_values(y, values, H, *self.orthog)
        out = self._modules.get("out")  # absent: no output projection (a plain None attribute)
        if out is not None:
            y = call(out, y)
            if self.on_attn:
                y = F.glu(y, dim=-1)
        if self.sublayer_dropout and self.training:
            y = F.dropout(y, self.sublayer_dropout)
        return y

    @torch.no_grad()
    def init_option_(self, generator=None) -> None:
        """Zero output projection (``attn_zero_init_output``: the branch starts silent, Bachlechner
        et al. 2020, ReZero), or OLMo's depth-scaled std (2 * fan_in * depth)^-0.5
        (``attn_output_proj_depth``, Groeneveld et al. 2024)."""
        w = self.out.weight if self.out is not None else None
        if w is None:
            return
        if self.zero_init_output:
            w.zero_()
        elif self.out_depth is not None:
            std = (2 * self.out.in_features * self.out_depth) ** -0.5
            # drawn in logical order, as init_weights does (storage may be transposed)
            w.copy_(torch.empty(w.shape, dtype=w.dtype, device=w.device).normal_(0.0, std, generator=generator))

    @torch.no_grad()
    def zero_query_(self) -> None:
        """Query projections at zero (``model.init: torch_zero_query``; muP's query init, Yang et al.
        2021): every head starts attending uniformly over the keys it may see. Normalised queries
        (qk-norm) keep their draw: a zero vector has no direction."""
        if self.normalises_queries:
            return
        if self.latent is not None:
            self.latent.q.weight.zero_()
            return
        n = self.heads * self.head_dim
        self.qkv.weight[:n].zero_()
        if self.qkv.bias is not None:
            self.qkv.bias[:n].zero_()

    def _with_layer_bias(self, x, ctx: Context, step: int, S: int):
        """(mask, bias) with this layer's own position bias added: to the additive mask of the
        fused path, or to the bias of the explicit path. Memory/zero key columns get none."""
        b = call(self._modules["layer_bias"], x, ctx, step, S)  # (B, H, T, S)
        if self.kv_prefix:
            b = F.pad(b, (self.kv_prefix, 0))
        if self.explicit:
            return ctx.mask, b if ctx.bias is None else ctx.bias + b
        m = ctx.mask
        return (b.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else m + b), ctx.bias

    def _latent_attention(self, x: torch.Tensor, ctx: Context, step: int):
        """Multi-head latent attention from a cache of latents (DeepSeek-AI 2024, DeepSeek-V2): per
        token the cache keeps the key/value latent and the decoupled rotary key heads, L + n*D
        numbers instead of K*(D + Dv). The latent heads' key projection is absorbed into their
        queries and the value projection applied after the kernel, so the keys and values of
        earlier tokens are never rebuilt. Returns (attended values (B, H, T, Dv), own values)."""
        B, T, _ = x.shape
        lat = self.latent
        q, c, kr = lat.parts(x)  # (B, T, H, D), (B, T, L), (B, T, n, D) | None
        if ctx.rope is not None:  # only the decoupled heads rotate (config.latent_kv_cache)
            H = self.heads
            qk = apply_rotary(torch.cat((q, kr), dim=2), *partial_head_tables(*ctx.rope, self.latent_rotary, H))
            q, kr = qk[:, :, :H], qk[:, :, H:]
        row = c if kr is None else torch.cat((c, kr.flatten(2)), dim=-1)  # (B, T, L + n*D)
        buf = ctx.kv(step)[0]  # (B, 1, slots, L + n*D)
        if row.dtype != buf.dtype:
            row = row.to(buf.dtype)
        cached = write_slots(buf, row[:, None], ctx)
        if cached.dtype != q.dtype:
            cached = cached.to(q.dtype)
        q, k, v = lat.absorbed(q.transpose(1, 2), cached)
        y = self._kernel(q, k, v, ctx, step, x, k)  # (B, H, T, L)
        values = lat.v(c).view(B, T, self.kv_heads, -1).transpose(1, 2) if self.orthog is not None else None
        return lat.values_out(y), values

    def _selection(self, ctx: Context, step: int, S: int):
        """Selective attention's penalty for this call (None when off): the gates of earlier
        queries live in the cache (``cache.select``) beside the keys they lower."""
        if not self.selective:
            return None
        store = None
        if ctx.cache is not None:  # rows: query slots in use; columns: the S key columns read
            store = ctx.cache.select[ctx.steps[step].kv_layer].narrow(2, 0, S).narrow(1, 0, S - self.kv_prefix)
        return functools.partial(selective_penalty, gateable=ctx.gateable, store=store, slots=ctx.slots)

    def _project_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (3, B, T, C) -> queries and keys (B, T, H + K, D) from views 0 and 1, values (B, T, K * Dv) from view 2."""
        H, K, D = self.heads, self.kv_heads, self.head_dim
        w, b = self.qkv.weight, self.qkv.bias

        def part(view: int, rows: slice) -> torch.Tensor:  # one view through its rows of the fused projection
            return F.linear(x[view], w[rows], None if b is None else b[rows])

        qk = torch.cat((part(0, slice(0, H * D)), part(1, slice(H * D, (H + K) * D))), dim=-1)
        return qk.unflatten(-1, (H + K, D)), part(2, slice((H + K) * D, None))

    def _mix_values(self, x, v, ctx: Context, step: int) -> torch.Tensor:
        """The first attention call stores its values; later calls interpolate towards them with a
        per-token, per-KV-head weight (0.5 for a weight-tied first layer that has no mixer)."""
        if step == ctx.first_attn_step:
            ctx.values = v
            return v
        if self.value_mix is None:
            return ctx.values.lerp(v, 0.5)
        mix = torch.sigmoid(self.value_mix(x)).transpose(1, 2)[..., None]  # (B, K, T, 1)
        return ctx.values.lerp(v, mix.to(v.dtype))

    def _prefix_kv(self, B: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero and memory key/values that precede the keys: (B, K, P, D) each."""
        ks, vs = [], []
        K, D, Dv = self.kv_heads, self.head_dim, self.value_dim
        if self.add_zero_kv:
            device = next(self.parameters()).device
            ks.append(torch.zeros(B, K, 1, self.key_dim, dtype=dtype, device=device))
            vs.append(torch.zeros(B, K, 1, Dv, dtype=dtype, device=device))
        if self.num_mem_kv:
            # memory keys get the qk-norm but not the key RMSNorm, values no value norm (as x-transformers)
            mk = self.qk_norm.memory_keys(self.mem_k) if self.qk_norm is not None else self.mem_k
            ks.append(mk.to(dtype)[None].expand(B, -1, -1, -1))
            vs.append(self.mem_v.to(dtype)[None].expand(B, -1, -1, -1))
        return torch.cat(ks, dim=2), torch.cat(vs, dim=2)



def write_slots(buf: torch.Tensor, new: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Write new rows (B, N, T, F) into the cache tensor buf (B, N, slots, F) at this step's slots;
    return the slots attention reads (all of them, or the first ``ctx.kv_end``)."""
    if ctx.slot0 is not None:  # contiguous slots, no prefix: a slice copy
        buf.narrow(2, ctx.slot0, new.shape[2]).copy_(new)
    else:
        buf.index_copy_(2, ctx.kv_slots, new)
    return buf.narrow(2, 0, ctx.kv_end) if ctx.kv_end is not None else buf

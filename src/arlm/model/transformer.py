"""The one model: token embedding -> blocks -> norm -> logits.

Dims: B batch, T time, S cache length, C model dim, V vocabulary, M memory tokens.

One forward serves training (no cache: causal SDPA, no mask materialised) and cached decoding
(``cache`` + ``input_pos``: keys written at those slots; queries see slots <= their own).
``start`` (B,) marks the first real slot of each row for left-padded ragged batches: positions
count from there and earlier slots are masked, so a row gives what it would give alone.

Learned memory tokens (``num_memory_tokens``) sit in front of every sequence: internally they
occupy the first M rows/cache slots and tokens follow, so slot s of the caller is row M + s.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .attention import KVCache
from .block import Block
from .calls import call
from .context import Context, make_context, plan_steps
from .loss import auto_chunk_rows, linear_cross_entropy
from .norms import NORM_TYPES, make_norm
from .positional import (AbsolutePositionalEmbedding, AlibiBias, DynamicPositionBias, Polar, Rotary,
                         ScaledSinusoidalEmbedding, T5RelativeBias)
from .residual import InputReinjection, UNetSkips, depth_scaled_init_


def build_blocks(cfg: ModelConfig) -> tuple[list[tuple[bool, bool]], list[tuple[int, str]], list[int]]:
    """Group the sublayer pattern into blocks of [attention][feed-forward].

    An attention sublayer and the feed-forward after it share a block when they always run
    together in ``cfg.execute_order`` (the default, weight tying; a custom order may split them).
    Returns the blocks as (has_attn, has_ff); for each letter of ``cfg.layer_types`` the
    (block index, "attn" | "ff") it became, which weight converters use; and the block index of
    each execution step."""
    types, runs = cfg.layer_types, cfg.execute_order

    def paired(i: int) -> bool:  # attention i always directly followed by feed-forward i + 1, and vice versa
        if not (types[i] == "a" and i + 1 < len(types) and types[i + 1] == "f"):
            return False
        nxt = [runs[k + 1] if k + 1 < len(runs) else -1 for k, j in enumerate(runs) if j == i]
        prev = [runs[k - 1] if k else -1 for k, j in enumerate(runs) if j == i + 1]
        return all(j == i + 1 for j in nxt) and all(j == i for j in prev)

    blocks: list[tuple[bool, bool]] = []
    where: list[tuple[int, str]] = []
    i = 0
    while i < len(types):
        if paired(i):
            where += [(len(blocks), "attn"), (len(blocks), "ff")]
            blocks.append((True, True))
            i += 2
        else:
            where.append((len(blocks), "attn" if types[i] == "a" else "ff"))
            blocks.append((types[i] == "a", types[i] == "f"))
            i += 1
    # the second sublayer of a shared block runs with the first
    order = [where[j][0] for j in runs if where[j][1] == "attn" or not blocks[where[j][0]][0]]
    return blocks, where, order


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        M = self.num_memory_tokens = cfg.num_memory_tokens
        P = cfg.max_seq_len + M  # positions seen by relative encodings (memory tokens first)
        self.token_emb = nn.Embedding(cfg.padded_vocab, cfg.dim)
        self.pos_emb = None
        if cfg.token_pos_emb == "absolute":
            self.pos_emb = AbsolutePositionalEmbedding(cfg.dim, cfg.max_seq_len, l2norm=cfg.l2norm_embed)
        elif cfg.token_pos_emb == "scaled_sinusoidal":
            self.pos_emb = ScaledSinusoidalEmbedding(cfg.dim)
        self.rotary = None
        if cfg.pos_emb == "rotary":
            self.rotary = Rotary(cfg.rotary_emb_dim, P, cfg.rotary_base, cfg.rotary_interpolation_factor,
                                 cfg.rotary_base_rescale_factor, cfg.rotary_xpos, cfg.rotary_xpos_scale_base,
                                 head_dim=cfg.head_dim)
        # polar positions (PoPE): a table of phases per position, like rotary's
        self.polar = Polar(cfg.head_dim, cfg.heads, P, cfg.polar_bias_uniform_init) if cfg.pos_emb == "polar" else None
        self.pos_bias = None
        if cfg.pos_bias == "alibi":
            self.pos_bias = AlibiBias(cfg.alibi_num_heads or cfg.heads, cfg.heads, cfg.alibi_slopes)
        elif cfg.pos_bias == "t5":
            self.pos_bias = T5RelativeBias(cfg.heads, cfg.head_dim**0.5, cfg.rel_pos_num_buckets, cfg.rel_pos_max_distance)
        elif cfg.pos_bias == "dynamic":
            self.pos_bias = DynamicPositionBias(cfg.dim // 4, cfg.heads, P, cfg.dynamic_pos_bias_mlp_depth,
                                                cfg.dynamic_pos_bias_log_distance, cfg.dynamic_pos_bias_norm)
        # post-embedding LayerNorm (BLOOM; Dettmers et al. 2021), a plain LayerNorm as x-transformers
        self.post_emb_norm = nn.LayerNorm(cfg.dim, bias=False) if cfg.post_emb_norm else None
        self.emb_dropout = nn.Dropout(cfg.emb_dropout)
        # memory tokens (Burtsev et al. 2020, Memory Transformer): learned rows in front of the sequence
        self.memory_tokens = nn.Parameter(torch.randn(M, cfg.dim)) if M else None
        # execution order over blocks (weight_tie_layers, layers_execute_order: blocks run more than once)
        specs, self.layer_map, self.order = build_blocks(cfg)
        first_attn = next((i for i, (a, _) in enumerate(specs) if a), -1)
        # per-layer values (model.per_layer): each block gets the config of its own sublayers
        ai = [sum(s[0] for s in specs[:i]) if a else -1 for i, (a, _) in enumerate(specs)]
        fi = [sum(s[1] for s in specs[:i]) if f else -1 for i, (_, f) in enumerate(specs)]
        learned_mix = cfg.add_value_residual and cfg.learned_value_residual_mix  # else a fixed 0.5
        self.blocks = nn.ModuleList(Block(cfg.for_block(ai[i], fi[i]), a, f,
                                          value_mix=learned_mix and a and i != first_attn)
                                    for i, (a, f) in enumerate(specs))
        self.n_branches = len(cfg.execute_order)
        self._steps, self._first_attn_step = plan_steps(specs, self.order)
        self.reinject = InputReinjection(cfg) if cfg.reinject_input else None
        self.unet = UNetSkips(cfg, self.layer_map) if cfg.unet_skips else None
        # post-norm stacks end with a normalised residual already; x-transformers has no final norm there
        self.norm = make_norm(cfg) if cfg.pre_norm else None
        self.head = None if cfg.tie_embedding else nn.Linear(cfg.dim, cfg.padded_vocab, bias=False)
        # tied logits are scaled by dim**-0.5, as x-transformers does
        self.tied_scale = cfg.dim**-0.5
        self.needs_mask = (cfg.needs_scores or cfg.max_attend_past is not None or self.pos_bias is not None
                           or cfg.attn_num_mem_kv > 0 or cfg.attn_add_zero_kv)
        self.kv_prefix = cfg.attn_num_mem_kv + int(cfg.attn_add_zero_kv)
        # options that need per-slot index tensors (masks, memory, shifts, absolute positions)
        # take the general path even for an int input_pos
        self._lean_decode = not (self.needs_mask or M or cfg.shift_tokens or self.pos_emb is not None
                                 or cfg.mv_split_residual)
        if not self.token_emb.weight.is_meta:  # a model built on the meta device is initialised by its loader
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, norm gains at 1, and the residual output
        projections scaled by 1/sqrt(number of residual branches) so the residual stream's
        variance does not grow with depth. Option parameters start where their papers start
        them (identity talking heads, unit scales, N(0, 1) memory)."""
        cfg, std = self.cfg, self.cfg.init_std
        g = generator
        out_std = std / math.sqrt(self.n_branches)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                s = out_std if name.endswith(("attn.out", "ff.proj_out")) else std
                # drawn in logical (row-major) order, so the same seed gives the same weights
                # whatever the storage layout (see generation/cpu_layout.py)
                w = m.weight
                w.copy_(torch.empty(w.shape, device=w.device, dtype=w.dtype).normal_(0.0, s, generator=g))
                if m.bias is not None:
                    m.bias.zero_()
                if name.endswith("value_gate") or (cfg.zero_init_branch_output and name.endswith(("attn.out", "ff.proj_out"))):
                    m.weight.zero_()  # gates start at sigmoid(0) = 0.5; zero-init branches (Bachlechner et al. 2020, ReZero)
            elif isinstance(m, nn.Embedding):
                s = std
                if cfg.l2norm_embed and name in ("token_emb", "pos_emb.emb"):
                    s = 1e-5  # BlinkDL's small init for normalised embeddings, as x-transformers
                elif self.pos_emb is not None and m is getattr(self.pos_emb, "emb", None):
                    s = std / self.pos_emb.scale
                m.weight.normal_(0.0, s, generator=g)
            elif isinstance(m, nn.GRUCell):
                bound = cfg.dim**-0.5
                for p in m.parameters():
                    p.uniform_(-bound, bound, generator=g)
            elif isinstance(m, NORM_TYPES) and getattr(m, "weight", None) is not None:
                m.weight.fill_(1.0)
        for name, p in self.named_parameters():
            if name.endswith(("mem_k", "mem_v")) or name == "memory_tokens":
                p.normal_(0.0, 1.0, generator=g)
            elif name.endswith(("head_scale", "residual_scale")):
                p.fill_(1.0)
            elif name.endswith("talking_heads"):
                p.copy_(torch.eye(p.shape[0]))
        if isinstance(self.pos_emb, ScaledSinusoidalEmbedding):
            self.pos_emb.scale.fill_(cfg.dim**-0.5)
        if cfg.depth_scale_residual and not cfg.zero_init_branch_output:
            depth_scaled_init_(self, g)
        # option modules that start somewhere special say so themselves, after the generic pass:
        # ``init_option_(generator)`` on any submodule (its paper's init, beside its code)
        for m in self.modules():
            if m is not self and hasattr(m, "init_option_"):
                m.init_option_(g)

    def new_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> KVCache:
        """A preallocated KV cache for ``batch_size`` rows and ``max_len`` slots."""
        p = self.token_emb.weight
        cfg = self.cfg
        max_len = max_len or cfg.max_seq_len
        if max_len > cfg.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds the model context max_seq_len={cfg.max_seq_len}")
        s = cfg.shift_tokens
        return KVCache(cfg.n_attn_calls, batch_size, cfg.n_kv_heads, max_len, cfg.head_dim,
                       device=device or p.device, dtype=dtype or p.dtype, prefix=self.num_memory_tokens,
                       shift_layers=self.n_branches if s else 0, shift_dim=s * (cfg.dim // (s + 1)),
                       running_layers=self.n_branches if cfg.mv_split_residual else 0, running_dim=2 * cfg.dim + 1,
                       kv_prefix=self.kv_prefix, key_dim=cfg.head_dim * (2 if self.polar is not None else 1),
                       value_dim=cfg.value_head_dim)

    def forward(self, ids: torch.Tensor, input_pos: torch.Tensor | int | None = None,
                cache: KVCache | None = None, start: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None, return_embeddings: bool = False,
                return_attn_z_loss: bool = False, attn_z_loss_weight: float = 1e-4,
                targets: torch.Tensor | None = None, loss_chunk: int | None = None, ignore_index: int = -100, *,
                pos: torch.Tensor | None = None, embed_pos: torch.Tensor | None = None,
                sum_embeds: torch.Tensor | None = None, prepend_embeds: torch.Tensor | None = None,
                attn_record: list | None = None):
        """ids (B, T) -> logits (B, T, V), or final embeddings (B, T, C), or with ``targets``
        the mean next-token cross-entropy (see ``loss``).

        input_pos: the cache slots of these tokens (default 0..T-1); required with ``cache``.
        A (T,) tensor keeps every shape static (compiled decoding: attention reads the whole
        preallocated cache, stale slots masked). A Python int p means slots p..p+T-1 and that
        nothing past them is in use (eager decoding): attention reads only slots [0, p+T), and
        the common case (no left padding, no mask-needing option) runs on views and slice
        copies, with no index tensors built per step.
        start: (B,) first real slot per row (left padding); None means 0 for every row.
        key_mask: (B, T) booleans, False hides that token from later queries (no cache only;
        used by Forgetful Causal Masking). Each token always sees itself.
        return_attn_z_loss: also return the attention z-loss (ST-MoE, Zoph et al. 2022; PaLM):
        the log-sum-exp of every query's attention logits summed over layers, squared, summed
        over heads, averaged over rows and positions, times ``attn_z_loss_weight`` (the
        x-transformers definition). Returns (output, z_loss).
        targets: (B, T) token ids to score the outputs against (``ignore_index`` rows skipped);
        the output is then the fp32 mean loss, computed in chunks of ``loss_chunk`` rows without
        the full logits (None: chunked only for vocabularies of 8192 and more; 0: never).
        With a cache, key_mask (B, n) covers cache slots 0..n-1 (n >= the last new slot + 1).
        Keyword-only inputs of the x-transformers facade (model/facade_forward.py):
        prepend_embeds (B, P, C): rows in front of the tokens' rows (after the embedding, before
        dropout; ``input_pos`` then covers P + T rows). pos (R,) | (B, R): positions of the rows
        (rotary, position bias) instead of the slots' own; embed_pos: positions of the ids for the
        absolute embedding (default: their rows' positions). sum_embeds (B, T, C): added to the
        token embeddings before the post-embedding norm. attn_record: a list that receives an
        ``AttnRecord`` per attention call (attention maps, QK-clip).
        """
        B, T = ids.shape
        if cache is not None and input_pos is None:
            raise ValueError("cached forward needs input_pos (the cache slots of these tokens)")
        extras = not (pos is None and embed_pos is None and sum_embeds is None and prepend_embeds is None)
        R = T + (prepend_embeds.shape[1] if prepend_embeds is not None else 0)  # rows
        kv_len = None
        if isinstance(input_pos, int):
            if cache is None:
                raise ValueError("an int input_pos is for cached forwards; leave it None without a cache")
            if input_pos < 0 or input_pos + R > cache.max_len:
                raise ValueError(f"slots {input_pos}..{input_pos + R - 1} are outside the cache's {cache.max_len} slots")
            kv_len = input_pos + R
            if (self._lean_decode and start is None and key_mask is None and not extras
                    and (T == 1 or input_pos == 0)):
                return self._lean_forward(ids, input_pos, cache, return_embeddings, return_attn_z_loss,
                                          attn_z_loss_weight, targets, loss_chunk, ignore_index, attn_record)
            input_pos = torch.arange(input_pos, kv_len, device=ids.device)
        if input_pos is None:
            input_pos = torch.arange(R, device=ids.device)
        positions = input_pos if start is None else (input_pos[None, :] - start[:, None]).clamp(min=0)  # (R,) | (B, R)
        if pos is not None:
            positions = pos

        x = self._embed(ids, positions[..., R - T:] if embed_pos is None else embed_pos, sum_embeds, prepend_embeds)
        M = self.num_memory_tokens
        slots = input_pos
        if M:
            x = torch.cat((self.memory_tokens.to(x.dtype)[None].expand(B, -1, -1), x), dim=1)  # (B, M+T, C)
            mem = torch.arange(M, device=ids.device)
            slots = torch.cat((mem, input_pos + M))
            positions = (torch.cat((mem, positions + M)) if positions.dim() == 1
                         else torch.cat((mem[None].expand(B, -1), positions + M), dim=1))
        ctx = make_context(self, slots, positions, start, cache, key_mask, kv_len)
        x = self._blocks(x, ctx, return_attn_z_loss, attn_record)
        if M:
            x = x[:, M:]
        return self._finish(x, ctx, return_embeddings, return_attn_z_loss, attn_z_loss_weight, targets, loss_chunk,
                            ignore_index)

    def _lean_forward(self, ids, p: int, cache: KVCache, return_embeddings: bool, return_attn_z_loss: bool,
                      attn_z_loss_weight: float, targets, loss_chunk, ignore_index, attn_record=None):
        """The eager cached step without index tensors: tokens at slots p..p+T-1 of every row
        (T == 1, or a prefill from slot 0), no memory tokens, no mask-needing option."""
        T = ids.shape[1]
        x = self._embed(ids, None)
        qk_pos = self.rotary or self.polar
        rope = qk_pos.table_range(p, T) if qk_pos is not None else None
        ctx = Context(self._steps, self._first_attn_step, rope=rope, cache=cache)
        ctx.slot0, ctx.kv_end, ctx.causal = p, p + T, T > 1
        x = self._blocks(x, ctx, return_attn_z_loss, attn_record)
        return self._finish(x, ctx, return_embeddings, return_attn_z_loss, attn_z_loss_weight, targets, loss_chunk,
                            ignore_index)

    def _embed(self, ids, positions, sum_embeds=None, prepend_embeds=None):
        """ids (B, T) -> (B, T, C): token embedding, absolute positions (when the model has them),
        the optional post-embedding norm and dropout (with the facade's extra embeddings added
        before the norm, and its prepended rows (B, P, C) put in front after it)."""
        x = self.token_emb(ids)
        if self.cfg.l2norm_embed:
            # l2-normalised embeddings (Nguyen & Chiang 2018, FixNorm), paired with a tiny init
            x = F.normalize(x, dim=-1)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        if sum_embeds is not None:
            x = x + sum_embeds.to(x.dtype)
        if self.post_emb_norm is not None:
            x = self.post_emb_norm(x)
        if prepend_embeds is not None:
            x = torch.cat((prepend_embeds.to(x.dtype), x), dim=1)  # (B, P + T, C)
        if self.cfg.emb_dropout and self.training:
            x = self.emb_dropout(x)
        return x

    def _blocks(self, x, ctx: Context, return_attn_z_loss: bool, attn_record: list | None = None):
        if return_attn_z_loss:
            ctx.z_lse = []
        ctx.attn = attn_record
        blocks = list(self.blocks)  # plain list indexing: ModuleList.__getitem__ costs a few us per call
        if self.reinject is not None:
            ctx.inject = self.reinject(x)
        unet, skips = self.unet, {}
        for step, i in enumerate(self.order):
            if unet is not None:
                x = unet(x, step, skips)
            x = call(blocks[i], x, ctx, step)
        return x

    def _finish(self, x, ctx: Context, return_embeddings: bool, return_attn_z_loss: bool, attn_z_loss_weight: float,
                targets=None, loss_chunk=None, ignore_index=-100):
        """Output soft-clamp, final norm, logits (or embeddings, or the loss) and the z-loss."""
        M = self.num_memory_tokens
        if self.cfg.softclamp_output:
            # soft-cap the residual stream before the final norm (Gemma 2)
            v = self.cfg.softclamp_output_value
            x = torch.tanh(x / v) * v
        if self.norm is not None:
            x = call(self.norm, x)
        if targets is not None:
            out = self.loss(x, targets, loss_chunk, ignore_index)
        else:
            out = x if return_embeddings else self.logits(x)
        if return_attn_z_loss:
            lse = torch.stack(ctx.z_lse).sum(dim=0)[..., M:]  # (B, H, T): summed over layers
            return out, lse.square().sum(dim=1).mean() * attn_z_loss_weight
        return out

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final embeddings (..., C) -> logits (..., vocab_size)."""
        logits = call(self.head, x) if self.head is not None else (x @ self.token_emb.weight.t()) * self.tied_scale
        if self.cfg.padded_vocab != self.cfg.vocab_size:
            logits = logits[..., : self.cfg.vocab_size]
        return logits

    def loss(self, x: torch.Tensor, targets: torch.Tensor, chunk: int | None = None,
             ignore_index: int = -100) -> torch.Tensor:
        """Mean cross-entropy (fp32) of the logits of final embeddings x (..., C) against targets
        (...). ``chunk`` rows at a time without materialising the logits (model/loss.py); None
        picks by vocabulary size, 0 computes the full logits and calls F.cross_entropy."""
        rows = auto_chunk_rows(self.cfg.padded_vocab) if chunk is None else chunk
        if rows == 0:
            return F.cross_entropy(self.logits(x).float().flatten(0, -2), targets.flatten(), ignore_index=ignore_index)
        w, scale = (self.head.weight, 1.0) if self.head is not None else (self.token_emb.weight, self.tied_scale)
        return linear_cross_entropy(x, w[: self.cfg.vocab_size], targets, scale, rows, ignore_index)

    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding:
            n -= self.token_emb.weight.numel()
            if isinstance(self.pos_emb, AbsolutePositionalEmbedding):
                n -= self.pos_emb.emb.weight.numel()
        return n

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

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, ModelConfig
from .attention import Attention, KVCache
from .block import Block
from .calls import call
from .context import Context, make_context, plan_steps
from .embedding import (MixtureOfSoftmax, deep_embed_scales, extra_embeddings, frac_gradient, next_embed_head,
                        sigsoftmax)
from .init import RESIDUAL_OUTPUTS, draw_linear_, embedding_std, zeroes_query, zeroes_residual_outputs
from .loss import auto_chunk_rows, check_reduction, linear_cross_entropy
from .norms import NORM_TYPES, make_norm
from .positional import (AbsolutePositionalEmbedding, AlibiBias, DynamicPositionBias, Polar, Rotary,
                         ScaledSinusoidalEmbedding, T5RelativeBias)
from .positional_bias import forget_state_shape
from .residual import InputReinjection, UNetSkips, depth_scaled_init_
from .streams import Streams, make_routes


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
    def __init__(self, cfg: ModelConfig, *, token_emb: nn.Module | None = None, to_logits: nn.Module | None = None):
        """``token_emb`` / ``to_logits``: Python modules replacing the token embedding (ids (B, T)
        -> (B, T, E)) or the logits head ((B, T, C) -> logits); the config records that they
        exist (``custom_token_emb`` / ``custom_to_logits``), so it cannot rebuild the model alone."""
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        for name, module, flag in (("token_emb", token_emb, cfg.custom_token_emb),
                                   ("to_logits", to_logits, cfg.custom_to_logits)):
            if flag != (module is not None):
                raise ConfigError(f"model.custom_{name}={flag} but {name} is {'missing' if flag else 'given'}: a "
                                  f"custom {name} is a Python module that a config cannot hold, so arlm runs "
                                  f"(train, generate, evaluate) cannot rebuild this model; build it in Python "
                                  f"with TransformerWrapper({name}=...)")
        M = self.num_memory_tokens = cfg.num_memory_tokens
        P = cfg.max_seq_len + M  # positions seen by relative encodings (memory tokens first)
        E = cfg.embed_dim
        self.token_emb = token_emb if token_emb is not None else nn.Embedding(cfg.padded_vocab, E)
        self.pos_emb = None
        if cfg.token_pos_emb == "absolute":
            self.pos_emb = AbsolutePositionalEmbedding(E, cfg.max_seq_len, l2norm=cfg.l2norm_embed)
        elif cfg.token_pos_emb == "scaled_sinusoidal":
            self.pos_emb = ScaledSinusoidalEmbedding(E)
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
        self.post_emb_norm = nn.LayerNorm(E, bias=False) if cfg.post_emb_norm else None
        # extra tables (embed_num_tokens), fed through the facade's forward(embed_ids=...)
        self.embeds = extra_embeddings(cfg.embed_num_tokens, E)
        self.emb_dropout = nn.Dropout(cfg.emb_dropout)
        # embeddings narrower (or wider) than the model (ALBERT's factorised embedding, Lan et al. 2019)
        self.project_emb = nn.Linear(E, cfg.dim) if E != cfg.dim else None
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
                                          value_mix=learned_mix and a and i != first_attn,
                                          route=make_routes(cfg, i, self.layer_map))
                                    for i, (a, f) in enumerate(specs))
        # several residual streams (model/streams.py): (B, T, C) <-> (B, T, N, C) around the blocks
        self.streams = Streams(cfg) if cfg.multi_stream else None
        self.n_branches = len(cfg.execute_order)
        L = cfg.ff_deep_embed_depth or cfg.depth
        self.ff_deep_embed = nn.Parameter(torch.ones(cfg.vocab_size, L, cfg.dim)) if cfg.ff_deep_embed else None
        self._ff_steps = [step for step, b in enumerate(self.order) if specs[b][1]]
        self._steps, self._first_attn_step = plan_steps(specs, self.order)
        self.reinject = InputReinjection(cfg) if cfg.reinject_input else None
        self.unet = UNetSkips(cfg, self.layer_map) if cfg.unet_skips else None
        # post-norm (and pre-and-post-norm) stacks end with a normalised residual already;
        # x-transformers has no final norm there, nor where pre_norm_has_final_norm=False;
        # gated multi-residual, post-normed per stream, keeps it (as x-transformers)
        self.norm = (make_norm(cfg) if (cfg.pre_norm and cfg.pre_norm_has_final_norm and not cfg.pre_and_post_norm)
                     or cfg.gated_multi_residual else None)
        self._init_head(to_logits)
        self.needs_mask = (cfg.needs_scores or cfg.max_attend_past is not None or self.pos_bias is not None
                           or cfg.attn_num_mem_kv > 0 or cfg.attn_add_zero_kv or cfg.layer_pos_bias)
        self.kv_prefix = cfg.attn_num_mem_kv + int(cfg.attn_add_zero_kv)
        # options that need per-slot index tensors (masks, memory, shifts, absolute positions)
        # take the general path even for an int input_pos
        self._lean_decode = not (self.needs_mask or M or cfg.shift_tokens or self.pos_emb is not None
                                 or cfg.mv_split_residual)
        if not next(self.parameters()).is_meta:  # a model built on the meta device is initialised by its loader
            self.init_weights()

    def _init_head(self, to_logits: nn.Module | None) -> None:
        """The logits head: one linear layer (default), the tied embedding, ``num_output_heads``
        linear layers, a custom module, or none (``return_only_embed``); optionally a mixture of
        softmaxes on top and a next-embedding predictor beside it."""
        cfg = self.cfg
        rows = cfg.padded_vocab if cfg.logits_dim is None else cfg.logits_dim
        self.head = self.output_heads = None
        if to_logits is not None:
            self.head = to_logits
        elif cfg.num_output_heads > 1:
            self.output_heads = nn.ModuleList(nn.Linear(cfg.dim, rows, bias=False) for _ in range(cfg.num_output_heads))
        elif not (cfg.tie_embedding or cfg.return_only_embed):
            self.head = nn.Linear(cfg.dim, rows, bias=False)
        # tied logits are scaled by dim**-0.5 unless told otherwise, as x-transformers does
        self.tied_scale = cfg.tie_embedding_scale if cfg.tie_embedding_scale is not None else cfg.dim**-0.5
        self.mixture = MixtureOfSoftmax(cfg.dim, cfg.mixture_of_softmax_k) if cfg.mixture_of_softmax else None
        self.to_next_embed_pred = next_embed_head(cfg.dim) if cfg.add_continuous_pred_head else None
        # the loss can stream the head's weight in chunks only when the logits are one linear map
        self._linear_head = (to_logits is None and self.output_heads is None and self.mixture is None
                             and not (cfg.sigsoftmax_logits or cfg.return_only_embed or cfg.squeeze_out_last_dim))

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """The ``model.init`` scheme (model/init.py: N(0, std) weights with a per-layer std and zero
        biases, or ``torch``'s uniform weights and biases; the residual output projections at zero
        (``scaled_zero``, what the default ``auto`` is for narrow models) or scaled by 1/sqrt(number
        of residual branches); the query projections at zero under ``torch_zero_query``, what
        ``auto`` is for wide ones), norm gains at 1. Option parameters start where their papers start
        them (identity talking heads, unit scales, N(0, 1) memory). Deterministic from
        ``generator`` (or the global RNG)."""
        cfg = self.cfg
        g = generator
        zero_out = zeroes_residual_outputs(cfg)
        # custom token_emb / to_logits modules keep the weights they came with
        custom = {id(sub) for root, on in ((self.token_emb, cfg.custom_token_emb), (self.head, cfg.custom_to_logits))
                  if on for sub in root.modules()}
        for name, m in self.named_modules():
            if id(m) in custom:
                continue
            if isinstance(m, nn.Linear):
                draw_linear_(cfg, name, m, self.n_branches, g)
                if name.endswith("value_gate") or (zero_out and name.endswith(RESIDUAL_OUTPUTS)):
                    m.weight.zero_()  # gates start at sigmoid(0) = 0.5; zero-init branches (Bachlechner et al. 2020, ReZero)
                    if m.bias is not None:
                        m.bias.zero_()  # (drawn under model.init: torch) a zero branch outputs zero
            elif isinstance(m, nn.Embedding):
                s = embedding_std(cfg, m.embedding_dim)
                if cfg.l2norm_embed and name in ("token_emb", "pos_emb.emb"):
                    s = 1e-5  # BlinkDL's small init for normalised embeddings, as x-transformers
                elif self.pos_emb is not None and m is getattr(self.pos_emb, "emb", None):
                    s /= self.pos_emb.scale
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
            elif name.endswith(("head_scale", "residual_scale")) or name == "ff_deep_embed":
                p.fill_(1.0)
            elif name.endswith("talking_heads"):
                p.copy_(torch.eye(p.shape[0]))
        if isinstance(self.pos_emb, ScaledSinusoidalEmbedding):
            self.pos_emb.scale.fill_(cfg.embed_dim**-0.5)
        if cfg.depth_scale_residual and not cfg.zero_init_branch_output:  # an explicit option wins over model.init
            depth_scaled_init_(self, g)
        # option modules that start somewhere special say so themselves, after the generic pass:
        # ``init_option_(generator)`` on any submodule (its paper's init, beside its code)
        for m in self.modules():
            if m is not self and hasattr(m, "init_option_"):
                m.init_option_(g)
        if zeroes_query(cfg):  # model.init torch_zero_query (auto on wide models): uniform attention at step 0
            for m in self.modules():
                if isinstance(m, Attention):
                    m.zero_query_()

    def new_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> KVCache:
        """A preallocated KV cache for ``batch_size`` rows and ``max_len`` slots."""
        p = next(self.parameters())
        cfg = self.cfg
        max_len = max_len or cfg.max_seq_len
        if max_len > cfg.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds the model context max_seq_len={cfg.max_seq_len}")
        s = cfg.shift_tokens
        heads, key_dim, value_dim = cfg.n_kv_heads, cfg.head_dim * (2 if self.polar is not None else 1), cfg.value_head_dim
        if cfg.latent_kv_cache:  # multi-head latent attention: one latent row per token, no values
            heads, key_dim, value_dim = 1, cfg.latent_cache_dim, 0
        return KVCache(cfg.n_attn_calls, batch_size, heads, max_len, cfg.head_dim,
                       device=device or p.device, dtype=dtype or p.dtype, prefix=self.num_memory_tokens,
                       shift_layers=self.n_branches if s else 0, shift_dim=s * (cfg.dim // (s + 1)),
                       running_layers=self.n_branches if cfg.mv_split_residual else 0, running_dim=2 * cfg.dim + 1,
                       kv_prefix=self.kv_prefix, key_dim=key_dim, value_dim=value_dim, latent=cfg.latent_kv_cache,
                       forget_shape=forget_state_shape(cfg, self.num_memory_tokens + max_len),
                       select=cfg.attn_selective)

    def forward(self, ids: torch.Tensor, input_pos: torch.Tensor | int | None = None,
                cache: KVCache | None = None, start: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None, return_embeddings: bool = False,
                return_attn_z_loss: bool = False, attn_z_loss_weight: float = 1e-4,
                targets: torch.Tensor | None = None, loss_chunk: int | None = None, ignore_index: int = -100,
                loss_reduction: str = "mean", *,
                pos: torch.Tensor | None = None, embed_pos: torch.Tensor | None = None,
                sum_embeds: torch.Tensor | None = None, prepend_embeds: torch.Tensor | None = None,
                attn_record: list | None = None, doc_ids: torch.Tensor | None = None):
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
        over heads, averaged over rows and positions (memory tokens' included), times
        ``attn_z_loss_weight`` (the x-transformers definition). Returns (output, z_loss).
        targets: (B, T) token ids to score the outputs against (``ignore_index`` rows skipped);
        the output is then the fp32 mean loss (``loss_reduction="sum"``: the summed loss), computed
        in chunks of ``loss_chunk`` rows without the full logits (None: chunked only for
        vocabularies of 8192 and more; 0: never).
        With a cache, key_mask (B, n) covers cache slots 0..n-1 (n >= the last new slot + 1).
        Keyword-only inputs of the x-transformers facade (model/facade_forward.py):
        prepend_embeds (B, P, C): rows in front of the tokens' rows (after the embedding, before
        dropout; ``input_pos`` then covers P + T rows). pos (R,) | (B, R): positions of the rows
        (rotary, position bias) instead of the slots' own; embed_pos: positions of the ids for the
        absolute embedding (default: their rows' positions). sum_embeds (B, T, C): added to the
        token embeddings before the post-embedding norm. attn_record: a list that receives an
        ``AttnRecord`` per attention call (attention maps, QK-clip).
        doc_ids (B, T): for packed documents (data.document_mask), the document of each token;
        a token attends only to its own document (pass each document's positions as ``pos``).
        No cache, memory tokens or prepend_embeds.
        """
        B, T = ids.shape
        if doc_ids is not None and (cache is not None or self.num_memory_tokens or prepend_embeds is not None):
            raise ValueError("doc_ids (document masking) is for uncached forwards without memory tokens or "
                             "prepend_embeds")
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
                                          attn_z_loss_weight, targets, loss_chunk, ignore_index, attn_record,
                                          loss_reduction)
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
        ctx = make_context(self, slots, positions, start, cache, key_mask, kv_len, doc_ids)
        if self.ff_deep_embed is not None:
            ctx.ff_deep = deep_embed_scales(self.ff_deep_embed, ids, self._ff_steps, x.shape[1] - T)
        x = self._blocks(x, ctx, return_attn_z_loss, attn_record)
        if M:
            x = x[:, M:]
        return self._finish(x, ctx, return_embeddings, return_attn_z_loss, attn_z_loss_weight, targets, loss_chunk,
                            ignore_index, loss_reduction)

    def _lean_forward(self, ids, p: int, cache: KVCache, return_embeddings: bool, return_attn_z_loss: bool,
                      attn_z_loss_weight: float, targets, loss_chunk, ignore_index, attn_record=None,
                      loss_reduction="mean"):
        """The eager cached step without index tensors: tokens at slots p..p+T-1 of every row
        (T == 1, or a prefill from slot 0), no memory tokens, no mask-needing option."""
        T = ids.shape[1]
        x = self._embed(ids, None)
        qk_pos = self.rotary or self.polar
        rope = qk_pos.table_range(p, T) if qk_pos is not None else None
        ctx = Context(self._steps, self._first_attn_step, rope=rope, cache=cache)
        ctx.slot0, ctx.kv_end, ctx.causal = p, p + T, T > 1
        if self.ff_deep_embed is not None:
            ctx.ff_deep = deep_embed_scales(self.ff_deep_embed, ids, self._ff_steps, 0)
        x = self._blocks(x, ctx, return_attn_z_loss, attn_record)
        return self._finish(x, ctx, return_embeddings, return_attn_z_loss, attn_z_loss_weight, targets, loss_chunk,
                            ignore_index, loss_reduction)

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
        if self.cfg.emb_frac_gradient < 1.0 and torch.is_grad_enabled():
            x = frac_gradient(x, self.cfg.emb_frac_gradient)
        if self.project_emb is not None:
            x = call(self.project_emb, x)  # (B, T, E) -> (B, T, C)
        return x

    def _blocks(self, x, ctx: Context, return_attn_z_loss: bool, attn_record: list | None = None):
        if return_attn_z_loss:
            ctx.z_lse = []
        ctx.attn = attn_record
        blocks = list(self.blocks)  # plain list indexing: ModuleList.__getitem__ costs a few us per call
        if self.reinject is not None:
            ctx.inject = self.reinject(x)
        if self.streams is not None:
            x = self.streams(x)  # (B, T, N, C)
        unet, skips = self.unet, {}
        hiddens = getattr(attn_record, "hiddens", None)  # the facade's: each attention block's input
        for step, i in enumerate(self.order):
            if unet is not None:
                x = unet(x, step, skips)
            if hiddens is not None and blocks[i].attn is not None:
                hiddens.append(x)
            x = call(blocks[i], x, ctx, step)
        return x

    def _finish(self, x, ctx: Context, return_embeddings: bool, return_attn_z_loss: bool, attn_z_loss_weight: float,
                targets=None, loss_chunk=None, ignore_index=-100, loss_reduction="mean"):
        """Output soft-clamp, final norm, logits (or embeddings, or the loss) and the z-loss."""
        if self.cfg.softclamp_output:
            # soft-cap the residual stream before the final norm (Gemma 2)
            v = self.cfg.softclamp_output_value
            x = torch.tanh(x / v) * v
        if self.streams is not None:
            x = self.streams.reduce(x)  # after the soft-cap, before the final norm, as x-transformers
        if self.norm is not None:
            x = call(self.norm, x)
        if targets is not None:
            out = self.loss(x, targets, loss_chunk, ignore_index, loss_reduction)
        else:
            out = x if return_embeddings else self.logits(x)
        if return_attn_z_loss:
            # (B, H, M + T) summed over layers: memory-token rows count too, as in x-transformers
            lse = torch.stack(ctx.z_lse).sum(dim=0)
            return out, lse.square().sum(dim=1).mean() * attn_z_loss_weight
        return out

    def logits(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Final embeddings (..., C) -> logits (..., V): V = vocab_size, or ``logits_dim``. With
        ``num_output_heads`` > 1 a tuple of logits, one per head (as x-transformers); with
        ``mixture_of_softmax`` log-probabilities; ``return_only_embed`` models return x itself."""
        cfg = self.cfg
        if self._linear_head:  # the default
            logits = call(self.head, x) if self.head is not None else (x @ self.token_emb.weight.t()) * self.tied_scale
            return logits[..., : cfg.n_logits] if cfg.padded_vocab != cfg.n_logits else logits
        if cfg.return_only_embed:
            return x
        if self.output_heads is not None:
            return tuple(self._head_out(self._one_head(head, x)) for head in self.output_heads)
        if self.mixture is not None:
            return self._head_out(self.mixture(x, lambda h: self._one_head(self.head, h)))
        return self._head_out(self._one_head(self.head, x))

    def _one_head(self, head, x: torch.Tensor) -> torch.Tensor:
        """One head's logits (sigsoftmax applied), before the mixture of softmaxes."""
        logits = call(head, x) if head is not None else (x @ self.token_emb.weight.t()) * self.tied_scale
        if logits.shape[-1] != self.cfg.n_logits and not self.cfg.custom_to_logits:
            logits = logits[..., : self.cfg.n_logits]  # padded vocabulary rows
        return sigsoftmax(logits) if self.cfg.sigsoftmax_logits else logits

    def _head_out(self, logits: torch.Tensor) -> torch.Tensor:
        if self.cfg.squeeze_out_last_dim and logits.shape[-1] == 1:
            return logits[..., 0]  # a single output (a regression head), as x-transformers
        return logits

    def loss(self, x: torch.Tensor, targets: torch.Tensor, chunk: int | None = None,
             ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy (fp32) of the logits of final embeddings x (..., C) against targets
        (...), the mean over scored rows or (``reduction="sum"``) their sum. ``chunk`` rows at a
        time without materialising the logits (model/loss.py); None picks by vocabulary size, 0
        computes the full logits and calls F.cross_entropy."""
        check_reduction(reduction)
        if not self._linear_head:
            if self.output_heads is not None or self.cfg.return_only_embed or self.cfg.squeeze_out_last_dim:
                raise ValueError("targets= needs one logits head over classes (this model has several heads, "
                                 "no head, or squeezed logits); compute the loss from its outputs")
            chunk = 0  # a mixture / sigsoftmax / custom head: the loss reads its full logits
        rows = auto_chunk_rows(self.cfg.padded_vocab) if chunk is None else chunk
        if rows == 0:
            return F.cross_entropy(self.logits(x).float().flatten(0, -2), targets.flatten(), ignore_index=ignore_index,
                                   reduction=reduction)
        w, scale = (self.head.weight, 1.0) if self.head is not None else (self.token_emb.weight, self.tied_scale)
        return linear_cross_entropy(x, w[: self.cfg.n_logits], targets, scale, rows, ignore_index, reduction)

    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding:  # lookup tables: no matmul
            n -= sum(p.numel() for p in self.token_emb.parameters())
            if isinstance(self.pos_emb, AbsolutePositionalEmbedding):
                n -= self.pos_emb.emb.weight.numel()
            if self.ff_deep_embed is not None:
                n -= self.ff_deep_embed.numel()
            if self.embeds is not None:
                n -= sum(p.numel() for p in self.embeds.parameters())
        return n

"""The residual block: an attention sublayer and/or a feed-forward sublayer, each a residual branch.

Dims: B batch, T time, C model dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .attention import Attention
from .calls import call
from .context import Context
from .feedforward import FeedForward
from .norms import LayerScale, make_norm
from .residual import MVSplitUpdate, orthogonal_update


class Block(nn.Module):
    """One attention sublayer and/or one feed-forward sublayer, each a residual branch.

    The default is pre-norm: x + attn(norm(x)), then x + ff(norm(x)). Options change the
    branch: post-norm (``pre_norm=False``, Vaswani et al. 2017: norm(x + f(x)), no final norm);
    pre- and post-norm (``pre_and_post_norm``: norm(x + f(norm(x))), no final norm; the norm
    placement of Keel, Chen & Wei 2026, and of x-transformers' looped LMs); sandwich norm (Ding et
    al. 2021, CogView: norm the branch output too); LayerScale (Touvron et al. 2021, CaiT: a
    learned per-channel gain on the branch output); GRU-gated residual (Parisotto et al. 2019), an
    orthogonal or a mean/variance split update (residual.py) instead of the sum; a learned
    residual scale; macaron half-step feed-forwards (Lu et al. 2019); token shifting (Peng,
    RWKV): part of each branch input comes from the previous ``shift_tokens`` positions.
    """

    def __init__(self, cfg: ModelConfig, attn: bool = True, ff: bool = True, value_mix: bool = False,
                 route: nn.ModuleDict | None = None):
        super().__init__()
        self.attn_norm = make_norm(cfg) if attn else None
        self.attn = Attention(cfg, value_mix) if attn else None
        self.ff_norm = make_norm(cfg) if ff else None
        self.ff = FeedForward(cfg) if ff else None
        # gated multi-residual reads through a normalising gate, so its branches have no pre-norm
        self.pre_norm = cfg.pre_norm and not cfg.gated_multi_residual
        self.layer_dropout = cfg.layer_dropout
        # constant branch output scales: macaron's half-step feed-forwards, x-transformers' numeric
        # depth_scale_residual / scale_residual
        self.attn_scale = cfg.branch_output_scale
        self.ff_scale = (0.5 if cfg.macaron else 1.0) * cfg.branch_output_scale
        self.residual_constant = cfg.scale_residual_constant
        self.shift = cfg.shift_tokens
        for name, on in (("attn", attn), ("ff", ff)):
            if not on:
                continue
            if cfg.sandwich_norm:
                setattr(self, f"{name}_post_norm", make_norm(cfg))
            if cfg.pre_norm and cfg.pre_and_post_norm:
                setattr(self, f"{name}_residual_norm", make_norm(cfg))
            if cfg.layerscale:
                setattr(self, f"{name}_layerscale", LayerScale(cfg.dim, cfg.layerscale_init_value))
            if cfg.gate_residual:
                setattr(self, f"{name}_gate", nn.GRUCell(cfg.dim, cfg.dim))
            if cfg.scale_residual:
                setattr(self, f"{name}_residual_scale", nn.Parameter(torch.ones(cfg.dim)))
            if cfg.mv_split_residual:
                setattr(self, f"{name}_mv_split", MVSplitUpdate(cfg))
        self.sandwich, self.gated, self.scaled = cfg.sandwich_norm, cfg.gate_residual, cfg.scale_residual
        self.orthog, self.mv_split = cfg.orthog_residual, cfg.mv_split_residual
        self.layerscale, self.pre_and_post = cfg.layerscale, cfg.pre_norm and cfg.pre_and_post_norm
        # several residual streams / layer integration: per-branch read and write (model/streams.py)
        self.route = route
        # the plain pre-norm sum, with nothing to decide per branch: derived from the block's own
        # switches above, plus the two inputs the context brings (reinjection, deep embeddings)
        self.plain = (self.pre_norm and route is None and not cfg.reinject_input and not cfg.ff_deep_embed
                      and not (self.sandwich or self.gated or self.scaled or self.orthog or self.mv_split
                               or self.layerscale or self.pre_and_post or self.shift or self.layer_dropout)
                      and self.attn_scale == self.ff_scale == self.residual_constant == 1.0)

    def forward(self, x: torch.Tensor, ctx: Context, step: int = 0) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C), or (B, T, N, C) with several residual streams (model/streams.py);
        ``step`` is this call's position in the execution order."""
        if self.plain:  # the common case, with nothing to decide per branch
            mods = self._modules  # a plain dict: no Module.__getattr__ per access
            attn, ff = mods.get("attn"), mods.get("ff")  # absent parts are plain None attributes
            if attn is not None:
                x = x + call(attn, call(mods["attn_norm"], x), ctx, step)
            if ff is not None:
                x = x + call(ff, call(mods["ff_norm"], x))
            return x
        if self.attn is not None:
            x = self._branch(x, ctx, step, "attn", lambda h: self.attn(h, ctx, step))
        if self.ff is not None:
            x = self._branch(x, ctx, step, "ff", self.ff)
        return x

    def _branch(self, x: torch.Tensor, ctx: Context, step: int, name: str, fn) -> torch.Tensor:
        norm = getattr(self, f"{name}_norm")
        residual, beta = x, None
        if self.route is not None:  # several residual streams / layer integration (model/streams.py)
            x, residual, beta = self.route[name].read(x, ctx, step, name)
        if ctx.inject is not None:  # reinject_input: the branch sees the stack's input again, the stream does not
            x = x + ctx.inject
        h = norm(x) if self.pre_norm else x
        if self.shift:
            h = self._shift_tokens(h, ctx, step, name)
        out = fn(h)
        if name == "ff" and ctx.ff_deep is not None and step in ctx.ff_deep:
            out = out * ctx.ff_deep[step]  # ff_deep_embed: a per-token multiplier (model/embedding.py)
        scale = self.ff_scale if name == "ff" else self.attn_scale
        if scale != 1.0:
            out = out * scale
        if self.layerscale:
            out = getattr(self, f"{name}_layerscale")(out)
        if self.sandwich:
            out = getattr(self, f"{name}_post_norm")(out)
        out = self._drop_path(out)
        if self.scaled:
            residual = residual * getattr(self, f"{name}_residual_scale")
        if self.residual_constant != 1.0:
            residual = residual * self.residual_constant
        if beta is not None:  # written to several residual streams (model/streams.py)
            x = self.route[name].write(out, residual, beta)
        elif self.gated:
            gru = getattr(self, f"{name}_gate")
            x = gru(out.reshape(-1, out.shape[-1]), residual.reshape(-1, out.shape[-1])).view_as(out)
        elif self.orthog:
            x = orthogonal_update(out, residual)
        elif self.mv_split:
            x = getattr(self, f"{name}_mv_split")(out, residual, ctx, step, name)
        else:
            x = residual + out
        if not self.pre_norm:
            return norm(x)
        return getattr(self, f"{name}_residual_norm")(x) if self.pre_and_post else x

    def _shift_tokens(self, h: torch.Tensor, ctx: Context, step: int, name: str) -> torch.Tensor:
        """Split the C features into shift+1 equal segments; segment i comes from i positions
        earlier (zeros before the sequence or from left padding), the remainder stays put.
        With a cache, earlier positions' features are kept in ``cache.shift`` at their slots, so
        a decode step sees exactly what a full forward sees."""
        s = self.shift
        B, T, C = h.shape
        f = C // (s + 1)
        moved = h[..., f:(s + 1) * f]  # (B, T, s*f) the segments that move
        if ctx.pad is not None:
            moved = moved.masked_fill(ctx.pad[..., None], 0.0)
        segs = [h[..., :f]]
        if ctx.cache is None:
            for i in range(1, s + 1):
                seg = moved[..., (i - 1) * f:i * f]
                segs.append(F.pad(seg, (0, 0, i, 0))[:, :T])  # shift down by i rows
        else:
            buf = ctx.shift_buffer(step, name)  # (B, S, s*f)
            buf.index_copy_(1, ctx.slots, moved.to(buf.dtype))
            for i in range(1, s + 1):
                src = ctx.slots - i  # (T,)
                seg = buf[:, src.clamp(min=0), (i - 1) * f:i * f].to(h.dtype)  # (B, T, f)
                segs.append(seg * (src >= 0)[None, :, None].to(h.dtype))
        segs.append(h[..., (s + 1) * f:])
        return torch.cat(segs, dim=-1)

    def _drop_path(self, branch: torch.Tensor) -> torch.Tensor:
        # Stochastic depth per row (Huang et al. 2016), rescaled so eval needs no correction.
        # x-transformers drops a layer for the whole batch without rescaling, which makes the
        # expected train-time output differ from eval; arlm does the unbiased version.
        if not self.training or self.layer_dropout == 0.0:
            return branch
        keep = 1.0 - self.layer_dropout
        mask = torch.empty(branch.shape[0], 1, 1, device=branch.device).bernoulli_(keep)
        return branch * mask / keep

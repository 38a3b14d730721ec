"""Residual-stream options beyond the plain sum: depth-scaled output init, input reinjection,
U-Net skips between the halves of the stack, and residual updates other than x + f(x)
(orthogonal, mean/variance split).

Dims: B batch, T time, C model dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .context import Context


def block_length(cfg: ModelConfig) -> int:
    """Sublayers per block of the standard layout (1 for custom layouts), as x-transformers counts
    depth for ``depth_scale_residual`` and ``unet_skips``."""
    if cfg.layers is not None or cfg.par_ratio is not None or cfg.sandwich_coef is not None:
        return 1
    return 1 if cfg.only_attn else 3 if cfg.macaron else 2


@torch.no_grad()
def depth_scaled_init_(model, generator: torch.Generator | None = None) -> None:
    """Branch output projections of block l (1-based, in layout order) start at
    N(0, 1 / (2 * fan_in * l)): deeper branches write smaller updates (OLMo's "mitchell" init;
    depth scaling as in Yang et al. 2023 / Noci et al. 2022)."""
    per_block = block_length(model.cfg)
    for i, (b, kind) in enumerate(model.layer_map):
        block = model.blocks[b]
        w = block.attn.out.weight if kind == "attn" else block.ff.proj_out.weight
        std = (2 * w.shape[1] * (i // per_block + 1)) ** -0.5
        # drawn in logical order, as init_weights does (storage may be transposed)
        w.copy_(torch.empty(w.shape, device=w.device, dtype=w.dtype).normal_(0.0, std, generator=generator))


class InputReinjection(nn.Module):
    """Input reinjection (Bai et al. 2019, Deep Equilibrium Models; used for depth extrapolation,
    e.g. Schwarzschild et al. 2021): every branch input gets W x0, a projection of the stack's
    input x0 (after embeddings and memory tokens); the residual stream itself does not. Optionally
    gated per token by sigmoid(w . x0)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.gate = nn.Linear(cfg.dim, 1, bias=False) if cfg.learned_reinject_input_gate else None

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 (B, T, C) -> the term added to every branch input (B, T, C)."""
        inject = self.proj(x0)
        if self.gate is not None:
            inject = inject * torch.sigmoid(self.gate(x0))
        return inject


class UNetSkips(nn.Module):
    """U-Net skips (Ronneberger et al. 2015; for transformers Bao et al. 2023, U-ViT): block j of
    the second half of a depth-D stack starts from W [h; x], where h is the input of the
    mirrored block D-1-j of the first half and x its own input; W (C, 2C) has no bias. Both
    are per-token, so the skips are causal and need nothing in the KV cache."""

    def __init__(self, cfg: ModelConfig, layer_map: list[tuple[int, str]]):
        super().__init__()
        per = block_length(cfg)
        D = cfg.depth
        # execution step (== block index: unet_skips needs the standard layout) -> source step
        self.source = {layer_map[j * per][0]: layer_map[(D - 1 - j) * per][0] for j in range(D) if j >= D / 2}
        self.keep = set(self.source.values())
        self.combines = nn.ModuleDict({str(t): nn.Linear(2 * cfg.dim, cfg.dim, bias=False) for t in self.source})

    def forward(self, x: torch.Tensor, step: int, saved: dict[int, torch.Tensor]) -> torch.Tensor:
        """x (B, T, C), the input of execution step ``step``; ``saved`` keeps first-half inputs."""
        if step in self.keep:
            saved[step] = x
        src = self.source.get(step)
        if src is None:
            return x
        return self.combines[str(step)](torch.cat((saved[src], x), dim=-1))


def orthogonal_update(out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Orthogonal residual update (Oh et al. 2025, "Revisiting Residual Connections: Orthogonal
    Updates"): add only the part of the branch output orthogonal to the residual stream, per
    token. (x-transformers projects each row's whole (T, C) sequence at once, which lets a token
    see later ones; per token it is causal.) Computed in fp32."""
    o, r = out.float(), residual.float()
    unit = F.normalize(r, dim=-1)
    return (r + o - (o * unit).sum(dim=-1, keepdim=True) * unit).to(out.dtype)


class MVSplitUpdate(nn.Module):
    """Mean/variance split residual update (Lu 2025): the branch output's mean over positions
    and its deviation from it enter the stream with separate per-channel scales,
    residual + beta * (out - mean(out)) + alpha * (mean(out) - mean(residual)),
    alpha and beta learned vectors, or (``mv_split_learned``) linear in mean(out).

    The means are causal: over the positions up to each token (memory tokens included, left
    padding excluded), where x-transformers averages over the whole sequence. A KV cache keeps
    the running sums of [out, residual, 1] at every slot (fp32), so a decode step continues
    them; chunks must cover contiguous ascending slots, as decoding writes them."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        C = cfg.dim
        self.learned = cfg.mv_split_learned
        self.init_alpha, self.init_beta = cfg.mv_split_init_alpha, cfg.mv_split_init_beta
        if self.learned:
            self.to_alpha, self.to_beta = nn.Linear(C, C), nn.Linear(C, C)
        else:
            self.alpha = nn.Parameter(torch.full((C,), self.init_alpha))
            self.beta = nn.Parameter(torch.full((C,), self.init_beta))

    @torch.no_grad()
    def init_option_(self, generator: torch.Generator | None = None) -> None:
        """The paper's start: alpha = init_alpha, beta = init_beta (zero weights, constant biases)."""
        if self.learned:
            for lin, v in ((self.to_alpha, self.init_alpha), (self.to_beta, self.init_beta)):
                lin.weight.zero_()
                lin.bias.fill_(v)
        else:
            self.alpha.fill_(self.init_alpha)
            self.beta.fill_(self.init_beta)

    def forward(self, out: torch.Tensor, residual: torch.Tensor, ctx: Context, step: int, kind: str) -> torch.Tensor:
        C = out.shape[-1]
        means = self._causal_means(torch.cat((out, residual), dim=-1), ctx, step, kind).to(out.dtype)
        mean_out, mean_res = means[..., :C], means[..., C:]  # (B, T, C) each
        alpha = self.to_alpha(mean_out) if self.learned else self.alpha
        beta = self.to_beta(mean_out) if self.learned else self.beta
        return residual + (out - mean_out) * beta + (mean_out - mean_res) * alpha

    @staticmethod
    def _causal_means(v: torch.Tensor, ctx: Context, step: int, kind: str) -> torch.Tensor:
        """v (B, T, F) -> (B, T, F) fp32 mean over the real positions up to each token."""
        B, T, _ = v.shape
        w = torch.ones(B, T, 1, device=v.device)
        if ctx.pad is not None:
            w = w.masked_fill(ctx.pad[..., None], 0.0)
        v = torch.cat((v.float(), w.new_ones(B, T, 1)), dim=-1) * w  # the last channel counts positions
        if ctx.cache is None:
            sums = v.cumsum(dim=1)
        else:
            buf = ctx.running_buffer(step, kind)  # (B, S, F + 1) running sums at every slot
            M, slots = ctx.cache.prefix, ctx.slots
            if M:  # memory tokens: the first M rows of every forward, at slots 0..M-1
                mem = v[:, :M].cumsum(dim=1)
                buf[:, :M] = mem
                v, slots = v[:, M:], slots[M:]
            first = slots[:1]
            prev = buf.index_select(1, (first - 1).clamp(min=0)) * (first > 0).to(buf.dtype)  # (B, 1, F + 1)
            # continue the running sums from the previous slot: the same additions, in the same
            # order, as one pass over the whole sequence
            sums = torch.cat((prev, v), dim=1).cumsum(dim=1)[:, 1:]
            buf.index_copy_(1, slots, sums)
            if M:
                sums = torch.cat((mem, sums), dim=1)
        return sums[..., :-1] / sums[..., -1:].clamp(min=1.0)

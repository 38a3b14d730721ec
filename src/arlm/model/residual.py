"""Residual-stream options beyond the plain sum: depth-scaled output init, input reinjection,
U-Net skips between the halves of the stack, and residual updates other than x + f(x)
(orthogonal, mean/variance split).

Dims: B batch, T time, C model dim.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig


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

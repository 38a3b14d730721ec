"""Residual-stream options beyond the plain sum: depth-scaled output init, input reinjection,
U-Net skips between the halves of the stack, and residual updates other than x + f(x)
(orthogonal, mean/variance split).

Dims: B batch, T time, C model dim.
"""

from __future__ import annotations

import torch

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

"""Weight initialisation schemes: ``model.init`` names one; ``Transformer.init_weights`` applies it.

Dims: C model width (``dim``), fan_in a linear layer's input features, L residual branches
(an attention and a feed-forward sublayer per block: 2 x depth).

- ``auto`` (the default): width-aware, by measurement: ``scaled_zero`` below width
  ``AUTO_TORCH_WIDTH``, ``torch_zero_query`` from there on (``scheme(cfg)`` says which).
- ``gpt2``: every weight N(0, init_std) (0.02, GPT-2's choice for width 768, small for narrow
  models), the residual output projections N(0, init_std / sqrt(L)) so the residual stream's
  variance does not grow with depth. arlm's only init before ``model.init`` existed.
- ``scaled``: linear weights N(0, 1/sqrt(fan_in)) (LeCun: unit-variance outputs for
  unit-variance inputs, at every width), the residual output projections again divided by
  sqrt(L) as gpt2 does, and the token embedding N(0, sqrt(2 / C)) (x-transformers' Kaiming init:
  rows of norm ~sqrt(2) whatever the width).
- ``scaled_zero``: ``scaled`` with the residual output projections at zero, so every block
  starts as the identity and the residual stream is the embedding (the zero-init branches of
  ReZero, Bachlechner et al. 2020, and of Fixup, Zhang et al. 2019; a branch's inner weights get
  gradients from the second step on). The weights are drawn in the same order as ``scaled`` and
  then zeroed, so the two differ in those projections only.
- ``torch``: PyTorch's ``nn.Linear`` default, the init x-transformers models start from: weights
  and biases U(+-1/sqrt(fan_in)) (std 1/sqrt(3 fan_in)), residual outputs not scaled, the token
  embedding N(0, sqrt(2 / C)).
- ``torch_zero_query``: ``torch`` (the same draws) with every query projection at zero, so each
  head starts attending uniformly over what it may see (muP's query init: Yang et al. 2021,
  Tensor Programs V). Under qk-norm (``qk_norm``, ``qk_rmsnorm``) the queries stay drawn: a
  normalised zero query has no direction.

Measured against x-transformers' own init at equal settings (``benchmarks/quality.py --own-init``:
depth 3, lr 1e-3 with AdamW, 1,000 steps; the README's results table): ``scaled_zero`` leads by
3.5% at width 128 and 0.8% at 256 but trails by ~1% at 512, where ``torch`` (x-transformers'
own distribution) only ties with x-transformers and ``torch_zero_query`` leads it (0.992 at
steps 250 and 1,000 over four seeds; on the same draws, zeroing ``torch``'s queries gained
0.8-1.4% at step 1,000 on each of three seeds). At width 384 (one seed) ``torch_zero_query``
was ahead of ``torch`` and ``scaled_zero``; at 256 (two seeds) it trailed ``scaled_zero`` at
both steps on the mean (at step 1,000 it tied on seed 0 and lost by 1.2% on seed 1), so
``auto`` switches at 384. Tried at width 512 and no better than ``torch``: a zero or larger head, an embedding
std of 1 or 0.01, orthogonal draws, mimetic attention (Trockman & Kolter 2023), ``scaled_zero``
with a zero query projection or a smaller head, smaller weights with zeroed branches, and live
weights 0.7x or 1.7x ``torch``'s.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# names (suffixes) of the linear layers that write into the residual stream
RESIDUAL_OUTPUTS = ("attn.out", "ff.proj_out")
# ``auto`` is ``torch_zero_query`` from this width on, ``scaled_zero`` below it
AUTO_TORCH_WIDTH = 384
# the schemes that draw as nn.Linear does: U(+-1/sqrt(fan_in)) weights and biases
UNIFORM = ("torch", "torch_zero_query")


def scheme(cfg) -> str:
    """The scheme ``cfg.init`` draws with: ``auto`` resolved by the width, any other name itself."""
    if cfg.init != "auto":
        return cfg.init
    return "torch_zero_query" if cfg.dim >= AUTO_TORCH_WIDTH else "scaled_zero"


def zeroes_residual_outputs(cfg) -> bool:
    """Whether the residual output projections start at zero: ``scaled_zero`` (by name or by
    ``auto``) or the x-transformers option ``zero_init_branch_output``."""
    return scheme(cfg) == "scaled_zero" or cfg.zero_init_branch_output


def zeroes_query(cfg) -> bool:
    """Whether the query projections start at zero: ``torch_zero_query`` (by name or by ``auto``;
    ``Attention.zero_query_`` leaves normalised queries drawn)."""
    return scheme(cfg) == "torch_zero_query"


def linear_std(cfg, name: str, layer: nn.Linear, n_branches: int) -> float:
    """The std of a linear layer's weight draw under ``cfg.init`` (before
    ``zeroes_residual_outputs`` zeroes the residual outputs)."""
    kind = scheme(cfg)
    if kind in UNIFORM:
        return (3 * layer.in_features) ** -0.5
    std = cfg.init_std if kind == "gpt2" else layer.in_features**-0.5
    if name.endswith(RESIDUAL_OUTPUTS):
        std /= math.sqrt(n_branches)
    return std


def draw_linear_(cfg, name: str, layer: nn.Linear, n_branches: int, generator) -> None:
    """Draw a linear layer's weight (and bias) in place under ``cfg.init``: N(0, std), zero bias;
    ``torch`` and ``torch_zero_query``: U(+-sqrt(3) std) for both, as
    ``nn.Linear.reset_parameters``. Drawn in logical (row-major) order, so the same seed gives the
    same weights whatever the storage layout (see generation/cpu_layout.py)."""
    std = linear_std(cfg, name, layer, n_branches)
    w = layer.weight
    fresh = torch.empty(w.shape, device=w.device, dtype=w.dtype)
    if scheme(cfg) in UNIFORM:
        bound = math.sqrt(3) * std
        w.copy_(fresh.uniform_(-bound, bound, generator=generator))
        if layer.bias is not None:
            layer.bias.uniform_(-bound, bound, generator=generator)
        return
    w.copy_(fresh.normal_(0.0, std, generator=generator))
    if layer.bias is not None:
        layer.bias.zero_()


def embedding_std(cfg, width: int) -> float:
    """The std of an N(0, std) embedding table of rows of ``width`` under ``cfg.init``."""
    return cfg.init_std if scheme(cfg) == "gpt2" else math.sqrt(2.0 / width)

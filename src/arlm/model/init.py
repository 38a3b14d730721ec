"""Weight initialisation schemes: ``model.init`` names one; ``Transformer.init_weights`` applies it.

Dims: C model width (``dim``), fan_in a linear layer's input features, L residual branches
(an attention and a feed-forward sublayer per block: 2 x depth).

- ``gpt2``: every weight N(0, init_std) (0.02, GPT-2's choice for width 768, small for narrow
  models), the residual output projections N(0, init_std / sqrt(L)) so the residual stream's
  variance does not grow with depth. arlm's only init before ``model.init`` existed.
- ``scaled``: width-aware. Linear weights N(0, 1/sqrt(fan_in)) (LeCun: unit-variance outputs for
  unit-variance inputs, at every width), the residual output projections again divided by
  sqrt(L) as gpt2 does, and the token embedding N(0, sqrt(2 / C)) (x-transformers' Kaiming init:
  rows of norm ~sqrt(2) whatever the width).
- ``scaled_zero`` (the default): ``scaled`` with the residual output projections at zero, so
  every block starts as the identity and the residual stream is the embedding (the zero-init
  branches of ReZero, Bachlechner et al. 2020, and of Fixup, Zhang et al. 2019; a branch's
  inner weights get gradients from the second step on). The weights are drawn in the same order
  as ``scaled`` and then zeroed, so the two differ in those projections only.
- ``torch``: PyTorch's ``nn.Linear`` default, the init x-transformers models start from: weights
  and biases U(+-1/sqrt(fan_in)) (std 1/sqrt(3 fan_in)), residual outputs not scaled, the token
  embedding N(0, sqrt(2 / C)). For ports that want x-transformers' starting distribution, and
  for wide models: at width 512 it trained better than ``scaled_zero`` (see below).

Chosen by measurement against x-transformers' own init (PyTorch's U(+-1/sqrt(fan_in)) linears,
Kaiming embedding) at equal settings: ``benchmarks/quality.py --own-init --seeds 0 1`` (the
README's results table). scaled_zero leads at widths 128 and 256 and still trails by under 1% at
width 512.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# names (suffixes) of the linear layers that write into the residual stream
RESIDUAL_OUTPUTS = ("attn.out", "ff.proj_out")


def zeroes_residual_outputs(cfg) -> bool:
    """Whether the residual output projections start at zero: ``model.init: scaled_zero`` or the
    x-transformers option ``zero_init_branch_output``."""
    return cfg.init == "scaled_zero" or cfg.zero_init_branch_output


def linear_std(cfg, name: str, layer: nn.Linear, n_branches: int) -> float:
    """The std of a linear layer's N(0, std) draw under ``cfg.init`` (before
    ``zeroes_residual_outputs`` zeroes the residual outputs)."""
    if cfg.init == "torch":
        return (3 * layer.in_features) ** -0.5
    std = cfg.init_std if cfg.init == "gpt2" else layer.in_features**-0.5
    if name.endswith(RESIDUAL_OUTPUTS):
        std /= math.sqrt(n_branches)
    return std


def draw_linear_(cfg, name: str, layer: nn.Linear, n_branches: int, generator) -> None:
    """Draw a linear layer's weight (and bias) in place under ``cfg.init``: N(0, std), zero bias;
    ``torch``: U(+-sqrt(3) std) for both, as ``nn.Linear.reset_parameters``. Drawn in logical
    (row-major) order, so the same seed gives the same weights whatever the storage layout (see
    generation/cpu_layout.py)."""
    std = linear_std(cfg, name, layer, n_branches)
    w = layer.weight
    fresh = torch.empty(w.shape, device=w.device, dtype=w.dtype)
    if cfg.init == "torch":
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
    return cfg.init_std if cfg.init == "gpt2" else math.sqrt(2.0 / width)

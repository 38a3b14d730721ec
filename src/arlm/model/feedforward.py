"""Feed-forward sublayers: the position-wise MLP and its variants (GLU gating, activations,
soft-capping, output init).

Dims: B batch, T time, C model dim, I inner (hidden) dim.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..config.model_checks import FF_ACTIVATIONS
from .calls import call


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    """relu(x)**2 (So et al. 2021, Primer)."""
    return F.relu(x).square()


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (Hendrycks & Gimpel 2016), as GPT-2."""
    return F.gelu(x, approximate="tanh")


def softclamp(x: torch.Tensor, value: float) -> torch.Tensor:
    """tanh soft-cap to (-value, value), the identity near zero."""
    return torch.tanh(x / value) * value


# plain functions, not modules: an activation has no state, and a module call per layer per
# decoded token is measurable overhead at batch 1. SoLU has a norm, so FeedForward holds it.
ACTIVATIONS = {"gelu": F.gelu, "swish": F.silu, "relu_squared": relu_squared, "gelu_tanh": gelu_tanh,
               "relu": F.relu, "mish": F.mish, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
               "softplus": F.softplus}

# the smooth factor each softclamped gate keeps (SituGLU): GELU is x * Phi(x), swish x * sigmoid(x)
GATE_FACTORS = {"gelu": torch.special.ndtr, "swish": torch.sigmoid}


def clamped_gate(gate: torch.Tensor, value: float, factor) -> torch.Tensor:
    """SituGLU gate: the linear factor of GELU/swish soft-capped, the smooth factor kept."""
    return softclamp(gate, value) * factor(gate)


def activation_name(module) -> str:
    """The ``ff_activation`` value of a stateless torch activation module (``ff_custom_activation``).

    A config must stay plain values, so only activations that a name fully describes are taken;
    anything else (learned parameters, non-default arguments) raises TypeError. The name itself
    (e.g. "gelu_tanh") is accepted too, so a YAML file of keyword arguments can give it."""
    if isinstance(module, str) and module in FF_ACTIVATIONS:  # a config file (arlm convert) names it
        return module
    plain = {nn.SiLU: "swish", nn.ReLU: "relu", nn.Mish: "mish", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}
    kind = type(module)
    if kind in plain:
        return plain[kind]
    if kind is nn.GELU:
        return "gelu" if module.approximate == "none" else "gelu_tanh"
    if kind is nn.Softplus and (module.beta, module.threshold) == (1.0, 20.0):
        return "softplus"
    if kind.__name__ == "ReluSquared" and not any(True for _ in module.parameters()):
        return "relu_squared"  # x-transformers' ReluSquared
    raise TypeError(
        f"ff_custom_activation={module!r} cannot be stored in a plain config. arlm accepts nn.GELU() "
        "(approximate 'none' or 'tanh'), nn.SiLU(), nn.ReLU(), nn.Mish(), nn.Tanh(), nn.Sigmoid(), "
        "nn.Softplus() with default beta/threshold, and x-transformers' ReluSquared(); use the "
        "ff_activation names gelu, gelu_tanh, swish, relu, mish, tanh, sigmoid, softplus, relu_squared, solu"
    )


class FeedForward(nn.Module):
    """Position-wise MLP; ``ff_glu`` gates it (Shazeer 2020, GLU variants): proj_in gives
    [up, gate] and the hidden is up * act(gate). As in x-transformers a GLU input projection keeps
    its bias when ``ff_bias`` is off (unless ``ff_glu_bias`` is off: Llama). ``ff_post_act_ln`` normalises the hidden (NormFormer).

    Variants: SoLU (Elhage et al. 2022, softmax(h) * h then a LayerNorm); a learned multiplier on
    the GLU output (``ff_glu_mult_bias``); SituGLU soft-capping of the up branch and the gate's
    linear factor (``ff_glu_softclamp``); a tanh soft-cap of the plain hidden before the activation
    (``ff_softclamp_value``); dropout on the output (``ff_sublayer_dropout``).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        inner = cfg.ff_inner_dim
        self.glu = cfg.ff_glu
        self.proj_in = nn.Linear(cfg.dim, inner * (2 if cfg.ff_glu else 1),
                                 bias=cfg.ff_bias or (cfg.ff_glu and cfg.ff_glu_bias))
        self.act = ACTIVATIONS.get(cfg.ff_activation, self._solu)
        # SoLU's LayerNorm over the hidden (x-transformers' bias-free LayerNorm, gain at 1)
        self.solu_norm = nn.LayerNorm(inner, bias=False) if cfg.ff_activation == "solu" else None
        self.softclamp_value = cfg.ff_softclamp_value
        self.up_clamp = cfg.ff_glu_up_softclamp_value if cfg.ff_glu_softclamp else None
        if cfg.ff_glu_softclamp:
            self.act = partial(clamped_gate, value=cfg.ff_glu_gate_softclamp_value,
                               factor=GATE_FACTORS[cfg.ff_activation])
        self.mult_bias = nn.Parameter(torch.ones(inner)) if cfg.ff_glu_mult_bias else None
        self.post_act_norm = nn.LayerNorm(inner, bias=False) if cfg.ff_post_act_ln else None
        self.dropout = cfg.ff_dropout
        self.proj_out = nn.Linear(inner, cfg.dim, bias=cfg.ff_bias)
        self.out_dropout = cfg.ff_sublayer_dropout
        self.zero_init = cfg.ff_zero_init_output
        self.out_depth = cfg.ff_output_proj_depth

    def _solu(self, h: torch.Tensor) -> torch.Tensor:
        return self.solu_norm(h.softmax(dim=-1) * h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mods = self._modules  # a plain dict: no Module.__getattr__ per access
        h = call(mods["proj_in"], x)  # (B, T, I) or (B, T, 2I) with GLU
        if self.glu:
            h, gate = h.chunk(2, dim=-1)
            if self.up_clamp is not None:
                h = softclamp(h, self.up_clamp)
            h = h * self.act(gate)
            if self.mult_bias is not None:
                h = h * self.mult_bias
        else:
            if self.softclamp_value is not None:
                h = softclamp(h, self.softclamp_value)
            h = self.act(h)
        if self.post_act_norm is not None:
            h = self.post_act_norm(h)
        if self.dropout and self.training:
            h = F.dropout(h, self.dropout)
        out = call(mods["proj_out"], h)
        if self.out_dropout and self.training:
            out = F.dropout(out, self.out_dropout)
        return out

    @torch.no_grad()
    def init_option_(self, generator: torch.Generator | None = None) -> None:
        """Zero output (``ff_zero_init_output``), or OLMo's depth-scaled output init
        std = (2 * inner * depth)^-0.5 (``ff_output_proj_depth``, Groeneveld et al. 2024); the GLU
        multiplier starts at 1."""
        if self.mult_bias is not None:
            self.mult_bias.fill_(1.0)
        w = self.proj_out.weight
        if self.zero_init:
            w.zero_()
            if self.proj_out.bias is not None:
                self.proj_out.bias.zero_()
        elif self.out_depth is not None:
            std = 1.0 / math.sqrt(2 * self.proj_out.in_features * self.out_depth)
            w.copy_(torch.empty(w.shape, dtype=w.dtype, device=w.device).normal_(0.0, std, generator=generator))

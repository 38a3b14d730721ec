"""Feed-forward and embedding/output options whose effect the option matrix (tests/test_options.py)
cannot see: initialisations, train-time dropout, refusals with their reasons."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from arlm import ConfigError, Decoder, TransformerWrapper

V, SEQ = 40, 24
BASE = dict(dim=32, depth=2, heads=2, attn_dim_head=16)


def wrapper(dec: dict | None = None, **wrap) -> TransformerWrapper:
    torch.manual_seed(0)
    return TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(**{**BASE, **(dec or {})}), **wrap)


def ffs(net):
    return [b.ff for b in net.blocks if b.ff is not None]


def test_ff_zero_init_output_starts_every_output_projection_at_zero():
    for ff in ffs(wrapper({"ff_zero_init_output": True})):
        assert not ff.proj_out.weight.any() and not ff.proj_out.bias.any()
    assert all(ff.proj_out.weight.any() for ff in ffs(wrapper()))


def test_ff_output_proj_depth_draws_the_olmo_std():
    net = wrapper({"dim": 64, "ff_output_proj_depth": 3})
    want = (2 * 256 * 3) ** -0.5
    for ff in ffs(net):
        assert abs(ff.proj_out.weight.std().item() / want - 1) < 0.05
    default = ffs(wrapper({"dim": 64}))[0].proj_out.weight.std().item()
    assert abs(default / want - 1) > 0.2  # the option changes the draw


def test_ff_sublayer_dropout_drops_the_output_in_training_only():
    ff = ffs(wrapper({"ff_sublayer_dropout": 0.5}))[0]
    x = torch.randn(4, 16, 32)
    ff.train()
    zeros = (ff(x) == 0).float().mean().item()
    assert 0.4 < zeros < 0.6
    ff.eval()
    assert (ff(x) != 0).all()


@pytest.mark.parametrize("act", [nn.PReLU(), nn.LeakyReLU(0.2), nn.Softplus(beta=2.0), nn.Linear(2, 2)])
def test_ff_custom_activation_refuses_modules_a_config_cannot_name(act):
    with pytest.raises(TypeError, match="ff_activation names"):
        Decoder(**BASE, ff_custom_activation=act)


@pytest.mark.parametrize("act,name", [(nn.GELU(), "gelu"), (nn.GELU(approximate="tanh"), "gelu_tanh"),
                                      (nn.SiLU(), "swish"), (nn.ReLU(), "relu"), (nn.Mish(), "mish"),
                                      (nn.Tanh(), "tanh"), (nn.Sigmoid(), "sigmoid"), (nn.Softplus(), "softplus")])
def test_ff_custom_activation_maps_to_a_named_activation(act, name):
    net = TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(**BASE, ff_custom_activation=act))
    assert net.cfg.ff_activation == name
    ff = ffs(net)[0]
    x = torch.randn(3, 32)
    torch.testing.assert_close(ff(x), ff.proj_out(act(ff.proj_in(x))))


def test_ff_dim_out_other_than_dim_is_refused_with_the_reason():
    with pytest.raises(TypeError, match="residual stream"):
        wrapper({"ff_dim_out": 16})


@pytest.mark.parametrize("dec", [{"ff_glu_mult_bias": True}, {"ff_glu_softclamp": True},
                                 {"ff_glu": True, "ff_softclamp_value": 5.0},
                                 {"ff_glu_gate_softclamp_value": 2.0},
                                 {"ff_glu": True, "ff_glu_softclamp": True, "ff_relu_squared": True}])
def test_ff_options_that_would_be_ignored_are_refused(dec):
    with pytest.raises(ConfigError, match="model.ff_"):
        wrapper(dec)

"""Residual-stream options beyond the option matrix: their initialisation, the keywords that are
refused, and parity with x-transformers where only part of its behaviour is causal."""

from __future__ import annotations

import pytest
import torch

from arlm import Decoder, TransformerWrapper
from arlm.config import ConfigError

V, SEQ = 40, 24
BASE = dict(dim=64, heads=2, attn_dim_head=32)


def test_depth_scaled_init_shrinks_deeper_output_projections():
    net = TransformerWrapper(num_tokens=V, max_seq_len=SEQ,
                             attn_layers=Decoder(**BASE, depth=4, depth_scale_residual=True))
    net.init_weights(torch.Generator().manual_seed(0))
    for i, block in enumerate(net.blocks):
        for lin in (block.attn.out, block.ff.proj_out):
            want = (2 * lin.in_features * (i + 1)) ** -0.5
            assert abs(lin.weight.std().item() / want - 1) < 0.1, (i, lin.weight.std().item(), want)
    # without the option the generic init is used
    plain = TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(**BASE, depth=4))
    assert abs(plain.blocks[3].attn.out.weight.std().item() - net.blocks[3].attn.out.weight.std().item()) > 1e-3


def test_residual_fn_kwargs_map_to_options_or_are_refused():
    dec = Decoder(**BASE, depth=2, mv_split_residual=True, residual_fn_kwargs=dict(init_alpha=0.1, learned=True))
    fields = dec.model_fields()
    assert fields["mv_split_init_alpha"] == 0.1 and fields["mv_split_learned"] is True
    with pytest.raises(TypeError, match="'surprise' is not supported"):
        Decoder(**BASE, depth=2, residual_fn_kwargs=dict(surprise=1)).model_fields()
    with pytest.raises(TypeError, match="configures mv_split_residual, which is off"):
        Decoder(**BASE, depth=2, residual_fn_kwargs=dict(init_beta=0.1)).model_fields()
    # an empty dict is x-transformers' default
    TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(**BASE, depth=2, residual_fn_kwargs={}))


@pytest.mark.parametrize("kw, match", [
    (dict(layers_execute_order=(0, 4)), "layers_execute_order"),
    (dict(layers_execute_order=(0, 1), weight_tie_layers=True), "weight_tie_layers"),
    (dict(only_attn=True, custom_layers=("a", "f")), "only_attn"),
    (dict(gate_residual=True, orthog_residual=True), "choose one residual update"),
    (dict(gate_residual=True, scale_residual_constant=0.5), "scale_residual_constant"),
    (dict(learned_reinject_input_gate=True), "reinject_input"),
    (dict(unet_skips=True, custom_layers=("a", "f", "a", "f")), "unet_skips"),
])
def test_inconsistent_residual_options_are_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(**{"depth": 2, **BASE, **kw}))

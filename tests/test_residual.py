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
    assert abs(plain.blocks[0].attn.out.weight.std().item() - net.blocks[0].attn.out.weight.std().item()) > 1e-3


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
    (dict(depth_scale_residual=True, attn_output_proj_depth=2), "attn_output_proj_depth"),
    (dict(mv_split_residual=True, scale_residual=True), "scale_residual"),
])
def test_inconsistent_residual_options_are_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(**{"depth": 2, **BASE, **kw}))


# x-transformers' orthogonal and mean/variance split updates look at the whole sequence at once
# (not causal); arlm's per-token / running-mean versions must equal them where the two coincide.

xt = pytest.importorskip("x_transformers")


def _perturbed(module):
    """Move every weight off its init (zero weights, constant biases, unit gains)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return module


def _xt_residual(cls, **kw):
    torch.manual_seed(0)
    return _perturbed(cls(32, **kw))


def test_orthogonal_update_equals_x_transformers_per_token():
    from arlm.model.residual import orthogonal_update

    ref = _xt_residual(xt.x_transformers.OrthogonalResidualUpdate)
    out, res = torch.randn(2, 7, 32), torch.randn(2, 7, 32)
    got = orthogonal_update(out, res)
    for t in range(7):  # one token: x-transformers' whole-sequence projection is the per-token one
        torch.testing.assert_close(got[:, t:t + 1], ref(out[:, t:t + 1], res[:, t:t + 1]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("learned", [False, True])
def test_mv_split_update_at_each_position_equals_x_transformers_on_the_prefix(learned):
    from arlm.model.context import Context
    from arlm.model.residual import MVSplitUpdate
    from arlm import ModelConfig

    ref = _xt_residual(xt.x_transformers.MVSplitResidualUpdate, learned=learned, init_alpha=0.1, init_beta=0.2)
    ours = MVSplitUpdate(ModelConfig(dim=32, mv_split_residual=True, mv_split_learned=learned))
    ours.load_state_dict(ref.state_dict())
    out, res = torch.randn(2, 7, 32), torch.randn(2, 7, 32)
    with torch.no_grad():
        got = ours(out, res, Context([], -1, slots=torch.arange(7)), 0, "attn")
        for t in range(7):  # the running mean at t is the mean over the prefix 0..t
            torch.testing.assert_close(got[:, t], ref(out[:, :t + 1], res[:, :t + 1])[:, -1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kw", [
    dict(orthog_residual=True, scale_residual=True),
    dict(mv_split_residual=True, residual_fn_kwargs=dict(learned=True)),
    dict(mv_split_residual=True, pre_norm=False),
], ids=["orthog_residual", "mv_split_learned", "mv_split_post_norm"])
def test_single_token_logits_match_x_transformers_after_conversion(kw):
    """With one token per row the whole-sequence and causal versions coincide: this checks the
    weight conversion and the update's place in the block."""
    from arlm.export.x_transformers import convert_state_dict

    dec = dict(dim=32, depth=2, heads=2, attn_dim_head=16, **kw)
    ref = _xt_model(dec)
    ours = TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(**dec)).eval()
    ours.load_state_dict(convert_state_dict(ref.state_dict(), ours))
    x = torch.randint(0, V, (3, 1), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert want.std() > 1e-2
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def _xt_model(dec: dict):
    torch.manual_seed(0)
    return _perturbed(xt.TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=xt.Decoder(**dec))).eval()

"""Several residual streams and layer integration (model/streams.py), beyond the option matrix.

Their input-dependent parts start at zero (the papers' init), so the matrix's causal, cache and
left-padding checks would not exercise them; here the same checks run with every weight moved
off its init.
"""

from __future__ import annotations

import pytest
import torch

import test_options
from test_options import STREAMS

from arlm import ConfigError, Decoder, ModelConfig, TransformerWrapper
from arlm.model.streams import sinkhorn

_build = test_options.build


_build_off_init = test_options.off_init(_build)


@pytest.mark.parametrize("check", [test_options.test_causal_and_cache_exact,
                                   test_options.test_left_padded_rows_equal_solo_rows],
                         ids=["causal_and_cache_exact", "left_padded_rows_equal_solo_rows"])
@pytest.mark.parametrize("name", STREAMS)
def test_streams_with_weights_off_their_init(name, check, monkeypatch):
    monkeypatch.setattr(test_options, "build", _build_off_init)
    check(name)


def test_sinkhorn_is_doubly_stochastic():
    m = sinkhorn(torch.randn(5, 4, 4, generator=torch.Generator().manual_seed(0)), iters=100)
    assert (m > 0).all()
    torch.testing.assert_close(m.sum(dim=-1), torch.ones(5, 4), atol=1e-4, rtol=0)
    torch.testing.assert_close(m.sum(dim=-2), torch.ones(5, 4), atol=1e-6, rtol=0)


def test_x_transformers_hyper_connections_carry_the_sum_of_the_streams():
    """Why ``hyper_conn_residual_mix`` defaults to "sum": x-transformers 2.31.10 normalises 1 x N
    matrices in its Sinkhorn step, so whatever its weights, every stream carries the sum."""
    xt = pytest.importorskip("x_transformers.x_transformers")
    torch.manual_seed(0)
    hc = xt.HyperConnection(8, layer_index=1, num_residual_streams=3)
    with torch.no_grad():
        for p in hc.parameters():
            p.add_(torch.randn_like(p))
    x = torch.randn(2 * 3, 4, 8)
    _, carried, _ = hc.prepare(x)  # (B, T, N, C)
    want = x.view(2, 3, 4, 8).sum(dim=1)[:, :, None].expand(-1, -1, 3, -1)
    torch.testing.assert_close(carried, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fields, match", [
    ({"num_residual_streams": 0}, "num_residual_streams"),
    ({"num_residual_streams": 2, "gate_residual": True}, "gate_residual"),
    ({"num_residual_streams": 2, "hyper_conn_residual_mix": "mean"}, "hyper_conn_residual_mix"),
    ({"gated_multi_residual": True}, "gated_multi_read_gate_rank"),
    ({"qkv_receive_diff_residuals": True}, "three views"),
    ({"integrate_layers": True, "attn_aggregated_residuals": True}, "choose one"),
    ({"integrate_layers": True, "weight_tie_layers": True}, "weight_tie_layers"),
    ({"integrate_layers": True, "layers_execute_order": "0,1,0,1,2,3"}, "layers_execute_order"),
    ({"num_residual_streams": 2, "orthog_residual": True}, "orthog_residual"),
    ({"num_residual_streams": 2, "scale_residual_constant": 0.5}, "scale_residual_constant"),
    ({"attn_aggregated_residuals": True, "branch_output_scale": 0.5}, "branch_output_scale"),
    ({"integrate_layers": True, "shift_tokens": 1}, "shift_tokens"),
    ({"integrate_layers": True, "attn_use_latent_kv": True, "attn_dim_latent_kv": 8}, "latent"),
    ({"attn_aggregated_residuals": True, "attn_aggregated_lora_rank": 32, "dim": 32, "heads": 2}, "lora_rank"),
])
def test_invalid_stream_combinations_are_refused(fields, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**fields).validate()


def test_unknown_residual_sub_keywords_are_refused():
    with pytest.raises(TypeError, match="read_gate_ranks"):
        Decoder(dim=32, depth=1, gated_multi_residual=True, residual_fn_kwargs={"read_gate_ranks": 4}).model_fields()
    with pytest.raises(TypeError, match="lora_activation"):
        Decoder(dim=32, depth=1, attn_aggregated_residuals=True,
                attn_aggregated_residual_kwargs={"lora_activation": torch.nn.SiLU()}).model_fields()


@pytest.mark.parametrize("name", ["integrate_layers", "integrate_layers_hyper", "attn_aggregated_residuals_qkv"])
def test_layer_integration_gives_the_same_outputs_with_and_without_gradients(name):
    # with gradients the mixtures are sums of products (memory linear in depth), without them one
    # batched product; the parity and cache checks run without
    net = _build_off_init(name).eval()
    x = test_options.tokens(2, 12, seed=7)
    with torch.no_grad():
        want = net(x)
    torch.testing.assert_close(net(x).detach(), want, atol=1e-5, rtol=0)


def test_stream_gains_and_mixing_weights_are_not_weight_decayed_or_given_to_muon():
    from arlm.training.optim import muon_split, param_groups

    for dec in ({"num_residual_streams": 2}, {"num_residual_streams": 2, "gated_multi_residual": True, "residual_fn_kwargs": {"read_gate_rank": 4}}):
        net = TransformerWrapper(num_tokens=16, max_seq_len=8, attn_layers=Decoder(dim=16, depth=2, heads=2, **dec))
        decay, no_decay = (g["params"] for g in param_groups(net, 0.1))
        names = {id(p): n for n, p in net.named_parameters()}
        gains = [n for n, p in net.named_parameters()
                 if n.rsplit(".", 1)[-1] in ("emb", "static_alpha", "read_gain", "static_read_logit")]
        assert gains and all(names[id(p)] not in gains for p in decay), gains
        assert all(any(p is q for q in no_decay) for n, p in net.named_parameters() if n in gains)
        muon, _ = muon_split(net)
        assert not {names[id(p)] for p in muon} & set(gains)
        assert any(p.dim() == 2 for p in decay)  # real matrices still decay

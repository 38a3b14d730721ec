"""Attention projection, gate and value options beyond the option matrix (tests/test_options.py):
their initialisation, training-only behaviour, refusals, and the x-transformers comparison that
is possible where x-transformers itself is not causal."""

from __future__ import annotations

import pytest
import torch

from arlm import Decoder, ModelConfig, TransformerWrapper
from arlm.config.checks import ConfigError

import test_options
from test_options import ATTN_PROJ, BASE, SEQ, V, build, tokens


def wrapper(**dec) -> TransformerWrapper:
    torch.manual_seed(0)
    return TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(**{**BASE, **dec}))


def test_zero_init_output_starts_every_attention_layer_at_zero():
    net = build("attn_zero_init_output")
    for block in net.blocks:
        assert not block.attn.out.weight.any()
        assert block.ff.proj_out.weight.any()  # only the attention output (zero_init_branch_output does both)
    x = tokens(1, 8, seed=0)
    with torch.no_grad():
        attn_out = net.blocks[0].attn(net._embed(x, torch.arange(8)), _context(net, 8))
    assert not attn_out.any()


def _context(net, T):
    from arlm.model.context import make_context
    slots = torch.arange(T)
    return make_context(net, slots, slots, None, None, None)


def test_output_proj_depth_draws_the_olmo_std():
    net = wrapper(dim=64, attn_output_proj_depth=3)
    net.init_weights(torch.Generator().manual_seed(0))
    w = net.blocks[1].attn.out.weight  # (64, 32): fan_in = heads x head size = 32
    assert abs(w.std().item() - (2 * 32 * 3) ** -0.5) < 0.01


def test_gates_start_where_their_papers_start():
    net = wrapper(attn_gate_values=True, attn_gate_values_rank=4, attn_output_gate=True, attn_gate_value_heads=True,
                  attn_head_learned_sink=True)
    net.init_weights(torch.Generator().manual_seed(1))
    for block in net.blocks:
        a = block.attn
        assert not a.value_gate.up.weight.any() and a.value_gate.down.weight.any()  # low rank: up starts at zero
        assert not a.output_gate.weight.any()
        assert not a.head_gate.weight.any() and torch.all(a.head_gate.bias == 10.0)  # head gate starts open
        assert not a.sink.logit.any()


def test_sublayer_dropout_only_in_training():
    net = build("attn_sublayer_dropout")
    x = tokens(2, 12, seed=0)
    with torch.no_grad():
        net.train()
        a, b = net(x), net(x)
        net.eval()
        c, d = net(x), net(x)
    assert not torch.equal(a, b)
    assert torch.equal(c, d)


def test_learned_sink_takes_attention_weight():
    """A very negative sink changes nothing; a very positive one makes every head attend to nothing."""
    net = build("attn_head_learned_sink").eval()
    x = tokens(1, 10, seed=0)
    ref = wrapper(rotary_pos_emb=True).eval()
    ref.load_state_dict({k: v for k, v in net.state_dict().items() if "sink" not in k})
    with torch.no_grad():
        for b in net.blocks:
            b.attn.sink.logit.fill_(-1e4)
        torch.testing.assert_close(net(x), ref(x), atol=1e-6, rtol=0)
        for b in net.blocks:
            b.attn.sink.logit.fill_(1e4)
            b.attn.out.weight.normal_()
        h = net._embed(x, torch.arange(10))
        assert net.blocks[0].attn(net.blocks[0].attn_norm(h), _context(net, 10)).abs().max() < 1e-6


def test_orthogonal_values_are_orthogonal_to_the_tokens_own_values():
    from arlm.model.attention_variants import orthogonal_values

    y, v = torch.randn(2, 5, 4 * 3), torch.randn(2, 2, 5, 3)  # H=4 query heads, K=2 KV heads of Dv=3
    out = orthogonal_values(y, v, 4, True, True)
    vh = v.transpose(1, 2).repeat(1, 1, 2, 1)  # (B, T, H, Dv), head h reads KV head h % K
    whole, per_head = out.split(12, dim=-1)
    assert (whole * vh.flatten(2)).sum(-1).abs().max() < 1e-5
    assert (per_head.view(2, 5, 4, 3) * vh).sum(-1).abs().max() < 1e-5


def test_orthogonal_values_match_x_transformers_for_one_token():
    """x-transformers projects over the whole sequence (so it is not causal); on a single token
    that is arlm's per-token projection."""
    xt = pytest.importorskip("x_transformers")
    from test_x_transformers_parity import reference

    from arlm.export.x_transformers import convert_state_dict

    dec = {"attn_orthog_projected_values": True, "heads": 4, "attn_kv_heads": 2}
    ref = reference(dec, {}, seed=0)
    ours = wrapper(**dec).eval()
    ours.load_state_dict(convert_state_dict(ref.state_dict(), ours))
    x = tokens(3, 1, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)
    assert xt is not None


@pytest.mark.parametrize("name, latent", [
    ("latent_kv_cache_gqa", True), ("latent_kv_cache_rope_explicit", True), ("attn_latent_rope_subheads", True),
    ("attn_use_latent_kv", False),  # memory key/values are not latents
    ("latent_rope_subheads_xpos_qk_norm", False),  # normalised keys cannot be absorbed
])
def test_latent_attention_caches_the_latent(name, latent):
    net = build(name)
    cfg, cache = net.cfg, net.new_cache(2, SEQ)
    assert cache.latent == latent == cfg.latent_kv_cache
    if latent:  # per token and layer: the latent and the decoupled key heads, nothing else
        assert cache.k[0].shape == (2, 1, SEQ + cfg.num_memory_tokens, cfg.latent_cache_dim)
        assert cache.v[0].numel() == 0
        assert cfg.latent_cache_dim < cfg.n_kv_heads * (cfg.head_dim + cfg.value_head_dim)
    else:
        assert cache.k[0].shape[1] == cfg.n_kv_heads


def test_latent_cache_needs_every_layer_to_allow_it():
    net = TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(
        **{**BASE, "attn_use_latent_kv": True, "attn_dim_latent_kv": 8, "attn_qk_norm": (False, True)}))
    assert not net.cfg.latent_kv_cache and not net.new_cache(1, 4).latent


@pytest.mark.parametrize("kwargs, match", [
    ({"attn_dim_out": 16}, "attn_dim_out=16 is refused"),
    ({"attn_heads": 2}, "attn_heads.* is refused"),
])
def test_refused_keywords_say_why(kwargs, match):
    with pytest.raises(TypeError, match=match):
        wrapper(**kwargs)


@pytest.mark.parametrize("fields, match", [
    ({"attn_project_out": False, "dim": 32, "heads": 2, "dim_head": 8}, "attn_project_out=false needs"),
    ({"attn_project_out": False, "attn_on_attn": True, "dim": 32, "heads": 2}, "attention on attention"),
    ({"attn_gate_values_rank": 4}, "attn_gate_values_rank needs model.attn_gate_values"),
    ({"attn_zero_init_output": True, "attn_output_proj_depth": 2}, "choose one"),
    ({"attn_output_gate": True, "attn_output_gate_rank": 4, "attn_output_gate_headwise": True}, "exclusive"),
    ({"attn_swiglu_values": True}, "attn_swiglu_values needs"),
    ({"attn_low_rank_silu_gates": False}, "needs a low-rank gate"),
    ({"attn_head_learned_sink": True, "attn_softclamp_logits": True}, "explicit-score"),
    ({"attn_use_latent_kv": True}, "attn_dim_latent_kv"),
    ({"attn_dim_latent_q": 8}, "needs model.attn_use_latent_q"),
    ({"attn_use_latent_kv": True, "attn_dim_latent_kv": 8, "attn_latent_rope_subheads": 1, "kv_heads": 1},
     "as many key/value heads"),
    ({"attn_latent_rope_subheads": 1}, "needs model.attn_use_latent_kv"),
    ({"depth": 2, "per_layer": {"attn_gate_values_rank": [None, 4]}},
     r"per_layer \(attn_gate_values_rank\)\[1\]: model.attn_gate_values_rank needs model.attn_gate_values"),
])
def test_config_refuses_inconsistent_options(fields, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**fields).validate()


def test_inert_values_are_accepted():
    net = wrapper(attn_dim_out=32, attn_project_out=None, attn_value_dim_head=16, attn_low_rank_silu_gates=True,
                  attn_sublayer_dropout=0.0, attn_output_gate=False, attn_latent_rope_subheads=None)
    base = wrapper()
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in base.state_dict().items()}
    net.load_state_dict(base.state_dict())
    x = tokens(1, 6, seed=0)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), base.eval()(x))


@pytest.mark.parametrize("name", ["latent_kv_cache_gqa", "latent_kv_cache_rope_explicit",
                                  "latent_kv_cache_sink_orthog_xpos", "attn_latent_rope_subheads"])
def test_latent_cache_decoding_is_exact_with_sharp_attention(name):
    """At the 0.02 init attention is nearly uniform, so keys barely matter; with larger weights
    every absorbed key and value projection must be the right one."""
    net = build(name).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
        x = tokens(2, 12, seed=1)
        full = net(x)
        cache = net.new_cache(2, SEQ)
        steps = [net(x[:, :4], input_pos=torch.arange(4), cache=cache)]
        steps += [net(x[:, t:t + 1], input_pos=torch.tensor([t]), cache=cache) for t in range(4, 12)]
    assert cache.latent
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4 * full.abs().max().item(), rtol=0)


@pytest.mark.parametrize("check", [test_options.test_causal_and_cache_exact,
                                   test_options.test_left_padded_rows_equal_solo_rows])
@pytest.mark.parametrize("name", ATTN_PROJ)
def test_option_with_perturbed_weights(name, check, monkeypatch):
    """The gates start at zero, the sink at 0 and attention nearly uniform at the 0.02 init, so
    the option matrix barely exercises them; the same checks with every weight moved off its init."""
    monkeypatch.setattr(test_options, "build", test_options.off_init(test_options.build))
    check(name)


def test_latent_attention_built_on_the_meta_device_loads_and_decodes():
    """Derived buffers (the absorbed projections' head index) exist after an assign-load."""
    from arlm import Transformer

    net = build("latent_kv_cache_gqa").eval()
    with torch.device("meta"):
        lazy = Transformer(net.cfg)
    lazy.load_state_dict(net.state_dict(), assign=True)
    lazy.eval()
    x = tokens(1, 6, seed=0)
    with torch.no_grad():
        cache = lazy.new_cache(1, SEQ)
        torch.testing.assert_close(lazy(x, input_pos=torch.arange(6), cache=cache), net(x), atol=1e-5, rtol=0)

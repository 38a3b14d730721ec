"""Feed-forward and embedding/output options whose effect the option matrix (tests/test_options.py)
cannot see: initialisations, train-time dropout, refusals with their reasons."""

from __future__ import annotations

import pytest
import torch
from conftest import reinit
from torch import nn

from arlm import ConfigError, Decoder, TransformerWrapper

V, SEQ = 40, 24
BASE = dict(dim=32, depth=2, heads=2, attn_dim_head=16)


def wrapper(dec: dict | None = None, **wrap) -> TransformerWrapper:
    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(**{**BASE, **(dec or {})}), **wrap)
    return reinit(net, "gpt2")  # the tolerances here were set on GPT-2's N(0, 0.02) init (smaller logits)


def ffs(net):
    return [b.ff for b in net.blocks if b.ff is not None]


def test_ff_zero_init_output_starts_every_output_projection_at_zero():
    for ff in ffs(wrapper({"ff_zero_init_output": True})):
        assert not ff.proj_out.weight.any() and not ff.proj_out.bias.any()
    assert all(ff.proj_out.weight.any() for ff in ffs(wrapper()))


def test_init_weights_restarts_the_glu_multiplier_at_one():
    net = wrapper({"ff_glu": True, "ff_glu_mult_bias": True})
    with torch.no_grad():
        for ff in ffs(net):
            ff.mult_bias.normal_()
    net.init_weights()
    assert all(torch.equal(ff.mult_bias, torch.ones(128)) for ff in ffs(net))


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


def assert_cached_decoding_equals_full(net, x):
    """Token-by-token decoding (tensor and int slots) and a left-padded row reproduce the full forward."""
    net.eval()
    with torch.no_grad():
        full = net(x)
        for slots in (lambda a, b: torch.arange(a, b), lambda a, b: a):
            cache = net.new_cache(x.shape[0], SEQ)
            steps = [net(x[:, :1], input_pos=slots(0, 1), cache=cache)]
            steps += [net(x[:, t:t + 1], input_pos=slots(t, t + 1), cache=cache) for t in range(1, x.shape[1])]
            torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
        padded = torch.cat((torch.zeros_like(x[:1, :3]), x[:1]), dim=1)
        out = net(padded, input_pos=torch.arange(padded.shape[1]), cache=net.new_cache(1, SEQ), start=torch.tensor([3]))
        torch.testing.assert_close(out[:, 3:], full[:1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dec,wrap", [({"rotary_pos_emb": True}, {}), ({}, {"num_memory_tokens": 2}),
                                      ({"macaron": True, "rotary_pos_emb": True}, {})])
def test_ff_deep_embed_multipliers_follow_each_token_under_the_cache(dec, wrap):
    net = wrapper(dec, ff_deep_embed=True, **wrap)
    with torch.no_grad():
        net.ff_deep_embed.normal_(1.0, 0.5)
    x = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(1))
    assert_cached_decoding_equals_full(net, x)
    with torch.no_grad():
        plain = net(x)
        net.ff_deep_embed.fill_(1.0)
        assert not torch.allclose(net(x), plain)  # the multipliers act


def test_emb_frac_gradient_scales_only_the_embedding_gradient():
    x = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(1))
    grads, outs = [], []
    for frac in (1.0, 0.1):
        net = wrapper(emb_frac_gradient=frac)
        out = net(x)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append((net.token_emb.weight.grad, net.head.weight.grad))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-6, rtol=0)  # the values are untouched
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=1e-7, rtol=1e-4)
    torch.testing.assert_close(grads[1][0], grads[0][0] * 0.1, atol=1e-9, rtol=1e-4)


def xt_pair(dec: dict, wrap: dict, ours_wrap: dict | None = None):
    """An x-transformers model with perturbed weights and the arlm model converted from it."""
    pytest.importorskip("x_transformers")
    from test_x_transformers_parity import reference

    from arlm.export.x_transformers import convert_state_dict

    ref = reference(dec, wrap, seed=0)
    ours = wrapper(dec, **(wrap if ours_wrap is None else ours_wrap)).eval()
    ours.load_state_dict(convert_state_dict(ref.state_dict(), ours))
    return ref, ours, torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))


def test_num_output_heads_give_a_tuple_of_logits_equal_to_x_transformers():
    ref, ours, x = xt_pair({}, {"num_output_heads": 3, "logits_dim": 7})
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert isinstance(got, tuple) and len(got) == 3 and got[0].shape == (2, 12, 7)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)
    with torch.no_grad():  # each head is causal and cache-exact
        cache = ours.new_cache(2, SEQ)
        steps = [ours(x[:, t:t + 1], input_pos=t, cache=cache) for t in range(12)]
    for h in range(3):
        torch.testing.assert_close(torch.cat([s[h] for s in steps], dim=1), got[h], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="targets="):
        ours(x, targets=x)


def test_return_only_embed_returns_the_final_embeddings_as_x_transformers():
    ref, ours, x = xt_pair({}, {"return_only_embed": True})
    assert ours.head is None and not any("head" in k for k in ours.state_dict())
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert got.shape == (2, 12, 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_squeeze_out_last_dim_drops_a_single_logit_dimension():
    ref, ours, x = xt_pair({}, {"logits_dim": 1, "squeeze_out_last_dim": True})
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert got.shape == (2, 12)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    with torch.no_grad():
        cache = ours.new_cache(2, SEQ)
        steps = torch.cat([ours(x[:, t:t + 1], input_pos=t, cache=cache) for t in range(12)], dim=1)
    torch.testing.assert_close(steps, got, atol=1e-5, rtol=0)


def test_custom_token_emb_and_to_logits_match_x_transformers_and_keep_their_weights():
    pytest.importorskip("x_transformers")
    torch.manual_seed(3)
    emb, head = nn.Embedding(V, 32), nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, V))
    before = {k: v.clone() for k, v in {**emb.state_dict(), **head.state_dict()}.items()}
    net = wrapper(token_emb=emb, to_logits=head)
    assert net.token_emb is emb and net.head is head
    after = {**emb.state_dict(), **head.state_dict()}
    assert all(torch.equal(before[k], after[k]) for k in before)  # init_weights left them alone
    import copy

    ref, ours, x = xt_pair({}, {"token_emb": copy.deepcopy(emb), "to_logits": copy.deepcopy(head)},
                           {"token_emb": copy.deepcopy(emb), "to_logits": copy.deepcopy(head)})
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)
    assert_cached_decoding_equals_full(ours, x)
    assert net.cfg.custom_token_emb and net.cfg.custom_to_logits


def test_a_config_with_custom_modules_cannot_be_rebuilt_by_arlm_runs():
    from arlm import RunConfig, Transformer

    net = wrapper(token_emb=nn.Embedding(V, 32))
    cfg = RunConfig.from_yaml(RunConfig(model=net.cfg).to_yaml()).validate().model
    with pytest.raises(ConfigError, match="custom token_emb is a Python module"):
        Transformer(cfg)
    with pytest.raises(TypeError, match="nn.Module"):
        wrapper(to_logits=lambda t: t)


def test_mixture_of_softmax_outputs_log_probabilities_and_its_loss_reads_them():
    net = wrapper(mixture_of_softmax=True).eval()
    x = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logp = net(x)
        torch.testing.assert_close(logp.exp().sum(-1), torch.ones(2, 9), atol=1e-5, rtol=0)
        loss = net(x[:, :-1], targets=x[:, 1:])
    torch.testing.assert_close(loss, -logp[:, :-1].gather(-1, x[:, 1:, None]).mean(), atol=1e-6, rtol=0)


def test_add_continuous_pred_head_builds_x_transformers_next_embedding_predictor():
    net = wrapper(add_continuous_pred_head=True)
    h = torch.randn(2, 5, 32)
    assert net.to_next_embed_pred(h).shape == (2, 5, 32)
    assert {k for k in net.state_dict() if "next_embed" in k} == {"to_next_embed_pred.0.weight",
                                                                   "to_next_embed_pred.2.weight"}


@pytest.mark.parametrize("wrap", [{"tie_embedding": True, "emb_dim": 16}, {"tie_embedding": True, "logits_dim": 5},
                                  {"tie_embedding": True, "num_output_heads": 2}, {"tie_embedding_scale": 2.0},
                                  {"mixture_of_softmax": True, "num_output_heads": 2},
                                  {"return_only_embed": True, "sigsoftmax_logits": True},
                                  {"tie_embedding": True, "to_logits": nn.Linear(32, V)},
                                  {"emb_frac_gradient": 0.0}, {"embed_num_tokens": {"segment": 0}}])
def test_wrapper_options_that_x_transformers_would_ignore_or_break_are_refused(wrap):
    with pytest.raises(ConfigError, match="model."):
        wrapper(**wrap)


def test_embed_num_tokens_sum_extra_embeddings_as_x_transformers_also_when_cached():
    wrap = {"embed_num_tokens": {"segment": 3, "style": 5}, "emb_dim": 24, "post_emb_norm": True}
    ref, ours, x = xt_pair({}, wrap)
    assert {k for k in ours.state_dict() if k.startswith("embeds.")} == {"embeds.segment_embed.weight",
                                                                        "embeds.style_embed.weight"}
    g = torch.Generator().manual_seed(2)
    ids = {"segment": torch.randint(0, 3, x.shape, generator=g), "style": torch.randint(0, 5, x.shape, generator=g)}
    with torch.no_grad():
        want, got = ref(x, embed_ids=ids), ours(x, embed_ids=ids)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert not torch.allclose(ours(x, embed_ids={k: v.flip(1) for k, v in ids.items()}), got)  # they act
        out, cache = ours(x[:, :5], embed_ids={k: v[:, :5] for k, v in ids.items()}, return_intermediates=True)
        steps = [out]
        for t in range(6, 13):  # x-transformers' cached calls: x and embed_ids hold the sequence so far
            out, cache = ours(x[:, :t], cache=cache, embed_ids={k: v[:, :t] for k, v in ids.items()},
                              return_intermediates=True)
            steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=1), got, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="exactly"):
        ours(x, embed_ids={"segment": ids["segment"]})
    with pytest.raises(TypeError, match="embed_num_tokens"):
        wrapper()(x, embed_ids=ids)


def test_ff_custom_activation_takes_x_transformers_relu_squared_and_matches_it():
    xt = pytest.importorskip("x_transformers")
    act = xt.x_transformers.ReluSquared()
    assert wrapper({"ff_custom_activation": act}).cfg.ff_activation == "relu_squared"
    ref, ours, x = xt_pair({"ff_custom_activation": act, "ff_glu": True}, {})
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)

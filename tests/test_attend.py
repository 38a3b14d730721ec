"""Attention-kernel properties the option matrix cannot see: straight-through gradients (the
forward equals the plain kernel's), Gumbel-softmax sampling in training only, and selective
attention's cached gates under a rewound or reordered cache."""

from __future__ import annotations

import pytest
import torch
from conftest import reinit

from arlm import Decoder, TransformerWrapper
from arlm.model.attend import attention_weights

V, SEQ = 40, 24


def masked_logits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal logits (1, 2, 6, 6), -inf above the diagonal, as a leaf that collects gradients."""
    s = torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(seed))
    visible = torch.ones(6, 6, dtype=torch.bool).tril()
    return s.masked_fill(~visible, float("-inf")).requires_grad_(), visible


def weights(s, kind="softmax", training=False, **kw):
    opts = dict(topk=None, straight_through=False, training=training, temp=1.0, hard=True)
    return attention_weights(s, kind, **{**opts, **kw})


def grad_of(w, s) -> torch.Tensor:
    target = torch.randn(w.shape, generator=torch.Generator().manual_seed(9))
    (g,) = torch.autograd.grad((w * target).sum(), s)
    return g


def test_hard_attention_is_one_hot_forward_with_a_dense_softmax_gradient():
    s, visible = masked_logits()
    w = weights(s, "hard")
    one_hot = torch.nn.functional.one_hot(s.argmax(-1), 6).float()
    assert torch.equal(w, one_hot)
    g = grad_of(w, s)
    assert torch.equal(g, grad_of(s.softmax(-1), s))  # the softmax's gradient, exactly
    assert (g[..., 3, :4] != 0).all()  # every visible key of query 3 gets a gradient
    assert not g[..., ~visible].any()


def test_topk_straight_through_keeps_the_sparse_forward_and_reaches_dropped_keys():
    s, visible = masked_logits(1)
    sparse = weights(s, topk=2)
    through = weights(s, topk=2, straight_through=True)
    assert torch.equal(through, sparse)
    dropped = visible & (sparse[0, 0] == 0)  # visible keys outside the top 2 of head 0
    assert dropped.any()
    assert not grad_of(sparse, s)[0, 0][dropped].any()
    assert (grad_of(through, s)[0, 0][dropped] != 0).all()


@pytest.mark.parametrize("hard", [True, False])
def test_gumbel_softmax_samples_in_training_and_takes_the_mode_in_eval(hard):
    s, visible = masked_logits(2)
    torch.manual_seed(0)
    a, b = weights(s, "gumbel", training=True, hard=hard), weights(s, "gumbel", training=True, hard=hard)
    assert not torch.equal(a, b)  # sampled
    for w in (a, b):
        assert not w[..., ~visible].any()
        torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 6))
    e = weights(s, "gumbel", temp=0.5, hard=hard)
    assert torch.equal(e, weights(s, "gumbel", temp=0.5, hard=hard))
    want = weights(s, "hard") if hard else (s / 0.5).softmax(-1)
    assert torch.equal(e, want)


def net(seed: int = 0, **kw) -> TransformerWrapper:
    torch.manual_seed(seed)
    m = TransformerWrapper(num_tokens=V, max_seq_len=SEQ,
                           attn_layers=Decoder(dim=32, depth=2, heads=2, attn_dim_head=16, **kw))
    reinit(m, "gpt2", seed)  # the tolerances here were set on GPT-2's N(0, 0.02) init (smaller logits)
    with torch.no_grad():  # larger logits, so the selective gates are far from zero
        for b in m.blocks:
            b.attn.qkv.weight.mul_(8.0)
    return m.eval()


def test_eval_gumbel_softmax_is_hard_attention():
    gumbel, hard = net(attn_gumbel_softmax=True), net(attn_hard=True)
    hard.load_state_dict(gumbel.state_dict())
    x = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(gumbel(x), hard(x))


def test_selective_attention_changes_the_logits():
    sel, plain = net(attn_selective=True), net()
    plain.load_state_dict(sel.state_dict())
    x = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (sel(x) - plain(x)).abs().max() > 1e-2


@pytest.mark.parametrize("eager", [False, True])
def test_selective_gates_survive_a_rewound_and_a_reordered_cache(eager):
    """Speculative decoding rewinds the cursor; beam search reorders rows. The gates are kept per
    query slot, so both stay exact."""
    m = net(attn_selective=True)
    slots = (lambda a, b: a) if eager else (lambda a, b: torch.arange(a, b))
    x = torch.randint(0, V, (2, 14), generator=torch.Generator().manual_seed(4))
    y = x.clone()
    y[:, 9:] = (y[:, 9:] + 7) % V  # a rejected draft from slot 9 on
    with torch.no_grad():
        cache = m.new_cache(2, SEQ)
        m(y[:, :8], input_pos=slots(0, 8), cache=cache)
        m(y[:, 8:12], input_pos=slots(8, 12), cache=cache)  # drafts 9..11 enter the cache
        out = [m(x[:, 9:11], input_pos=slots(9, 11), cache=cache)]  # rewind to slot 9
        cache.reorder(torch.tensor([1, 0]))
        out.append(m(x.flip(0)[:, 11:14], input_pos=slots(11, 14), cache=cache))
        full = m(x)
    torch.testing.assert_close(out[0], full[:, 9:11], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], full.flip(0)[:, 11:14], atol=1e-5, rtol=0)


@pytest.mark.parametrize("wrap", [{}, {"num_memory_tokens": 3}])
@pytest.mark.parametrize("eager", [False, True])
def test_selective_left_padded_row_equals_its_solo_run(wrap, eager):
    """A left-padding query sees the memory tokens (and itself) only; it must lower nothing, or
    its gates on the memory tokens reach the row's real queries. Every weight moved off its init
    (the memory tokens too) and a long row, so the padding queries' gates on the memory keys are
    clearly non-zero and every real query reads them."""
    torch.manual_seed(0)
    m = TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(
        dim=32, depth=2, heads=2, attn_dim_head=16, attn_selective=True, rotary_pos_emb=True), **wrap)
    m.init_weights(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    m.eval()
    slots = (lambda a, b: a) if eager else (lambda a, b: torch.arange(a, b))
    pad, n = 5, 14
    g = torch.Generator().manual_seed(7)
    short, long_ = torch.randint(0, V, (n,), generator=g), torch.randint(0, V, (pad + n,), generator=g)
    batch = torch.stack((torch.cat((torch.zeros(pad, dtype=torch.long), short)), long_))
    start = torch.tensor([pad, 0])
    with torch.no_grad():
        solo, other = m(short[None])[0], m(long_[None])[0]
        out = m(batch, start=start)
        torch.testing.assert_close(out[0, pad:], solo, atol=1e-5, rtol=0)
        torch.testing.assert_close(out[1], other, atol=1e-5, rtol=0)
        cache = m.new_cache(2, SEQ)  # the padding and the first real token, then one token at a time
        steps = [m(batch[:, :pad + 1], input_pos=slots(0, pad + 1), cache=cache, start=start)]
        steps += [m(batch[:, t:t + 1], input_pos=slots(t, t + 1), cache=cache, start=start)
                  for t in range(pad + 1, pad + n)]
        out = torch.cat(steps, dim=1)
        torch.testing.assert_close(out[0, pad:], solo, atol=1e-5, rtol=0)
        torch.testing.assert_close(out[1], other, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw, match", [
    ({"attn_sigmoid": True, "attn_hard": True}, "choose one attention function"),
    ({"attn_l2_distance": True, "attn_sparse_topk": 2}, "choose one attention function"),
    ({"attn_sparse_topk_straight_through": True}, "needs model.attn_sparse_topk"),
    ({"attn_gumbel_softmax": True, "attn_gumbel_softmax_temp": 0.0}, "attn_gumbel_softmax_temp must be > 0"),
    ({"attn_laser": True, "attn_laser_softclamp_value": -1.0}, "attn_laser_softclamp_value must be > 0"),
])
def test_attention_function_options_are_validated(kw, match):
    from arlm import ConfigError

    with pytest.raises(ConfigError, match=match):
        TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(dim=32, depth=1, heads=2, **kw))


@pytest.mark.parametrize("name", ["attn_selective", "attn_l2_distance", "attn_cog_signed", "attn_sigmoid", "attn_laser",
                                  "hard_selective_rel_pos"])
def test_attention_z_loss_of_the_kernel_options_matches_x_transformers(name):
    """The z-loss reads the logits the weights come from (after the cog sign and the selection)."""
    pytest.importorskip("x_transformers")
    from test_x_transformers_parity import converted

    ref, ours, x = converted(name)
    with torch.no_grad():
        _, inter = ref(x, return_attn_z_loss=True, return_intermediates=True)
        z = ours(x, return_attn_z_loss=True)[1].attn_z_loss  # (logits, intermediates), as x-transformers
    torch.testing.assert_close(z, inter.attn_z_loss, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("name", ["attn_sigmoid", "attn_cog_signed", "attn_hard", "attn_selective",
                                  "attn_pre_scale_post_talking_heads", "attn_l2_distance"])
def test_attention_maps_of_the_kernel_options_match_x_transformers(name):
    """return_attn gives the weights the kernel used (not a softmax of the logits for sigmoid,
    hard or signed attention)."""
    pytest.importorskip("x_transformers")
    from test_x_transformers_parity import converted

    ref, ours, x = converted(name)
    with torch.no_grad():
        _, maps = ours(x, return_attn=True)
        _, want = ref(x, return_attn=True)
    for m, r in zip(maps, want, strict=True):
        torch.testing.assert_close(m, r, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw", [{"attn_selective": True}, {"attn_selective": True, "attn_num_mem_kv": 1},
                                {"attn_l2_distance": True, "attn_laser": True}])
def test_growing_intermediates_cache_keeps_the_kernel_state(kw):
    """Decoding through ``cache=`` / ``return_intermediates`` grows the cache (16, 32, ... slots):
    the selective gates move with the keys."""
    m = TransformerWrapper(num_tokens=V, max_seq_len=40, attn_layers=Decoder(dim=32, depth=2, heads=2,
                                                                               attn_dim_head=16, **kw)).eval()
    reinit(m, "gpt2")  # the tolerance here was set on GPT-2's N(0, 0.02) init (smaller logits)
    with torch.no_grad():
        for b in m.blocks:
            b.attn.qkv.weight.mul_(8.0)
    x = torch.randint(0, V, (2, 36), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = m(x)
        logits, cache = m(x[:, :5], return_intermediates=True)
        steps = [logits]
        for t in range(5, 36, 3):
            logits, cache = m(x[:, :t + 3], cache=cache, return_intermediates=True)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_speculative_decoding_with_selective_attention_equals_greedy_decoding():
    """Speculative decoding rewinds the target's cache past rejected drafts: the kept gates must
    not remember them. At temperature 0 the output is the target's greedy output."""
    from arlm import AutoregressiveWrapper

    target = AutoregressiveWrapper(net(attn_selective=True))
    draft = net(seed=1, attn_selective=True)  # a different model: drafts get rejected
    prompts = torch.randint(0, V, (2, 4), generator=torch.Generator().manual_seed(6))
    greedy = target.generate(prompts, 12, temperature=0.0, cache_kv=False)
    spec = target.generate(prompts, 12, temperature=0.0, draft_model=draft, num_draft_tokens=3)
    assert 0 < target.last_stats["acceptance_rate"] < 1
    assert torch.equal(spec, greedy)

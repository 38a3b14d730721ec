"""The lower-level x-transformers API that scripts drive directly: ``TransformerWrapper.forward``'s
keywords (step-by-step decoding through ``cache`` / ``return_intermediates``, masks, positions,
prepended and summed embeddings, the return flags, attention maps), QK-clip, the
``AutoregressiveWrapper`` extras and beam search's output layout. Where x-transformers has the
feature, the same weights (converted) must give the same numbers."""

from __future__ import annotations

import warnings

import pytest
import torch

xt = pytest.importorskip("x_transformers")

from arlm import AutoregressiveWrapper, Decoder, TransformerWrapper  # noqa: E402
from arlm.export.x_transformers import convert_state_dict  # noqa: E402
from conftest import live_init  # noqa: E402
from test_options import OPTIONS  # noqa: E402  (the one option matrix)

V, SEQ = 40, 48
BASE = dict(dim=32, depth=2, heads=2, attn_dim_head=16)
ATOL = 1e-5


def pair(dec: dict | None = None, wrap: dict | None = None, seed: int = 0):
    """(x-transformers model with perturbed weights, arlm model with the converted weights), eval mode."""
    dec, wrap = {**BASE, **(dec or {})}, wrap or {}
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = xt.TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=xt.Decoder(**dec), **wrap)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(**dec), **wrap)
    ours.load_state_dict(convert_state_dict(ref.state_dict(), ours))
    return ref.eval(), ours.eval()


def ids(b: int, t: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def close(a, b, atol=ATOL, rtol=0.0):
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


# ---------------------------------------------------------------- cached decoding, the x-transformers way

# name -> (Decoder kwargs, TransformerWrapper kwargs, x-transformers' own cache is exact for it)
CACHE_CONFIGS = {
    "absolute": ({}, {}, True),
    "rotary": ({"rotary_pos_emb": True}, {}, True),
    "alibi": ({"alibi_pos_bias": True}, {}, True),
    "gqa_mem_kv": ({"heads": 4, "attn_kv_heads": 2, "attn_num_mem_kv": 2}, {}, True),
    "memory_tokens": ({"rotary_pos_emb": True}, {"num_memory_tokens": 2}, False),  # x-transformers' cache fails
    "shift_tokens": ({"shift_tokens": 1}, {}, False),
}


@pytest.mark.parametrize("name", list(CACHE_CONFIGS))
def test_step_by_step_cache_equals_full_forward_and_x_transformers(name):
    dec, wrap, xt_caches = CACHE_CONFIGS[name]
    ref, ours = pair(dec, wrap)
    x = ids(2, 40)  # past the first cache sizes (16, 32): the cache grows twice
    with torch.no_grad():
        want = ref(x)
        full = ours(x)
        close(full, want)
        logits, cache = ours(x[:, :5], return_intermediates=True)
        steps, t = [logits], 5
        for size in (1, 2, 1, 3) * 10:  # whole sequence each time; several new tokens per call too
            if t >= 40:
                break
            t2 = min(40, t + size)
            logits, cache = ours(x[:, :t2], cache=cache, return_intermediates=True)
            assert logits.shape == (2, t2 - t, V) and cache.cache_length == t2
            steps.append(logits)
            t = t2
        close(torch.cat(steps, dim=1), full)
        if not xt_caches:
            return
        # x-transformers' own one-token cached steps agree with ours
        r_logits, r_cache = ref(x[:, :30], return_intermediates=True)
        o_logits, o_cache = ours(x[:, :30], return_intermediates=True)
        for t in range(31, 35):
            r_logits, r_cache = ref(x[:, :t], cache=r_cache, return_intermediates=True)
            o_logits, o_cache = ours(x[:, :t], cache=o_cache, return_intermediates=True)
            close(o_logits, r_logits)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_option_decodes_through_the_returned_cache_exactly(name):
    """For every option of the matrix: prefill, then steps of 1-3 tokens through ``cache=``, past
    the first cache sizes (the cache grows), and a continuation of an older cache (copied on
    write), all equal the full forward."""
    dec, wrap, _ = OPTIONS[name]
    torch.manual_seed(0)
    net = live_init(TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(**{**BASE, **dec}), **wrap)).eval()
    x = ids(2, 21, seed=11)
    with torch.no_grad():
        full = net(x)
        logits, cache = net(x[:, :7], return_intermediates=True)
        steps, t, older = [logits], 7, None
        for size in (1, 3, 2, 1, 3, 1, 2, 1):
            if t == 11:
                older = cache
            logits, cache = net(x[:, :t + size], cache=cache, return_intermediates=True)
            steps.append(logits)
            t += size
        close(torch.cat(steps, dim=1), full, rtol=1e-4)  # live init: logits of order 1, float32 sums
        assert older is not None and older.cache_length == 11
        again, _ = net(x[:, :14], cache=older, return_intermediates=True)
        close(again, full[:, 11:14], rtol=1e-4)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_option_keeps_a_mask_exactly_through_the_cache(name):
    """The key mask under the cache (arlm's own path): steps after a masked prefill, with the mask
    given again or remembered, equal the masked full forward on the real rows."""
    dec, wrap, _ = OPTIONS[name]
    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(**{**BASE, **dec}), **wrap).eval()
    x = ids(2, 16, seed=12)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, 4] = False
    mask[1, :2] = False
    mask[1, 11] = False
    if any(getattr(net.cfg, n) for n in MASK_REFUSED):
        with pytest.raises(ValueError, match="seq_start_pos"):
            net(x[:, :6], mask=mask[:, :6], return_intermediates=True)
        return
    with torch.no_grad():
        full = net(x, mask=mask)
        logits, cache = net(x[:, :6], mask=mask[:, :6], return_intermediates=True)
        steps = [logits]
        for t, size in ((6, 3), (9, 1), (10, 4), (14, 2)):
            given = mask[:, :t + size] if t != 9 else None  # once remembered only
            logits, cache = net(x[:, :t + size], mask=given, cache=cache, return_intermediates=True)
            steps.append(logits)
    got = torch.cat(steps, dim=1)
    close(got[mask], full[mask])


def test_input_not_include_cache_feeds_only_new_tokens():
    ref, ours = pair({"rotary_pos_emb": True})
    x = ids(2, 12)
    inc = TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(**BASE, rotary_pos_emb=True),
                             input_not_include_cache=True).eval()
    inc.load_state_dict(ours.state_dict())
    with torch.no_grad():
        full = ours(x)
        _, cache = ours(x[:, :4], return_intermediates=True)
        a, cache = ours(x[:, 4:7], cache=cache, return_intermediates=True, input_not_include_cache=True)
        _, cache2 = inc(x[:, :7], return_intermediates=True)
        b, _ = inc(x[:, 7:9], cache=cache2, return_intermediates=True)  # the constructor default
        close(a, full[:, 4:7])
        close(b, full[:, 7:9])
        # x-transformers, one token at a time
        _, rc = ref(x[:, :4], return_intermediates=True)
        r, _ = ref(x[:, 4:5], cache=rc, return_intermediates=True, input_not_include_cache=True)
        close(r[:, -1], full[:, 4])


def test_two_continuations_of_one_cache_do_not_disturb_each_other():
    _, ours = pair({"rotary_pos_emb": True})
    x, y = ids(1, 10, seed=2), ids(1, 10, seed=3)
    y[:, :6] = x[:, :6]
    with torch.no_grad():
        _, shared = ours(x[:, :6], return_intermediates=True)
        _, cx = ours(x[:, :8], cache=shared, return_intermediates=True)
        _, cy = ours(y[:, :8], cache=shared, return_intermediates=True)  # writes the same slots
        lx, _ = ours(x[:, :10], cache=cx, return_intermediates=True)
        ly, _ = ours(y[:, :10], cache=cy, return_intermediates=True)
        close(lx, ours(x)[:, 8:])
        close(ly, ours(y)[:, 8:])


def test_cache_errors_are_clear():
    _, ours = pair()
    x = ids(2, 8)
    with torch.no_grad():
        _, cache = ours(x, return_intermediates=True)
        with pytest.raises(ValueError, match="nothing new"):
            ours(x, cache=cache, return_intermediates=True)
        with pytest.raises(ValueError, match="max_seq_len"):
            ours(ids(2, SEQ + 1), cache=cache, return_intermediates=True)
        with pytest.raises(TypeError, match="intermediates object"):
            ours(x, cache=object())
        with pytest.raises(ValueError, match="another model"):
            pair()[1](ids(2, 9), cache=cache)
    ours.train()
    _, nocache = ours(x, return_intermediates=True)  # training with gradients: no cache is kept
    with pytest.raises(ValueError, match="no KV cache"):
        ours(ids(2, 9), cache=nocache)


# ---------------------------------------------------------------- masks, padding and positions

@pytest.mark.parametrize("dec,wrap", [({}, {}), ({"alibi_pos_bias": True, "attn_num_mem_kv": 2}, {}),
                                      ({"rotary_pos_emb": True}, {"num_memory_tokens": 2})])
def test_mask_hides_keys_as_x_transformers_any_pattern_and_under_the_cache(dec, wrap):
    ref, ours = pair(dec, wrap)  # absolute positions first: a mask must not shift them
    x = ids(2, 14)
    mask = torch.ones(2, 14, dtype=torch.bool)
    mask[0, :3] = False  # leading
    mask[0, 6] = False  # a hole
    mask[1, 11:] = False  # trailing
    real = mask.clone()
    with torch.no_grad():
        want, got = ref(x, mask=mask), ours(x, mask=mask)
        close(got[real], want[real])
        assert not torch.allclose(got[0, 7:], ours(x)[0, 7:])  # the mask is in effect
        # cached: the first call's mask is remembered for the keys it covers
        _, cache = ours(x[:, :9], mask=mask[:, :9], return_intermediates=True)
        steps = []
        for t in range(10, 15):
            step, cache = ours(x[:, :t], cache=cache, mask=mask[:, :t], return_intermediates=True)
            steps.append(step)
        got = torch.cat(steps, dim=1)
        close(got[real[:, 9:]], want[:, 9:][real[:, 9:]])
        _, cache = ours(x[:, :9], mask=mask[:, :9], return_intermediates=True)
        step, _ = ours(x[:, :10], cache=cache, return_intermediates=True)  # no mask given: remembered
        close(step[:, 0], want[:, 9])


MASK_REFUSED = ("shift_tokens", "data_dependent_alibi", "cope", "attn_selective")


@pytest.mark.parametrize("name", [n for n, (_, _, twin) in OPTIONS.items() if twin])
def test_every_twin_option_hides_masked_keys_as_x_transformers(name):
    """A mask with a hole and a left pad: real rows equal x-transformers' for every option with a
    twin, or the mask is refused clearly where x-transformers' treatment is not reproduced."""
    dec, wrap, _ = OPTIONS[name]
    ref, ours = pair(dec, wrap)
    x = ids(2, 20)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[0, 5] = False
    mask[1, :3] = False
    if any(getattr(ours.cfg, n) for n in MASK_REFUSED):
        with pytest.raises(ValueError, match="seq_start_pos"):
            ours(x, mask=mask)
        return
    with torch.no_grad():
        close(ours(x, mask=mask)[mask], ref(x, mask=mask)[mask], atol=1e-4)


@pytest.mark.parametrize("name", [n for n, (_, _, twin) in OPTIONS.items() if twin])
def test_every_twin_option_gives_left_padded_rows_what_x_transformers_gives_them_alone(name):
    """``seq_start_pos`` means each left-padded row is computed as if alone: equal to
    x-transformers' unpadded run. (x-transformers' own padded rows differ from its solo rows with
    memory tokens, whose slots its padding mask hides, token shifting, which shifts pads in, and
    a few more; arlm keeps the meaning.)"""
    dec, wrap, _ = OPTIONS[name]
    ref, ours = pair(dec, wrap)
    x, start = ids(2, 20), torch.tensor([3, 0])
    with torch.no_grad():
        got = ours(x, seq_start_pos=start)
        close(got[0, 3:], ref(x[:1, 3:])[0], atol=1e-4)
        close(got[1], ref(x[1:])[0], atol=1e-4)


def test_seq_start_pos_matches_x_transformers_and_solo_rows():
    ref, ours = pair()
    short, long_ = ids(1, 6, seed=4)[0], ids(1, 10, seed=5)[0]
    x = torch.stack((torch.cat((torch.zeros(4, dtype=torch.long), short)), long_))
    start = torch.tensor([4, 0])
    with torch.no_grad():
        want, got = ref(x, seq_start_pos=start), ours(x, seq_start_pos=start)
        close(got[0, 4:], want[0, 4:])
        close(got[1], want[1])
        close(got[0, 4:], ours(short[None])[0])
        _, cache = ours(x[:, :7], seq_start_pos=start, return_intermediates=True)
        nxt = torch.cat((x, ids(2, 1, seed=6)), dim=1)
        step, _ = ours(nxt, cache=cache, seq_start_pos=start, return_intermediates=True)
        close(step[:, 0], ours(nxt[:, :8], seq_start_pos=start)[:, -1])
        with pytest.raises(ValueError, match="differs"):
            ours(nxt, cache=cache, seq_start_pos=torch.tensor([1, 0]))


@pytest.mark.parametrize("dec", [{}, {"rotary_pos_emb": True}, {"alibi_pos_bias": True}])
def test_custom_positions_match_x_transformers(dec):
    ref, ours = pair(dec)
    x = ids(2, 10)
    pos = torch.arange(10) * 2 + 3
    with torch.no_grad():
        want, got = ref(x, pos=pos), ours(x, pos=pos)
        close(got, want)
        assert not torch.allclose(got, ours(x), atol=1e-4)
        if not dec.get("alibi_pos_bias"):
            _, cache = ours(x[:, :6], pos=pos[:6], return_intermediates=True)
            step, _ = ours(x, pos=pos, cache=cache, return_intermediates=True)
            close(step, want[:, 6:])


@pytest.mark.parametrize("name", [n for n, (_, _, twin) in OPTIONS.items() if twin])
def test_every_twin_option_takes_custom_positions_as_x_transformers_or_refuses_them(name):
    dec, wrap, _ = OPTIONS[name]
    ref, ours = pair(dec, wrap)
    x, pos = ids(2, 12), torch.arange(12) * 2 + 3
    cfg = ours.cfg
    if (cfg.num_memory_tokens or cfg.pos_bias in ("t5", "dynamic") or cfg.rel_proj_pos_bias
            or cfg.max_attend_past is not None):
        with pytest.raises(ValueError, match="custom pos"):
            ours(x, pos=pos)
        return
    with torch.no_grad():
        full = ours(x, pos=pos)
        close(full, ref(x, pos=pos), atol=1e-4)
        if cfg.pos_bias != "alibi":
            _, cache = ours(x[:, :7], pos=pos[:7], return_intermediates=True)
            step, _ = ours(x, pos=pos, cache=cache, return_intermediates=True)
            close(step, full[:, 7:])


@pytest.mark.parametrize("name", [n for n, (_, _, twin) in OPTIONS.items() if twin])
def test_every_twin_option_takes_sum_embeds_as_x_transformers(name):
    dec, wrap, _ = OPTIONS[name]
    ref, ours = pair(dec, wrap)
    width = ours.token_emb.weight.shape[1]
    x, extra = ids(2, 12), torch.randn(2, 12, width, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        full = ours(x, sum_embeds=extra)
        close(full, ref(x, sum_embeds=extra), atol=1e-4)
        _, cache = ours(x[:, :5], sum_embeds=extra[:, :5], return_intermediates=True)
        step, _ = ours(x, sum_embeds=extra, cache=cache, return_intermediates=True)
        close(step, full[:, 5:])


def test_sum_embeds_match_x_transformers():
    ref, ours = pair({"rotary_pos_emb": True}, {"post_emb_norm": True})
    x, extra = ids(2, 9), torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        close(ours(x, sum_embeds=extra), ref(x, sum_embeds=extra))


@pytest.mark.parametrize("dec,wrap", [({}, {}), ({"rotary_pos_emb": True}, {"num_memory_tokens": 2})])
def test_prepend_embeds_match_x_transformers_and_decode_from_the_cache(dec, wrap):
    ref, ours = pair(dec, wrap)
    x, pre = ids(2, 8), torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(8))
    pmask = torch.tensor([[True, False, True], [True, True, True]])
    with torch.no_grad():
        want, got = ref(x, prepend_embeds=pre), ours(x, prepend_embeds=pre)
        assert got.shape == (2, 11, V)
        close(got, want)
        real = torch.cat((pmask, torch.ones(2, 8, dtype=torch.bool)), dim=1)  # hidden rows' own outputs differ
        masked = ours(x, prepend_embeds=pre, prepend_mask=pmask)
        close(masked[real], ref(x, prepend_embeds=pre, prepend_mask=pmask)[real])
        assert not torch.allclose(masked[:, 3:], want[:, 3:])
        close(ours(x, prepend_embeds=pre, excise_prepend_embeds=True), want[:, 3:])
        _, cache = ours(x[:, :5], prepend_embeds=pre, return_intermediates=True)
        assert cache.cache_length == 8
        step, cache = ours(x[:, :7], prepend_embeds=pre, cache=cache, return_intermediates=True)
        step2, _ = ours(x, cache=cache, return_intermediates=True)  # repeating prepend_embeds is optional
        close(torch.cat((step, step2), dim=1), want[:, 8:])


@pytest.mark.parametrize("name", [n for n, (_, _, twin) in OPTIONS.items() if twin])
def test_every_twin_option_takes_prepend_embeds_as_x_transformers(name):
    dec, wrap, _ = OPTIONS[name]
    ref, ours = pair(dec, wrap)
    width = ours.token_emb.weight.shape[1]  # emb_dim: prepended rows join before the projection
    x, pre = ids(2, 12), torch.randn(2, 3, width, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        full = ours(x, prepend_embeds=pre)
        if not ours.cfg.ff_deep_embed:  # x-transformers' deep embeddings fail with prepended rows
            close(full, ref(x, prepend_embeds=pre), atol=1e-4)
        _, cache = ours(x[:, :6], prepend_embeds=pre, return_intermediates=True)
        step, _ = ours(x, cache=cache, return_intermediates=True)
        close(step, full[:, 9:])


def test_embed_ids_and_float_pos_are_refused_clearly():
    _, ours = pair()
    with pytest.raises(TypeError, match="embed_num_tokens"):
        ours(ids(1, 4), embed_ids={"a": ids(1, 4)})
    with pytest.raises(TypeError, match="integer positions"):
        ours(ids(1, 4), pos=torch.randn(4))


# ---------------------------------------------------------------- what comes back

def test_return_flags_match_x_transformers():
    ref, ours = pair({"rotary_pos_emb": True})
    x = ids(2, 9)
    with torch.no_grad():
        close(ours(x, return_embeddings=True), ref(x, return_embeddings=True))
        (l, e), (rl, re_) = ours(x, return_logits_and_embeddings=True), ref(x, return_logits_and_embeddings=True)
        close(l, rl), close(e, re_)
        e, inter = ours(x, return_embeddings_and_intermediates=True)
        close(e, re_)
        close(inter.last_hidden, re_)
        _, inter = ours(x, return_logit_entropies=True)
        _, rinter = ref(x, return_logit_entropies=True)
        close(inter.logit_entropies, rinter.logit_entropies)
        _, maps = ours(x, return_attn=True)
        _, rmaps = ref(x, return_attn=True)
        assert len(maps) == len(rmaps) == 2
        for m, r in zip(maps, rmaps):
            close(m, r)
        _, inter = ours(x, return_intermediates=True)
        _, rinter = ref(x, return_intermediates=True)
        assert len(inter.hiddens) == len(rinter.hiddens) == 2
        for h, r in zip(inter.hiddens, rinter.hiddens):
            close(h, r)
        for a, r in zip(inter.attn_intermediates, rinter.attn_intermediates):
            visible = r.pre_softmax_attn > -1e30
            close(a.pre_softmax_attn[visible], r.pre_softmax_attn[visible], atol=1e-4)
            assert torch.isinf(a.pre_softmax_attn[~visible]).all()


@pytest.mark.parametrize("name", [n for n, (_, _, twin) in OPTIONS.items() if twin])
def test_every_twin_option_returns_attention_maps_and_hiddens_as_x_transformers(name):
    dec, wrap, _ = OPTIONS[name]
    ref, ours = pair(dec, wrap)
    x = ids(2, 12)
    with torch.no_grad():
        (_, maps), (_, rmaps) = ours(x, return_attn=True), ref(x, return_attn=True)
        (_, inter), (_, rinter) = ours(x, return_intermediates=True), ref(x, return_intermediates=True)
    assert len(maps) == len(rmaps) and len(inter.hiddens) == len(rinter.hiddens)
    for m, r in zip(maps, rmaps):
        close(m, r, atol=1e-4)
    for h, r in zip(inter.hiddens, rinter.hiddens):
        close(h, r, atol=1e-4)


@pytest.mark.parametrize("name", [n for n, (_, _, twin) in OPTIONS.items() if twin])
def test_every_twin_option_has_x_transformers_attention_z_loss(name):
    dec, wrap, _ = OPTIONS[name]
    ref, ours = pair(dec, wrap)
    x = ids(2, 12)
    with torch.no_grad():
        (_, inter), (_, rinter) = ours(x, return_attn_z_loss=True), ref(x, return_attn_z_loss=True)
    assert float(rinter.attn_z_loss) > 0
    torch.testing.assert_close(inter.attn_z_loss, rinter.attn_z_loss, atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("bad,match", [({"bogus": 1}, "'bogus'"), ({"mems": [torch.zeros(1)]}, "'mems'"),
                                        ({"recycle_steps": 2}, "'recycle_steps'")])
def test_unknown_forward_keywords_are_a_type_error_naming_them(bad, match):
    _, ours = pair()
    with pytest.raises(TypeError, match=match) as err:
        ours(ids(1, 4), **bad)
    assert "Supported: mask" in str(err.value)
    ours(ids(1, 4), mems=None, return_mems=False, recycle_steps=None)  # inert values are accepted


# ---------------------------------------------------------------- QK-clip

def test_qk_clip_scales_each_heads_logits_by_tau_over_its_peak():
    # x-transformers 2.31.10's Attention.qk_clip_ multiplies to_q/to_k weights by a (heads*dim_head,)
    # vector, which broadcasts over the input columns rather than the heads' output rows; arlm scales
    # the rows (the paper's per-head clip), so this checks the mathematics instead of parity
    _, ours = pair()
    x = ids(2, 12)
    with torch.no_grad():
        for blk in ours.blocks:
            blk.attn.qkv.weight.mul_(3.0)
        _, inter = ours(x, return_intermediates=True)
        before = inter.attn_intermediates[0].pre_softmax_attn
        peaks = torch.stack([a.logit_max() for a in inter.attn_intermediates])
        tau = float(peaks.median())
        assert (peaks > tau).any() and (peaks <= tau).any()  # some heads clipped, some not
    ours.attn_qk_clip_(inter, tau=tau)
    with torch.no_grad():
        _, after = ours(x, return_intermediates=True)
    gamma = (tau / peaks[0]).clamp(max=1.0)
    visible = torch.isfinite(before)
    # the first layer's inputs are unchanged: its logits scale by exactly gamma_h per head
    close(after.attn_intermediates[0].pre_softmax_attn[visible],
          (before * gamma[None, :, None, None])[visible], atol=1e-4)
    # through the Decoder spec too, as x-transformers' net.attn_layers.attn_qk_clip_
    ours.attn_layers.attn_qk_clip_(after, tau=tau / 2)
    with torch.no_grad():
        _, again = ours(x, return_intermediates=True)
    assert float(again.attn_intermediates[0].logit_max().max()) <= tau / 2 + 1e-3
    with pytest.raises(ValueError, match="attention calls"):
        ours.attn_qk_clip_(pair({"depth": 3})[1](x, return_intermediates=True)[1], tau=1.0)


def test_qk_clip_with_grouped_kv_heads_scales_each_head_by_its_own_factor():
    _, ours = pair({"heads": 4, "attn_kv_heads": 2})
    x = ids(2, 12)
    with torch.no_grad():
        for blk in ours.blocks:
            blk.attn.qkv.weight.mul_(4.0)
        _, inter = ours(x, return_intermediates=True)
        before = torch.stack([a.logit_max() for a in inter.attn_intermediates])
        tau = float(before.median())
        rows = torch.stack([blk.attn.qkv.weight[:6 * 16].norm(dim=1) for blk in ours.blocks])  # q, k rows
        ours.attn_qk_clip_(inter, tau=tau)
        _, after = ours(x, return_intermediates=True)
        got = torch.stack([a.logit_max() for a in after.attn_intermediates])
        rows_after = torch.stack([blk.attn.qkv.weight[:6 * 16].norm(dim=1) for blk in ours.blocks])
    # the first layer's inputs are unchanged, so its heads' peaks are exactly min(peak, tau)
    close(got[0], before[0].clamp(max=tau), atol=1e-4)
    # shared key heads take their group's mildest factor: no query or key row grows
    assert (rows_after <= rows * (1 + 1e-6)).all() and (rows_after < rows * 0.999).any()


# ---------------------------------------------------------------- AutoregressiveWrapper and beam search

@pytest.mark.parametrize("dec", [{}, {"rotary_pos_emb": True}])
def test_autoregressive_wrapper_prepend_embeds_match_x_transformers(dec):
    ref, ours = pair(dec)
    seq, pre = ids(2, 10), torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(9))
    r, o = xt.AutoregressiveWrapper(ref), AutoregressiveWrapper(ours)
    with torch.no_grad():
        close(o(seq, prepend_embeds=pre), r(seq, prepend_embeds=pre))
        prompt = seq[:, :4]
        got = o.generate(prompt, 6, temperature=0.0, prepend_embeds=pre)
        want = r.generate(prompt, 6, temperature=0.0, prepend_embeds=pre)
        assert torch.equal(got, want)
        assert torch.equal(o.generate(prompt, 6, temperature=0.0, prepend_embeds=pre, cache_kv=False), want)
        assert not torch.equal(got, o.generate(prompt, 6, temperature=0.0))
        close(o.generate(prompt, 1, temperature=0.0, prepend_embeds=pre).float(),
              ours(prompt, prepend_embeds=pre)[:, -1].argmax(-1, keepdim=True).float())


def test_autoregressive_wrapper_lens_and_network_keywords_match_x_transformers():
    ref, ours = pair()
    seq, lens = ids(2, 10), torch.tensor([6, 10])
    r, o = xt.AutoregressiveWrapper(ref), AutoregressiveWrapper(ours)
    with torch.no_grad():
        got = o(seq, lens=lens)
        close(got, r(seq, lens=lens))
        assert not torch.allclose(got, o(seq))
        pos = torch.arange(10) * 2  # per-token keywords cover x, as x-transformers
        close(o(seq, pos=pos), r(seq, pos=pos))
        loss, (logits, inter) = o(seq, return_outputs=True)  # x-transformers' layout
        rloss, (rlogits, _) = r(seq, return_outputs=True)
        close(loss, rloss), close(logits, rlogits)
        assert len(inter.attn_intermediates) == 2


def test_beam_search_layout_is_x_transformers_beams_first_by_default():
    ref, ours = pair({"rotary_pos_emb": True})
    prompt = ids(2, 5)
    r, o = xt.AutoregressiveWrapper(ref), AutoregressiveWrapper(ours)
    with torch.no_grad():
        seqs, scores = o.beam_search(prompt, 4, beams=3, return_beams_and_scores=True)
        rseqs, rscores = r.beam_search(prompt, 4, beams=3, return_beams_and_scores=True)
        assert seqs.shape == rseqs.shape == (3, 2, 4) and scores.shape == rscores.shape == (3, 2)
        assert torch.equal(seqs[0], rseqs[0])  # the best beam agrees
        bseqs, bscores = o.beam_search(prompt, 4, beams=3, return_beams_and_scores=True, beams_first=False)
        assert torch.equal(bseqs, seqs.transpose(0, 1)) and torch.equal(bscores, scores.t())

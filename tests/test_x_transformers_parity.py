"""Ours = reference: for every option with an x-transformers twin, build both libraries with the
same keyword arguments, randomise x-transformers' weights, convert them, and compare logits in
fp32 eval mode."""

from __future__ import annotations

import warnings

import pytest
import torch

xt = pytest.importorskip("x_transformers")

from test_options import BASE, OPTIONS, SEQ, V  # noqa: E402  (the one option matrix)

from arlm import Decoder, TransformerWrapper  # noqa: E402
from arlm.export.x_transformers import convert_state_dict  # noqa: E402

PARITY = [name for name, (_, _, twin) in OPTIONS.items() if twin]




def reference(dec: dict, wrap: dict, seed: int):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = xt.TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=xt.Decoder(**{**BASE, **dec}), **wrap)
    with torch.no_grad():
        # move every weight off its init (zero-init outputs, unit gains, identity talking heads)
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return ref.eval()


def converted(name: str):
    """(x-transformers model, arlm model with its converted weights, a batch of ids) for an option."""
    dec, wrap, _ = OPTIONS[name]
    ref = reference(dec, wrap, seed=0)
    ours = TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(**{**BASE, **dec}), **wrap).eval()
    ours.load_state_dict(convert_state_dict(ref.state_dict(), ours))
    return ref, ours, torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", PARITY)
def test_logits_match_x_transformers_after_conversion(name):
    ref, ours, x = converted(name)
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert want.std() > 1e-2  # a degenerate reference would make the comparison vacuous
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_conversion_refuses_a_mismatched_model():
    ref = reference({"ff_glu": True}, {}, seed=0)
    ours = TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(**BASE))
    with pytest.raises(ValueError, match="same keyword arguments"):
        convert_state_dict(ref.state_dict(), ours)
    extra = dict(ref.state_dict(), **{"attn_layers.layers.0.1.surprise": torch.zeros(1)})
    with pytest.raises(ValueError, match="surprise"):
        convert_state_dict(extra, TransformerWrapper(num_tokens=V, max_seq_len=SEQ,
                                                     attn_layers=Decoder(**{**BASE, "ff_glu": True})))


def test_padded_vocabulary_rows_are_zero_and_logits_still_match():
    from arlm import ModelConfig, Transformer

    ref = reference({}, {}, seed=2)
    base = TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(**BASE))
    cfg = ModelConfig(**{**base.cfg.__dict__, "vocab_pad_multiple": 32})
    ours = Transformer(cfg).eval()
    sd = convert_state_dict(ref.state_dict(), ours)
    assert sd["token_emb.weight"].shape[0] == 64 and not sd["token_emb.weight"][V:].any()
    ours.load_state_dict(sd)
    x = torch.randint(0, V, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["baseline", "rotary_pos_emb", "alibi_pos_bias", "attn_softclamp_logits", "attn_kv_heads",
                                  # a learned sink is one more logit in every softmax, so it counts here too
                                  "attn_head_learned_sink", "sink_gqa_memkv_zerokv_alibi", "attn_latent_rope_subheads",
                                  "hybrid_gates_swiglu_values"])
def test_attention_z_loss_matches_x_transformers(name):
    ref, ours, x = converted(name)
    with torch.no_grad():
        _, inter = ref(x, return_attn_z_loss=True, return_intermediates=True)
        z = ours(x, return_attn_z_loss=True)[1].attn_z_loss  # (logits, intermediates), as x-transformers
    assert float(z) > 0
    torch.testing.assert_close(z, inter.attn_z_loss, atol=1e-7, rtol=1e-5)

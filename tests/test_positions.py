"""Position options whose parameters start at (or near) zero -- CoPE's position embeddings,
PoPE's phase offsets, the distance-basis bank, the forget-gate biases -- would pass the option
matrix at their init whatever their cache or padding handling. Here the same checks run with every
weight moved off its init, so the option's own state is exercised."""

from __future__ import annotations

import pytest
import torch

import test_options
from test_options import POSITIONS

# entries whose option is inert or nearly so at init
PERTURBED = [name for name in POSITIONS if any(k in name for k in ("cope", "polar", "rel_proj", "data_dependent"))]


@pytest.mark.parametrize("check", [test_options.test_causal_and_cache_exact,
                                   test_options.test_left_padded_rows_equal_solo_rows])
@pytest.mark.parametrize("name", PERTURBED)
def test_position_option_with_perturbed_weights(name, check, monkeypatch):
    monkeypatch.setattr(test_options, "build", test_options.off_init(test_options.build))
    check(name)


def test_rel_pos_kwargs_refuses_keys_it_cannot_map():
    from arlm import Decoder, TransformerWrapper

    def wrap(**dec):
        return TransformerWrapper(num_tokens=8, max_seq_len=8, attn_layers=Decoder(dim=16, depth=1, heads=2, **dec))

    assert wrap(alibi_pos_bias=True, rel_pos_kwargs={"slopes": [0.5, 0.25]}).cfg.alibi_slopes == [0.5, 0.25]
    with pytest.raises(TypeError, match="'scale'"):
        wrap(rel_pos_bias=True, rel_pos_kwargs={"scale": 2.0})
    with pytest.raises(TypeError, match="'slopes'"):
        wrap(rel_pos_kwargs={"slopes": [0.5, 0.25]})
    with pytest.raises(TypeError, match="'bias_init'"):
        wrap(attn_data_dependent_alibi=True, attn_data_dependent_alibi_per_row=True,
             attn_data_dependent_alibi_kwargs={"bias_init": 1.0})


@pytest.mark.parametrize("dec", [
    {"attn_data_dependent_alibi": True, "attn_data_dependent_alibi_kwargs": {"bias_init": 0.0}},
    {"attn_data_dependent_alibi": True, "attn_data_dependent_alibi_per_row": True},
    {"attn_use_cope": True, "attn_cope_max_pos": 4, "rotary_pos_emb": True},
], ids=["forget_gates", "forget_gates_per_row", "cope"])
def test_cached_generation_beams_and_drafts_equal_recomputation(dec):
    # the options' cache state (log gates, per-row keys) must follow beam reordering and the
    # slot rewrites of speculative decoding
    from arlm import AutoregressiveWrapper, Decoder, TransformerWrapper

    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=32, max_seq_len=40, attn_layers=Decoder(dim=32, depth=2, heads=2, **dec))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        net.head.weight.mul_(20)  # greedy paths far from ties
    model = AutoregressiveWrapper(net).eval()
    prompts = [torch.randint(0, 32, (n,), generator=g) for n in (3, 7)]
    greedy = model.generate(prompts, 10, temperature=0.0, cache_kv=False)
    assert torch.equal(model.generate(prompts, 10, temperature=0.0), greedy)
    assert torch.equal(model.generate(prompts, 10, temperature=0.0, draft_model=model, num_draft_tokens=3), greedy)
    beams = model.beam_search(prompts, 8, beams=3, return_beams_and_scores=True)
    recomputed = model.beam_search(prompts, 8, beams=3, return_beams_and_scores=True, cache_kv=False)
    assert torch.equal(beams[0], recomputed[0])
    torch.testing.assert_close(beams[1], recomputed[1], atol=1e-4, rtol=0)

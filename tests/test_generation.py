"""Generation: ragged batches, per-row EOS, filters, beams, contrastive, speculative, errors."""

import math

import pytest
import torch
from conftest import reinit
from hypothesis import given, settings
from hypothesis import strategies as st

from arlm import AutoregressiveWrapper, Decoder, TransformerWrapper, min_p, top_a, top_k, top_p
from arlm.generation.contrastive import contrastive_logits
from arlm.generation.decode import apply_penalties


def make(dim=32, depth=2, seq=48, vocab=64, seed=0, **kw):
    torch.manual_seed(seed)
    net = TransformerWrapper(num_tokens=vocab, max_seq_len=seq,
                             attn_layers=Decoder(dim=dim, depth=depth, heads=4, rotary_pos_emb=True, **kw))
    # these tests were calibrated on GPT-2's N(0, 0.02) init (sharp enough after the head x20 for
    # greedy paths far from ties, flat enough for sampling to depend on the seed): keep that model
    reinit(net, "gpt2", seed)
    # sharpen the random model so greedy paths are far from ties
    with torch.no_grad():
        net.head.weight.mul_(20)
    return AutoregressiveWrapper(net).eval()


@pytest.fixture(scope="module")
def model():
    return make()


def prompts_of(lens, vocab=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g) for n in lens]


# ---------------------------------------------------------------- batches and EOS

@pytest.mark.parametrize("cache_kv", [True, False])
def test_ragged_batch_rows_equal_solo(model, cache_kv):
    prompts = prompts_of([3, 9, 1, 6])
    batch = model.generate(prompts, 20, temperature=0.0, cache_kv=cache_kv)
    for i, p in enumerate(prompts):
        solo = model.generate(p, 20, temperature=0.0, cache_kv=cache_kv)
        assert torch.equal(batch[i], solo), f"row {i} differs from its solo run"


def test_prompt_lens_right_padded_matches_list(model):
    prompts = prompts_of([4, 7])
    padded = torch.zeros(2, 7, dtype=torch.long)
    padded[0, :4], padded[1] = prompts[0], prompts[1]
    a = model.generate(padded, 12, temperature=0.0, prompt_lens=torch.tensor([4, 7]))
    b = model.generate(prompts, 12, temperature=0.0)
    assert torch.equal(a, b)


def test_cache_equals_no_cache_including_sliding_window_start(model):
    p = prompts_of([5])[0]
    a = model.generate(p, 40, temperature=0.0, cache_kv=True)
    b = model.generate(p, 40, temperature=0.0, cache_kv=False)
    assert torch.equal(a, b)  # 45 tokens fit the 48-token context: both paths exact


def greedy_by_hand(net, prompt, n, window, amateur=None, beta=0.5):
    """Greedy decoding recomputed from scratch at every step with full forwards: ``window(total,
    offset) -> offset`` says where the model's view starts (positions restart at 0 there)."""
    hist, offset = prompt.tolist(), 0
    for _ in range(n):
        offset = window(len(hist), offset)
        x = torch.tensor([hist[offset:]])
        logits = net(x)[:, -1]
        if amateur is not None:
            logits = contrastive_logits(logits, amateur(x)[:, -1], alpha=0.1, beta=beta)
        hist.append(int(logits.argmax()))
    return torch.tensor(hist[len(prompt):])


@pytest.mark.parametrize("cache_kv", [True, False])
def test_decoding_past_context_slides_the_window(model, cache_kv):
    """150 tokens from a 48-token context: the cached path re-prefills the last 24 tokens when the
    window is full (3 slides here), the uncached one keeps the last 48; both equal full forwards."""
    S = 48
    p = prompts_of([5])[0]
    if cache_kv:
        window = lambda total, off: total - S // 2 if total - off > S else off  # noqa: E731
    else:
        window = lambda total, off: max(0, total - S)  # noqa: E731
    want = greedy_by_hand(model.net, p, 150, window)
    got = model.generate(p, 150, temperature=0.0, cache_kv=cache_kv)
    assert torch.equal(got, want)
    # the slide matters: keeping the whole history from position 0 is impossible past 48 tokens,
    # and the two ways of sliding give different continuations
    other = greedy_by_hand(model.net, p, 150, lambda total, off: max(0, total - S) if cache_kv
                           else (total - S // 2 if total - off > S else off))
    assert torch.equal(got[:S - 5], other[:S - 5]) and not torch.equal(got, other)


def test_per_row_eos_pads_and_stops(model):
    prompts = prompts_of([4, 4, 4], seed=3)
    free = model.generate(prompts, 30, temperature=0.0)
    eos = int(free[0, 5])  # row 0 emits this at step 5
    out = model.generate(prompts, 30, temperature=0.0, eos_token=eos)
    for i in range(3):
        hits = (free[i] == eos).nonzero()
        if len(hits):
            j = int(hits[0])
            assert torch.equal(out[i, : j + 1], free[i, : j + 1])  # identical up to and including EOS
            assert bool((out[i, j + 1:] == 0).all())  # padded after
        else:
            assert torch.equal(out[i], free[i, : out.shape[1]])
    ended = [(free[i] == eos).nonzero() for i in range(3)]
    if all(len(h) for h in ended):  # loop stops when every row has ended
        assert out.shape[1] == max(int(h[0]) for h in ended) + 1


def test_eos_inside_prompt_does_not_end_row(model):
    p = prompts_of([6], seed=4)[0]
    eos = int(p[2])
    free = model.generate(p, 10, temperature=0.0)
    out = model.generate(p, 10, temperature=0.0, eos_token=eos)
    first = (free == eos).nonzero()
    n = int(first[0]) + 1 if len(first) else 10
    assert torch.equal(out[:n], free[:n])  # not padded from the start: the prompt's EOS did not end it
    assert out.shape[0] == n  # it ends at its first generated EOS (or runs to seq_len)


def test_seeded_sampling_reproducible_and_seed_sensitive(model):
    p = prompts_of([5])[0]
    a = model.generate(p, 30, generator=torch.Generator().manual_seed(7), filter_logits_fn="top_p")
    b = model.generate(p, 30, generator=torch.Generator().manual_seed(7), filter_logits_fn=top_p)
    c = model.generate(p, 30, generator=torch.Generator().manual_seed(8), filter_logits_fn=top_p)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_num_samples_groups_rows_per_prompt(model):
    prompts = prompts_of([3, 5])
    out = model.generate(prompts, 8, temperature=0.0, num_samples=3)
    assert out.shape == (6, 8)
    assert torch.equal(out[0], out[2]) and torch.equal(out[3], out[5])  # greedy: identical samples


def test_stream_yields_same_tokens_as_generate(model):
    p = prompts_of([5])[0]
    steps = list(model.stream(p, 12, temperature=0.0))
    assert all(s.shape == (1,) for s in steps)
    assert torch.equal(torch.cat(steps), model.generate(p, 12, temperature=0.0))


@pytest.mark.parametrize("enabled", [True, False])
def test_decoding_leaves_the_onednn_flag_as_it_found_it(model, enabled):
    # fp32 CPU decode steps run with oneDNN off (a faster small-tensor GELU); user code between
    # streamed tokens, and everything after generate, must see the caller's setting
    p = prompts_of([5])[0]
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        ref = model.generate(p, 6, temperature=0.0, cache_kv=False)
        assert torch.backends.mkldnn.enabled is enabled
        for _ in model.stream(p, 6, temperature=0.0):
            assert torch.backends.mkldnn.enabled is enabled
        assert torch.equal(model.generate(p, 6, temperature=0.0), ref)
        assert torch.backends.mkldnn.enabled is enabled
    finally:
        torch.backends.mkldnn.enabled = before


# ---------------------------------------------------------------- filters

logit_rows = st.lists(st.floats(-20, 20, allow_nan=False, width=32), min_size=2, max_size=40)


@settings(max_examples=60, deadline=None)
@given(logit_rows, st.integers(1, 50))
def test_top_k_never_samples_outside_kept_set(row, k):
    logits = torch.tensor([row])
    out = top_k(logits, k=k)
    kept = torch.isfinite(out[0])
    assert int(kept.sum()) >= min(k, len(row))
    assert bool(kept[logits[0].argmax()])
    kth = torch.topk(logits[0], min(k, len(row))).values[-1]
    assert bool((logits[0][~kept] < kth).all())  # only tokens strictly below the k-th are removed
    probs = out.softmax(-1)
    draws = torch.multinomial(probs, 200, replacement=True, generator=torch.Generator().manual_seed(0))
    assert bool(kept[draws].all())


@settings(max_examples=60, deadline=None)
@given(logit_rows, st.floats(0.01, 1.0))
def test_top_p_keeps_smallest_nucleus(row, thres):
    logits = torch.tensor([row])
    out = top_p(logits, thres=thres)
    kept = torch.isfinite(out[0])
    probs = logits[0].softmax(-1)
    assert float(probs[kept].max()) == float(probs.max())  # a most likely token is kept (ties: any)
    # the kept mass reaches thres (up to float error), and each kept token is at least as likely as any removed one
    assert float(probs[kept].sum()) >= thres - 1e-4
    if (~kept).any():
        assert float(probs[kept].min()) >= float(probs[~kept].max()) - 1e-7
    draws = torch.multinomial(out.softmax(-1), 200, replacement=True, generator=torch.Generator().manual_seed(0))
    assert bool(kept[draws].all())


@settings(max_examples=60, deadline=None)
@given(logit_rows, st.floats(0.0, 1.0))
def test_min_p_and_top_a_thresholds(row, p):
    logits = torch.tensor([row])
    probs = logits[0].softmax(-1)
    kept = torch.isfinite(min_p(logits, min_p=p)[0])
    assert torch.equal(kept, probs >= p * probs.max())
    kept_a = torch.isfinite(top_a(logits, min_p_pow=2.0, min_p_ratio=p)[0])
    assert torch.equal(kept_a, probs >= probs.max() ** 2 * p)
    assert bool(kept[probs.argmax()]) and bool(kept_a[probs.argmax()])


def test_temperature_is_applied_before_filter(model):
    # with a low temperature the distribution sharpens, so top_p keeps fewer tokens
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0]])
    seen_cold, seen_hot = set(), set()
    from arlm.generation.decode import sample_next
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        seen_cold.add(int(sample_next(logits, 0.1, top_p, {"thres": 0.9}, g)))
        seen_hot.add(int(sample_next(logits, 10.0, top_p, {"thres": 0.9}, g)))
    assert seen_cold == {0}
    assert len(seen_hot) >= 4


def test_penalties_lower_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.0]])
    counts = torch.tensor([[1.0, 1.0, 0.0, 3.0]])
    out = apply_penalties(logits, counts, repetition=2.0, presence=0.0, frequency=0.0)
    assert torch.allclose(out, torch.tensor([[1.0, -2.0, 0.5, 0.5]]))
    out = apply_penalties(logits, counts, repetition=1.0, presence=0.5, frequency=0.25)
    assert torch.allclose(out, torch.tensor([[1.25, -1.75, 0.5, -0.25]]))


def test_repetition_penalty_reduces_repeats(model):
    p = prompts_of([4])[0]
    plain = model.generate(p, 40, temperature=0.0)
    pen = model.generate(p, 40, temperature=0.0, repetition_penalty=5.0)
    assert len(set(pen.tolist())) > len(set(plain.tolist())) or len(set(plain.tolist())) == 40


# ---------------------------------------------------------------- beams

def test_beam_one_equals_greedy(model):
    prompts = prompts_of([3, 6])
    greedy = model.generate(prompts, 16, temperature=0.0)
    assert torch.equal(model.beam_search(prompts, 16, beams=1), greedy)


def test_beam_one_equals_greedy_with_eos(model):
    prompts = prompts_of([5, 5], seed=5)
    free = model.generate(prompts, 16, temperature=0.0)
    eos = int(free[0, 4])
    greedy = model.generate(prompts, 16, temperature=0.0, eos_token=eos)
    beam = model.beam_search(prompts, 16, beams=1, eos_token=eos)
    assert torch.equal(beam[:, : greedy.shape[1]], greedy)
    assert bool((beam[:, greedy.shape[1]:] == 0).all())


def _seq_logprob(model, prompt, new):
    ids = torch.cat((prompt, new))[None]
    with torch.no_grad():
        logp = model.net(ids[:, :-1]).log_softmax(-1)[0]
    n = len(prompt)
    return float(logp[n - 1:].gather(-1, ids[0, n:, None]).sum())


def test_beam_scores_are_sequence_logprobs_and_sorted(model):
    p = prompts_of([4])[0]
    seqs, scores = model.beam_search(p, 6, beams=4, return_beams_and_scores=True, length_penalty=0.0)
    assert seqs.shape == (4, 6) and scores.shape == (4,)
    assert bool((scores[:-1] >= scores[1:]).all())
    for k in range(4):
        assert math.isclose(_seq_logprob(model, p, seqs[k]), float(scores[k]), rel_tol=1e-4, abs_tol=1e-4)
    # wider beam finds a sequence at least as likely as greedy
    greedy = model.generate(p, 6, temperature=0.0)
    assert float(scores[0]) >= _seq_logprob(model, p, greedy) - 1e-4


def test_beam_length_normalisation_and_eos(model):
    p = prompts_of([4], seed=6)[0]
    seqs, scores = model.beam_search(p, 10, beams=3, return_beams_and_scores=True, eos_token=7)
    for k in range(3):
        row = seqs[k].tolist()
        if 7 in row:
            j = row.index(7)
            assert all(t == 0 for t in row[j + 1:])
            n = j + 1
        else:
            n = 10
        assert math.isclose(_seq_logprob(model, p, seqs[k, :n]) / n, float(scores[k]), rel_tol=1e-4, abs_tol=1e-4)


def test_stochastic_beam_search_samples_and_is_seeded(model):
    """Sampled beams depend on the seed (plain beams never do) and repeat for one seed."""
    p = prompts_of([4])[0]

    def beams(seed, stochastic):
        return model.beam_search(p, 8, beams=3, stochastic=stochastic, temperature=4.0 if stochastic else 1.0,
                                 generator=torch.Generator().manual_seed(seed))

    sampled = {tuple(beams(s, True).tolist()) for s in range(6)}
    plain = {tuple(beams(s, False).tolist()) for s in range(6)}
    assert len(plain) == 1 and len(sampled) > 1
    assert torch.equal(beams(1, True), beams(1, True))


# ---------------------------------------------------------------- contrastive and speculative

def test_contrastive_logits_formula():
    expert = torch.tensor([[3.0, 2.9, 0.0, -5.0]])
    amateur = torch.tensor([[3.0, 0.0, 0.0, 0.0]])
    out = contrastive_logits(expert, amateur, alpha=0.1, beta=0.5)
    assert torch.isinf(out[0, 3]) and torch.isinf(out[0, 2])  # implausible under the expert
    assert int(out.argmax()) == 1  # the token the amateur does not expect wins
    assert math.isclose(float(out[0, 0]), 1.5 * 3.0 - 0.5 * 3.0)


@pytest.mark.parametrize("cache_kv", [True, False])
def test_contrastive_generate_uses_amateur(model, cache_kv):
    """Greedy contrastive decoding is the argmax of the contrastive logits of both models' full
    forwards at every step, and differs from the expert alone."""
    amateur = make(dim=16, depth=1, seed=3)
    amateur.net.head.weight.data.mul_(5)  # a confident amateur, so subtracting it matters
    p = prompts_of([5])[0]
    plain = model.generate(p, 20, temperature=0.0)
    con = model.generate(p, 20, temperature=0.0, amateur_model=amateur, cache_kv=cache_kv,
                         contrastive_decode_kwargs=dict(alpha=0.1, beta=0.5))
    want = greedy_by_hand(model.net, p, 20, lambda total, off: 0, amateur=amateur.net, beta=0.5)
    assert torch.equal(con, want)
    assert not torch.equal(con, plain)
    # beta = 0 is the expert alone (restricted to its plausible set, which contains the argmax)
    same = model.generate(p, 20, temperature=0.0, amateur_model=amateur,
                          contrastive_decode_kwargs=dict(alpha=0.1, beta=0.0))
    assert torch.equal(same, plain)


def test_amateur_or_draft_with_another_vocabulary_is_refused_up_front(model):
    p = prompts_of([5])[0]
    other = make(dim=16, depth=1, vocab=65)
    with pytest.raises(ValueError, match="amateur_model has a vocabulary of 65 ids"):
        model.generate(p, 5, amateur_model=other)
    with pytest.raises(ValueError, match="draft_model has a vocabulary of 65 ids"):
        model.generate(p, 5, draft_model=other)


def test_caches_are_sized_to_the_request_not_the_context(monkeypatch):
    """A model with a 4096-token context sampling 6 tokens after a 4-token prompt allocates 10
    cache slots per model (plain, beams, contrastive, speculative), not 4096."""
    from arlm.model import Transformer

    big = make(seq=4096)
    sizes = []
    new_cache = Transformer.new_cache

    def spy(self, batch, max_len=None, **kw):
        sizes.append(max_len)
        return new_cache(self, batch, max_len, **kw)

    monkeypatch.setattr(Transformer, "new_cache", spy)
    p = prompts_of([4])[0]
    big.generate(p, 6, temperature=0.0)
    big.beam_search(p, 6, beams=2)
    big.generate(p, 6, temperature=0.0, amateur_model=make(dim=16, depth=1, seq=4096))
    assert sizes == [10, 10, 10, 10]
    sizes.clear()
    big.generate(p, 6, temperature=0.0, draft_model=make(dim=16, depth=1, seq=4096), num_draft_tokens=2)
    assert sizes == [4 + 6 + 2 + 1] * 2  # speculative: room for the drafts past the end
    sizes.clear()
    small = make(seq=8)
    small.generate(p, 30, temperature=0.0)  # longer than the context: the window's 8 slots
    assert sizes == [8]


def test_speculative_greedy_equals_target_greedy(model):
    draft = make(dim=16, depth=1, seed=3)
    prompts = prompts_of([6, 6, 6])
    greedy = model.generate(prompts, 30, temperature=0.0)
    for k in (1, 3, 5):
        spec = model.generate(prompts, 30, temperature=0.0, draft_model=draft, num_draft_tokens=k)
        assert torch.equal(spec, greedy), f"num_draft_tokens={k}"
    self_spec = model.generate(prompts, 30, temperature=0.0, draft_model=model, num_draft_tokens=4)
    assert torch.equal(self_spec, greedy)
    assert model.last_stats["acceptance_rate"] == 1.0


def _exact_two_token_dist(wrapper, prompt, V, temperature):
    """P(x1, x2 | prompt) of the target under plain sampling, by enumeration."""
    net = wrapper.net
    with torch.no_grad():
        p1 = (net(prompt[None])[0, -1] / temperature).softmax(-1)
        ext = torch.cat((prompt[None].repeat(V, 1), torch.arange(V)[:, None]), dim=1)
        p2 = (net(ext)[:, -1] / temperature).softmax(-1)
    return p1[:, None] * p2  # (V, V)


@pytest.mark.parametrize("k", [1, 3])
def test_speculative_sampling_matches_target_distribution(k):
    V = 6
    target = make(dim=16, depth=1, vocab=V, seq=16, seed=10)
    draft = make(dim=16, depth=1, vocab=V, seq=16, seed=11)
    with torch.no_grad():  # soften so every pair has mass and acceptance is partial
        target.net.head.weight.div_(20)
        draft.net.head.weight.div_(10)
    prompt = torch.tensor([1, 2, 3])
    N = 6000
    out = target.generate(prompt[None].repeat(N, 1), 2, temperature=1.0, filter_logits_fn=None,
                          draft_model=draft, num_draft_tokens=k, generator=torch.Generator().manual_seed(0))
    rate = target.last_stats["acceptance_rate"]
    assert 0.05 < rate < 0.999  # both the accept and the residual paths were exercised
    expected = _exact_two_token_dist(target, prompt, V, 1.0).flatten()
    counts = torch.bincount(out[:, 0] * V + out[:, 1], minlength=V * V).float()
    # chi-square goodness of fit over the 36 pairs (35 dof): the 99.9% quantile is about 66.6
    mask = expected * N >= 5
    chi2 = float((((counts - expected * N) ** 2) / (expected * N))[mask].sum())
    assert chi2 < 66.6, f"chi2={chi2:.1f}: speculative samples do not follow the target distribution"


def test_speculative_sampling_control_detects_wrong_distribution():
    # negative control: the draft's own samples must FAIL the same chi-square test
    V = 6
    target = make(dim=16, depth=1, vocab=V, seq=16, seed=10)
    draft = make(dim=16, depth=1, vocab=V, seq=16, seed=11)
    with torch.no_grad():
        target.net.head.weight.div_(20)
        draft.net.head.weight.div_(10)
    prompt = torch.tensor([1, 2, 3])
    N = 6000
    out = draft.generate(prompt[None].repeat(N, 1), 2, temperature=1.0, filter_logits_fn=None,
                         generator=torch.Generator().manual_seed(0))
    expected = _exact_two_token_dist(target, prompt, V, 1.0).flatten()
    counts = torch.bincount(out[:, 0] * V + out[:, 1], minlength=V * V).float()
    mask = expected * N >= 5
    chi2 = float((((counts - expected * N) ** 2) / (expected * N))[mask].sum())
    assert chi2 > 66.6


# ---------------------------------------------------------------- invalid input, before any work

@pytest.mark.parametrize("kwargs, fragment", [
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(filter_logits_fn="top_p", filter_kwargs=dict(thres=1.5)), "thres"),
    (dict(filter_logits_fn="top_p", filter_kwargs=dict(thres=0.0)), "thres"),
    (dict(filter_logits_fn="top_k", filter_kwargs=dict(k=0)), "k must be"),
    (dict(filter_logits_fn="min_p", filter_kwargs=dict(min_p=2.0)), "min_p"),
    (dict(filter_logits_fn="nucleus"), "unknown filter"),
    (dict(eos_token=64), "eos_token"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(num_samples=0), "num_samples"),
])
def test_invalid_sampling_parameters_raise(model, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        model.generate(prompts_of([3])[0], 5, **kwargs)


def test_invalid_lengths_and_ids_raise(model):
    p = prompts_of([3])[0]
    with pytest.raises(ValueError, match="seq_len"):
        model.generate(p, 0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.generate(torch.tensor([1, 64]), 5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.generate(torch.tensor([-1, 3]), 5)
    with pytest.raises(ValueError, match="longer than the model context"):
        model.generate(torch.zeros(49, dtype=torch.long), 5)
    out = model.generate(torch.zeros(60, dtype=torch.long), 5, temperature=0.0, truncate_prompt=True)
    assert torch.equal(out, model.generate(torch.zeros(48, dtype=torch.long), 5, temperature=0.0))
    with pytest.raises(ValueError, match="beams"):
        model.beam_search(p, 5, beams=0)
    with pytest.raises(ValueError, match="num_draft_tokens"):
        model.generate(p, 5, draft_model=model, num_draft_tokens=0)


@pytest.mark.parametrize("prompt", [torch.tensor([1.7, 2.2]), torch.tensor([True, False]), [[1.5, 2.0]],
                                    [torch.tensor([True])]], ids=["float", "bool", "float-list", "bool-list"])
def test_float_and_bool_prompts_are_refused_not_truncated(model, prompt):
    with pytest.raises(ValueError, match="integer token ids"):
        model.generate(prompt, 3)
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.tensor([[0.5] * 9]))  # the training forward too


def test_numpy_integer_seq_len_is_an_integer(model):
    import numpy as np

    p = prompts_of([3])[0]
    want = model.generate(p, 4, temperature=0.0)
    for n in (np.int64(4), np.int32(4)):
        assert torch.equal(model.generate(p, n, temperature=0.0), want)
    assert model.beam_search(p, np.int64(4), beams=2).shape[-1] == 4


def test_forward_longer_than_the_context_is_a_value_error(model):
    net = model.net
    x = torch.zeros(1, 49, dtype=torch.long)  # max_seq_len 48
    for call in (lambda: net(x), lambda: net(x, return_intermediates=True), lambda: net(x, mask=torch.ones_like(x) > 0)):
        with pytest.raises(ValueError, match="49 tokens, more than the model context max_seq_len=48"):
            call()
    with pytest.raises(ValueError, match="integer token ids"):
        net(x.float())
    assert net(x[:, :48]).shape == (1, 48, 64)


def test_compiled_decode_equals_eager_and_compiles_once():
    # one compile for the one-token step; later calls (other prompt lengths) reuse it
    torch._dynamo.reset()
    m = make(dim=16, depth=1, seq=32, vocab=32, seed=2)
    p1, p2 = torch.randint(0, 32, (1, 5)), torch.randint(0, 32, (1, 9))
    eager1 = m.generate(p1, 12, temperature=0.0)
    eager2 = m.generate(p2, 12, temperature=0.0)
    from torch._dynamo.utils import counters
    counters.clear()
    assert torch.equal(m.generate(p1, 12, temperature=0.0, compile=True), eager1)
    assert torch.equal(m.generate(p2, 12, temperature=0.0, compile=True), eager2)
    assert counters["stats"]["unique_graphs"] == 1

"""The chunked training loss: same value and gradients as F.cross_entropy on the full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from arlm import ModelConfig, Transformer
from arlm.model.loss import auto_chunk_rows, linear_cross_entropy


@pytest.mark.parametrize("chunk", [1, 7, 40, 1000])
def test_linear_cross_entropy_matches_full_logits(chunk):
    g = torch.Generator().manual_seed(0)
    N, C, V = 40, 16, 50
    h = torch.randn(N, C, generator=g, requires_grad=True)
    w = torch.randn(V, C, generator=g, requires_grad=True)
    t = torch.randint(0, V, (N,), generator=g)
    t[[3, 17]] = -100  # ignored rows count neither in the loss nor in the mean
    ref = F.cross_entropy((h @ w.t()) * 0.3, t)
    gh, gw = torch.autograd.grad(ref, (h, w))
    out = linear_cross_entropy(h, w, t, scale=0.3, chunk=chunk)
    ch, cw = torch.autograd.grad(out * 2.0, (h, w))  # the upstream gradient scales both
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ch, 2 * gh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(cw, 2 * gw, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("tie", [False, True])
def test_model_loss_chunked_equals_full_with_padded_vocabulary(tie):
    # vocab 70 pads to 128 rows: the padding rows must get neither probability nor gradient
    cfg = ModelConfig(vocab_size=70, max_seq_len=16, dim=32, depth=1, heads=2, tie_embedding=tie, vocab_pad_multiple=64)
    assert cfg.padded_vocab > cfg.vocab_size
    ids = torch.randint(0, 70, (3, 13), generator=torch.Generator().manual_seed(1))
    grads, losses = [], []
    for chunk in (0, 5):
        torch.manual_seed(0)
        model = Transformer(cfg)
        loss = model(ids[:, :-1], targets=ids[:, 1:], loss_chunk=chunk)
        loss.backward()
        losses.append(loss)
        grads.append({n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_chunked_loss_under_bf16_autocast_tracks_the_full_loss():
    cfg = ModelConfig(vocab_size=256, max_seq_len=16, dim=32, depth=1, heads=2)
    torch.manual_seed(0)
    model = Transformer(cfg)
    ids = torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = model(ids[:, :-1], targets=ids[:, 1:], loss_chunk=0)
        chunked = model(ids[:, :-1], targets=ids[:, 1:], loss_chunk=16)
    assert chunked.dtype == torch.float32
    assert abs(float(chunked) - float(full)) < 2e-2 * float(full)


@pytest.mark.parametrize("chunk", [0, 7])
def test_summed_loss_equals_full_logits_sum(chunk):
    cfg = ModelConfig(vocab_size=50, max_seq_len=16, dim=32, depth=1, heads=2)
    torch.manual_seed(0)
    model = Transformer(cfg)
    ids = torch.randint(0, 50, (3, 13), generator=torch.Generator().manual_seed(1))
    t = ids[:, 1:].clone()
    t[0, :4] = -100  # left out of the sum
    summed = model(ids[:, :-1], targets=t, loss_chunk=chunk, loss_reduction="sum")
    (g_sum,) = torch.autograd.grad(summed, model.head.weight)
    logits = model(ids[:, :-1])
    ref = F.cross_entropy(logits.flatten(0, 1), t.flatten(), reduction="sum")
    (g_ref,) = torch.autograd.grad(ref, model.head.weight)
    torch.testing.assert_close(summed, ref, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(g_sum, g_ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="reduction must be one of 'mean', 'sum'"):
        model(ids[:, :-1], targets=t, loss_reduction="none")


def test_auto_chunking_only_for_large_vocabularies():
    assert auto_chunk_rows(256) == 0 and auto_chunk_rows(8191) == 0
    assert auto_chunk_rows(50304) * 50304 <= 2**25 and auto_chunk_rows(50304) >= 256


def test_bad_arguments_are_refused():
    h, w, t = torch.randn(4, 8), torch.randn(10, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        linear_cross_entropy(h, w, t, chunk=0)
    with pytest.raises(ValueError, match="3 targets"):
        linear_cross_entropy(h, w, t[:3])


# ---- one loss path: AutoregressiveWrapper.forward uses the model's own loss ------------------------------

V_BIG = 8192  # auto-chunked (model/loss.py CHUNK_FROM_VOCAB)


class LargestOutput(torch.overrides.TorchFunctionMode):
    """Records the largest tensor any torch call returns: the full (B, T, V) logits would show."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if torch.is_tensor(t):
                self.largest = max(self.largest, t.numel())
        return out


def big_vocab_wrapper(**wrapper_kw):
    from arlm import AutoregressiveWrapper, Decoder, TransformerWrapper

    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=V_BIG, max_seq_len=128,
                             attn_layers=Decoder(dim=32, depth=1, heads=2, attn_dim_head=16, rotary_pos_emb=True))
    return AutoregressiveWrapper(net, **wrapper_kw)


def _loss_and_grads(wrapper, x, seed, **kw):
    torch.manual_seed(seed)  # mask_prob draws its hidden tokens from the global generator
    wrapper.zero_grad()
    out = wrapper(x, **kw)
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in wrapper.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("option", ["plain", "ignore_index", "lens", "mask_prob", "z_loss", "prepend_embeds"])
def test_wrapper_loss_equals_the_full_logits_loss(option, monkeypatch):
    """The wrapper's loss (final embeddings -> Transformer.loss, chunked) equals, in value and in
    every gradient, cross-entropy on the full logits (what return_outputs=True computes), option by option."""
    monkeypatch.setattr("arlm.model.loss.AUTO_CHUNK_ELEMENTS", 256 * V_BIG)  # 256-row chunks: several per batch
    wrapper_kw = {"mask_prob": dict(mask_prob=0.3), "z_loss": dict(add_attn_z_loss=True, attn_z_loss_weight=0.1),
                  "ignore_index": dict(ignore_index=-1)}  # not the default -100: it must be passed on
    w = big_vocab_wrapper(**wrapper_kw.get(option, {})).train()
    x = torch.randint(0, V_BIG, (4, 101), generator=torch.Generator().manual_seed(3))  # 400 scored rows
    kw = {}
    if option == "ignore_index":
        x[:, 50:60] = -1
    elif option == "lens":
        kw["lens"] = torch.tensor([101, 80, 33, 2])
    elif option == "prepend_embeds":
        kw["prepend_embeds"] = torch.randn(4, 3, 32, generator=torch.Generator().manual_seed(4))
    new, g_new = _loss_and_grads(w, x, 5, **kw)
    old, g_old = _loss_and_grads(w, x, 5, return_outputs=True, **kw)
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
    assert g_new.keys() == g_old.keys() and g_new
    for name, g in g_old.items():
        torch.testing.assert_close(g_new[name], g, rtol=1e-5, atol=1e-7, msg=name)
    if option == "plain":  # and the reference itself is plain cross-entropy over the shifted ids
        with torch.no_grad():
            ref = F.cross_entropy(w.net(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        torch.testing.assert_close(new, ref, rtol=1e-6, atol=1e-6)


def test_wrapper_loss_on_a_bare_transformer_with_z_loss():
    from arlm import AutoregressiveWrapper

    torch.manual_seed(0)
    w = AutoregressiveWrapper(Transformer(ModelConfig(vocab_size=300, max_seq_len=32, dim=32, depth=2, heads=2)),
                              add_attn_z_loss=True).train()
    x = torch.randint(0, 300, (3, 21), generator=torch.Generator().manual_seed(1))
    new, g_new = _loss_and_grads(w, x, 0)
    with torch.no_grad():
        logits, z = w.net(x[:, :-1], return_attn_z_loss=True)
        ref = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()) + z
    torch.testing.assert_close(new, ref, rtol=1e-6, atol=1e-6)
    assert set(g_new) == {n for n, _ in w.named_parameters()}


def test_wrapper_loss_never_builds_the_full_logits(monkeypatch):
    monkeypatch.setattr("arlm.model.loss.AUTO_CHUNK_ELEMENTS", 256 * V_BIG)
    w = big_vocab_wrapper().train()
    x = torch.randint(0, V_BIG, (4, 101), generator=torch.Generator().manual_seed(3))
    full = 4 * 100 * V_BIG
    with LargestOutput() as seen:
        w(x).backward()
    assert 256 * V_BIG <= seen.largest < full  # one chunk's logits at most
    with LargestOutput() as seen:  # the check sees full logits where they are asked for
        w(x, return_outputs=True)
    assert seen.largest >= full

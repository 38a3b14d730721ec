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


def test_auto_chunking_only_for_large_vocabularies():
    assert auto_chunk_rows(256) == 0 and auto_chunk_rows(8191) == 0
    assert auto_chunk_rows(50304) * 50304 <= 2**25 and auto_chunk_rows(50304) >= 256


def test_bad_arguments_are_refused():
    h, w, t = torch.randn(4, 8), torch.randn(10, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        linear_cross_entropy(h, w, t, chunk=0)
    with pytest.raises(ValueError, match="3 targets"):
        linear_cross_entropy(h, w, t[:3])

"""Next-token cross-entropy from final embeddings, without the full (N, V) logits.

Dims: N rows (batch x time), C model dim, V vocabulary.

For a large vocabulary the fp32 logits dominate training memory: GPT-2's 50,304 columns at
8 x 1024 tokens are 1.6 GB, plus their gradient. ``linear_cross_entropy`` walks the rows in
chunks: each chunk's logits are computed, turned into its loss and, when gradients are needed,
straight into the gradients of the embeddings and of the weight (softmax minus one-hot), then
freed. Backward only scales the stored gradients, so nothing is recomputed; peak memory is one
chunk's logits.
"""

from __future__ import annotations

import torch

# chunking pays from this vocabulary size up; below it the logits are small next to activations
CHUNK_FROM_VOCAB = 8192
# logits per chunk when the size is left to the library: 2**25 fp32 values = 128 MiB
AUTO_CHUNK_ELEMENTS = 2**25
REDUCTIONS = ("mean", "sum")


def auto_chunk_rows(vocab: int) -> int:
    """Rows per chunk for ``loss_chunk=None``: 0 (no chunking) for small vocabularies."""
    return 0 if vocab < CHUNK_FROM_VOCAB else max(256, AUTO_CHUNK_ELEMENTS // vocab)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, scale: float, chunk: int, ignore_index: int, reduction: str):
        # h (N, C), weight (V, C), targets (N,). Autocast is active here as in any forward, so
        # the matmuls run in its dtype; the softmax and the loss are fp32.
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dev = h.device.type
        cdt = (torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev)
               else torch.promote_types(h.dtype, weight.dtype))
        w = weight.to(cdt)  # one cast for all chunks
        N = h.shape[0]
        valid = targets != ignore_index
        # "sum" (evaluation: totals over many batches) scales by 1, "mean" by the valid rows
        count = valid.sum().clamp(min=1).float() if reduction == "mean" else torch.ones((), device=h.device)
        safe = targets.masked_fill(~valid, 0)
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for i in range(0, N, chunk):
            hc, tc, vc = h[i:i + chunk].to(cdt), safe[i:i + chunk], valid[i:i + chunk]
            logits = (hc @ w.t()).float()  # (n, V) fp32, a fresh buffer: worked on in place below
            if scale != 1.0:
                logits.mul_(scale)
            lse = logits.logsumexp(dim=-1)
            picked = logits.gather(1, tc[:, None]).squeeze(1)
            loss += ((lse - picked) * vc).sum()
            if need_h or need_w:
                # d(loss)/d(logits) = (softmax - onehot) / count on valid rows (count 1 for a sum), 0 elsewhere
                g = logits.sub_(lse[:, None]).exp_()
                g.scatter_add_(1, tc[:, None], torch.full_like(lse[:, None], -1.0))
                g = g.mul_((vc.float() * (scale / count))[:, None]).to(cdt)
                if need_h:
                    grad_h[i:i + chunk] = g @ w
                if need_w:
                    grad_w += (g.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return loss / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, scale: float = 1.0,
                         chunk: int = 4096, ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``softmax(scale * h @ weight.T)`` against ``targets`` over the rows
    whose target is not ``ignore_index``, their mean or (``reduction="sum"``) their sum; equals
    ``F.cross_entropy`` on the full logits (fp32) in value and gradients.
    h (..., C), weight (V, C), targets (...) with the same leading dims."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 row, got {chunk}")
    check_reduction(reduction)
    h2, t2 = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    if h2.shape[0] != t2.shape[0]:
        raise ValueError(f"{h2.shape[0]} embedding rows but {t2.shape[0]} targets")
    return _LinearCrossEntropy.apply(h2, weight, t2, float(scale), int(chunk), int(ignore_index), reduction)


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")

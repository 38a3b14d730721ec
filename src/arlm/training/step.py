"""One optimizer update: micro-batches forward and backward, clipping, and the step itself."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..data.dataset import document_inputs
from . import distributed as ddp
from .device import autocast_ctx
from .schedule import lr_at
from .state import Session


def forward_backward(model, micro_batches: list[torch.Tensor], bf16: bool, loss_chunk: int | None = 0,
                     doc_separator: int | None = None) -> torch.Tensor:
    """Accumulate gradients over micro-batches (each (B, T+1)); returns the mean loss (0-dim).

    Each micro-batch's loss is divided by their number, so the gradient is that of the mean
    loss over all of them, the same as one batch of their concatenation. Under DDP only the
    last micro-batch all-reduces gradients. The model computes the loss itself (fp32, in
    ``loss_chunk`` rows at a time; see Transformer.loss), inside its forward, so DDP and
    compile see one module call. ``doc_separator``: packed documents are masked apart
    (data.document_mask; see ``document_positions``).
    """
    n = len(micro_batches)
    total = None
    for i, batch in enumerate(micro_batches):
        device = batch.device
        with ddp.no_sync(model, last=i == n - 1):
            with autocast_ctx(device, bf16):
                loss = model(batch[:, :-1], targets=batch[:, 1:], loss_chunk=loss_chunk,
                             **document_inputs(batch[:, :-1], doc_separator))
            (loss / n).backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total / n


@dataclass
class StepOutcome:
    loss: float  # mean over ranks; may be non-finite
    grad_norm: float
    lr: float
    ok: bool  # the optimizer stepped (loss and gradient norm finite)
    tokens_per_sec: float
    signal: bool  # some rank received SIGTERM/SIGINT
    out_of_time: bool  # some rank passed train.max_minutes


def train_step(s: Session) -> StepOutcome:
    """One optimizer update: set the lr, accumulate gradients, clip, step (or skip a non-finite
    one), and advance the run state by one step."""
    tc, st = s.tc, s.state
    t0 = time.perf_counter()
    lr = lr_at(st.step + 1, tc)
    for g in s.optimizer.param_groups:
        g["lr"] = lr
    batches = [_to_device(s.sampler.next_batch(), s.device) for _ in range(tc.grad_accum)]
    loss_t = forward_backward(s.fwd, batches, s.bf16, tc.loss_chunk, s.splits.doc_separator)
    norm_t = torch.nn.utils.clip_grad_norm_(s.params, s.clip)
    out_of_time = tc.max_minutes is not None and time.perf_counter() - s.state.session_start >= tc.max_minutes * 60
    # one host sync per step; under DDP one all-reduce makes every decision unanimous
    loss, any_signal, any_timeout = ddp.reduce_step(s.dinfo, loss_t, bool(s.received), out_of_time)
    norm = ddp.grad_norm_value(norm_t)
    ok = math.isfinite(loss) and math.isfinite(norm)
    if ok:
        s.optimizer.step()
        st.consecutive_skips = 0
    else:
        st.skipped_steps += 1
        st.consecutive_skips += 1
    s.optimizer.zero_grad(set_to_none=True)
    st.step += 1
    st.tokens_seen += s.tokens_per_step
    dt = time.perf_counter() - t0
    s.train_time += dt
    tok_s = s.tokens_per_step / dt if dt > 0 else 0.0
    return StepOutcome(loss, norm, lr, ok, tok_s, any_signal, any_timeout)


def _to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host batch to the device; on CUDA through pinned memory so the copy overlaps compute."""
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)

"""Held-out loss, bits per byte and perplexity of a model or a saved run."""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace

import numpy as np
import torch

from ..data import DataError, eval_batches, is_prepared, load_corpus, open_training_data
from ..data.dataset import document_inputs

__all__ = ["evaluate", "evaluate_run"]


@torch.no_grad()
def evaluate(model, tokens: np.ndarray, seq_len: int, batch_size: int, max_batches: int | None,
             bytes_per_token: float, *, autocast: contextlib.AbstractContextManager | None = None,
             doc_separator: int | None = None) -> dict:
    """Next-token loss over consecutive windows of ``tokens`` (``data.eval_batches``).

    Returns ``dict(loss, bpb, ppl, tokens)``: loss in nats per token (the mean over every
    predicted token, not over batches), bits per byte = loss / ln 2 / bytes_per_token,
    perplexity per token = exp(loss), and how many tokens were scored. The model is put in eval
    mode for the duration and given back in the mode it had. ``autocast`` (e.g. a bf16 autocast
    context) wraps each forward; the loss is computed in fp32 either way. ``doc_separator``:
    packed documents are masked apart, as in training with data.document_mask.
    """
    if not bytes_per_token > 0:
        raise ValueError(f"bytes_per_token must be > 0, got {bytes_per_token}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    try:
        for batch in eval_batches(tokens, seq_len, batch_size, max_batches):
            batch = batch.to(device, non_blocking=True)
            inp, target = batch[:, :-1], batch[:, 1:]  # (B, T) each
            with autocast if autocast is not None else contextlib.nullcontext():
                # the model's own loss: fp32, summed, in row chunks for large vocabularies (never the full logits)
                loss = model(inp, targets=target, loss_reduction="sum", **document_inputs(inp, doc_separator))
            total += loss.double()
            n += target.numel()
    finally:
        model.train(was_training)
    loss = float(total) / n
    return {
        "loss": loss,
        "bpb": loss / math.log(2) / bytes_per_token,
        "ppl": math.exp(loss) if loss < 700 else float("inf"),
        "tokens": n,
    }


def evaluate_run(run, data_path=None, max_batches: int | None = None, *, batch_size: int | None = None) -> dict:
    """Evaluate a loaded run (``arlm.run.load_run``).

    ``data_path`` None: the run's own validation split, re-derived from its config and tokenizer
    (the same tokens the trainer validated on). A prepared folder (``arlm prepare``): its
    validation split. Otherwise every token of that file or folder (not split), with bits per
    byte from its byte count. ``max_batches`` None scores everything.
    """
    cfg, tok = run.cfg, run.tokenizer
    seq_len = cfg.seq_len
    batch_size = batch_size or cfg.train.batch_size
    if data_path is None or is_prepared(data_path):  # a prepared folder: its validation split
        data_cfg = cfg.data if data_path is None else replace(cfg.data, path=str(data_path))
        splits = open_training_data(data_cfg, seq_len, tokenizer=tok)
        tokens, bytes_per_token = splits.val, splits.val_bytes_per_token
        separator = splits.doc_separator
        replaced = splits.replaced_bytes
    else:
        data = load_corpus(data_path)
        tokens = tok.encode_bytes(data)
        replaced = sum(end - start for start, end in tok.replaced_spans(data))
        if len(tokens) < seq_len + 1:
            raise DataError(
                f"{data_path} has {len(tokens)} tokens, fewer than one evaluation window of "
                f"seq_len + 1 = {seq_len + 1}; give more text"
            )
        bytes_per_token = len(data) / len(tokens)  # the file's own bytes, as the trainer's split counts them
        separator = None  # raw text marks no documents
    device = next(run.model.parameters()).device
    ctx = None
    if device.type == "cuda" and cfg.train.precision in ("auto", "bf16") and torch.cuda.is_bf16_supported():
        ctx = torch.autocast("cuda", dtype=torch.bfloat16)
    result = evaluate(run.model, tokens, seq_len, batch_size, max_batches, bytes_per_token, autocast=ctx,
                      doc_separator=separator)
    result["replaced_bytes"] = replaced  # bytes of the corpus read as U+FFFD (BPE on text that is not UTF-8)
    return result

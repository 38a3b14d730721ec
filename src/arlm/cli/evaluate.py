"""``arlm eval``: validation loss, bits per byte and perplexity of a trained run."""

from __future__ import annotations

import argparse
import json
import math

from .common import UsageError, check_device, out


def evaluate(args: argparse.Namespace) -> int:
    """Print a run's validation loss (nats per token), bits per byte and perplexity.

    Without --data the run's own validation split is used (the last data.val_fraction of its
    corpus, re-derived from RUN/config.yaml); with --data, that whole corpus is scored, or, for a
    folder written by `arlm prepare`, its validation split (refused if it was tokenized otherwise).
    Bits per byte divide the total loss by the bytes of UTF-8 text scored, so they compare across
    tokenizers; with the byte tokenizer one token is one byte, and on ASCII text one character,
    so it is also bits per character. Perplexity is per token: exp(loss).

    examples:
      arlm eval runs/demo
      arlm eval runs/demo --data held_out.txt --max-batches 50 --json
    """
    if args.max_batches is not None and args.max_batches < 1:
        raise UsageError(f"--max-batches must be >= 1, got {args.max_batches}")
    if args.step is not None and args.step < 0:
        raise UsageError(f"--step must be >= 0, got {args.step}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    from arlm.evaluation import evaluate_run
    from arlm.run import load_run

    check_device(args.device)
    run = load_run(args.run, step=args.step, device=args.device)
    m = evaluate_run(run, data_path=args.data, max_batches=args.max_batches, batch_size=args.batch_size)
    if args.json:
        out(json.dumps({"step": run.step, **{k: _plain(v) for k, v in m.items()}}))
        return 0
    kind = getattr(run.tokenizer, "kind", "?")
    per_char = " (byte tokenizer: 1 token = 1 byte = 1 character on ASCII text)" if kind == "byte" else ""
    source = args.data if args.data else "the run's validation split"
    out(f"run {run.run_dir}, step {run.step}, {kind} tokenizer, on {source}: {int(m['tokens']):,} tokens")
    out(f"validation loss: {m['loss']:.6f} nats/token")
    out(f"bits per byte:   {m['bpb']:.6f}{per_char}")
    out(f"perplexity:      {m['ppl']:.6f} per token")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory written by `arlm train`")
    p.add_argument("--data", metavar="PATH", help="score this corpus (file, .gz or folder) instead of "
                   "the run's validation split; a folder from `arlm prepare`: its validation split")
    p.add_argument("--max-batches", type=int, metavar="N", help="score at most N batches (default: all)")
    p.add_argument("--batch-size", type=int, metavar="N", help="sequences per batch (default: the run's "
                   "train.batch_size); the result does not depend on it")
    p.add_argument("--step", type=int, metavar="N", help="use checkpoint step-N (default: the latest)")
    p.add_argument("--device", default="cpu", metavar="D", help="cpu, cuda, cuda:N or mps (default: cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _plain(v):
    """A JSON-safe number (NaN/inf become strings rather than invalid JSON)."""
    v = float(v) if not isinstance(v, int) else v
    return v if isinstance(v, int) or math.isfinite(v) else str(v)

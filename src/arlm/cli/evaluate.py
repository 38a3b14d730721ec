"""``arlm eval``: validation loss, bits per byte and perplexity of a trained run, or lm-eval tasks."""

from __future__ import annotations

import argparse
import json
import math

from .common import UsageError, check_device, note, out


def evaluate(args: argparse.Namespace) -> int:
    """Print a run's validation loss (nats per token), bits per byte and perplexity.

    Without --data the run's own validation split is used (the last data.val_fraction of its
    corpus, re-derived from RUN/config.yaml); with --data, that whole corpus is scored, or, for a
    folder written by `arlm prepare`, its validation split (refused if it was tokenized otherwise).
    Bits per byte divide the total loss by the bytes of UTF-8 text scored, so they compare across
    tokenizers; with the byte tokenizer one token is one byte, and on ASCII text one character,
    so it is also bits per character. Perplexity is per token: exp(loss).

    With --tasks, runs lm-evaluation-harness tasks instead (the 'eval' extra: pip install
    'arlm[eval]') and prints lm-eval's results table: the run's tokenizer and context
    (model.max_seq_len; longer inputs are cut from the left), greedy generation unless a task
    samples. --include-path adds a folder of task YAML files; --num-fewshot, --limit (examples per
    task, or a fraction below 1) and --batch-size are passed on.

    examples:
      arlm eval runs/demo
      arlm eval runs/demo --data held_out.txt --max-batches 50 --json
      arlm eval runs/demo --tasks lambada_openai,hellaswag --limit 100
      arlm eval runs/demo --tasks my_task --include-path my_tasks/ --num-fewshot 2
    """
    if args.step is not None and args.step < 0:
        raise UsageError(f"--step must be >= 0, got {args.step}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.tasks is not None:
        return _lm_eval_tasks(args)
    for flag, value in (("--include-path", args.include_path), ("--num-fewshot", args.num_fewshot),
                        ("--limit", args.limit)):
        if value is not None:
            raise UsageError(f"{flag} goes with --tasks (lm-eval tasks); without --tasks arlm eval scores text")
    if args.max_batches is not None and args.max_batches < 1:
        raise UsageError(f"--max-batches must be >= 1, got {args.max_batches}")
    from arlm.evaluation import evaluate_run
    from arlm.run import load_run

    check_device(args.device)
    run = load_run(args.run, step=args.step, device=args.device)
    m = evaluate_run(run, data_path=args.data, max_batches=args.max_batches, batch_size=args.batch_size)
    if m["replaced_bytes"]:  # stderr, so --json output stays one JSON object
        from arlm.tokenizers import replaced_note

        note(replaced_note(m["replaced_bytes"], args.data or "the run's corpus"))
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


def _lm_eval_tasks(args: argparse.Namespace) -> int:
    """``arlm eval RUN --tasks ...``: lm-evaluation-harness tasks, lm-eval's results table."""
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise UsageError("--tasks needs task names, e.g. --tasks lambada_openai,hellaswag")
    for flag in ("data", "max_batches"):
        if getattr(args, flag) is not None:
            raise UsageError(f"--{flag.replace('_', '-')} scores text; it does not go with --tasks")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise UsageError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    if args.limit is not None and not args.limit > 0:
        raise UsageError(f"--limit must be > 0 (a number of examples, or a fraction below 1), got {args.limit}")
    try:
        from arlm.evaluation.lm_eval import run_tasks
        from lm_eval.utils import make_table
    except ImportError as e:
        raise UsageError(str(e)) from None
    from arlm.run import load_run

    check_device(args.device)
    run = load_run(args.run, step=args.step, device=args.device)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    results = run_tasks(run, tasks, include_path=args.include_path, num_fewshot=args.num_fewshot, limit=limit,
                        batch_size=args.batch_size)
    if args.json:
        out(json.dumps({"step": run.step, "results": results["results"]}, default=str))
        return 0
    out(f"run {run.run_dir}, step {run.step}, lm-eval tasks: {', '.join(tasks)}")
    out(make_table(results))
    if results.get("groups"):
        out(make_table(results, "groups"))
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
    g = p.add_argument_group("lm-evaluation-harness (the 'eval' extra)")
    g.add_argument("--tasks", metavar="T1,T2", help="run these lm-eval tasks (comma-separated) instead of "
                   "scoring text")
    g.add_argument("--include-path", metavar="DIR", help="a folder of extra lm-eval task YAML files")
    g.add_argument("--num-fewshot", type=int, metavar="K", help="few-shot examples per prompt (default: the task's)")
    g.add_argument("--limit", type=float, metavar="N", help="at most N examples per task (below 1: that fraction)")


def _plain(v):
    """A JSON-safe number (NaN/inf become strings rather than invalid JSON)."""
    v = float(v) if not isinstance(v, int) else v
    return v if isinstance(v, int) or math.isfinite(v) else str(v)

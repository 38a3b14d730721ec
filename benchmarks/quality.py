"""Quality: x-transformers and arlm trained alike on tinyshakespeare, validation losses and ratios printed.

Same keyword arguments, seed, batches, optimizer and schedule for both libraries, at each width
of ``--widths``; validation loss after each step count of ``--eval-at`` (points of one run whose
schedule spans ``--steps``). ``--own-init`` gives each library its own initialisation (arlm: its
``model.init`` default, or ``--arlm-init NAME``); without it arlm starts from x-transformers'
initial weights (``arlm.export.x_transformers.convert_state_dict``), so any difference is the
implementations'. Training steps alternate between the two libraries. Byte-level tokens; the
first 90% of the file trains, the last 10% validates (the same fixed validation batches for both
libraries and every seed).

``--seeds`` repeats each width with other seeds (init and batch order): the table gives each
library's mean over the seeds both ran, the ratio of the means and the range of the per-seed
ratios. One seed is not enough to rank two inits: x-transformers' own validation loss moved by
up to 2.5% between seeds 0 and 1 (width 128, step 1,000), about as much as the inits differ.

On one thread training is deterministic, so a library's numbers do not depend on what runs
beside it: ``--lib`` trains one library only and ``--save FILE`` appends the results as JSON
lines, so pieces of the table can run as separate processes; ``--table FILE ...`` prints the
table from saved pieces.

  .venv/bin/python benchmarks/quality.py --own-init --seeds 0 1   # the init table: widths 128/256/512, ~2 CPU-hours
  .venv/bin/python benchmarks/quality.py --widths 128 --steps 300 --eval-at 300    # parity, ~3 minutes
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import common
import numpy as np
import torch

from arlm.model.init import scheme

DEFAULT_DATA = common.REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
LIBS = ("x-transformers", "arlm")


def decoder_kwargs(dim: int, depth: int) -> dict:
    return dict(dim=dim, depth=depth, heads=4, rotary_pos_emb=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"text file (default: {DEFAULT_DATA})")
    p.add_argument("--widths", type=int, nargs="+", default=[128, 256, 512], help="model widths (dim)")
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--steps", type=int, default=1000, help="training steps (the schedule's length)")
    p.add_argument("--eval-at", type=int, nargs="+", default=[250, 1000], help="steps after which to validate")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--own-init", action="store_true", help="each library's own init (same seed), not copied weights")
    p.add_argument("--arlm-init", default=None, help="with --own-init: arlm's model.init scheme (default: its default)")
    p.add_argument("--lib", choices=("both",) + LIBS, default="both", help="train both libraries or one")
    p.add_argument("--save", type=Path, default=None, help="append results to this file as JSON lines")
    p.add_argument("--table", type=Path, nargs="+", default=None, help="only print the table from saved results")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a busy 2-core machine two OpenMP threads run ~5-10x slower)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="training seeds (init and batch order); the table averages over them")
    p.add_argument("--val-seed", type=int, default=1, help="seed of the fixed validation batches (the same for every seed)")
    args = p.parse_args(argv)
    if any(s < 1 or s > args.steps for s in args.eval_at):
        p.error(f"--eval-at steps must be in [1, --steps={args.steps}]")
    return args


def lr_at(step: int, total: int, peak: float) -> float:
    """Linear warmup over 10% of the steps, then cosine to 10% of the peak."""
    warm = max(1, total // 10)
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def batches(tokens: np.ndarray, seq: int, batch: int, n: int, seed: int) -> list[torch.Tensor]:
    """n batches (batch, seq+1) at random offsets drawn from a seeded generator."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        starts = rng.integers(0, len(tokens) - seq - 1, size=batch)
        out.append(torch.from_numpy(np.stack([tokens[s:s + seq + 1] for s in starts]).astype(np.int64)))
    return out


@torch.no_grad()
def val_loss(model, val: list[torch.Tensor]) -> float:
    model.eval()
    loss = sum(float(model(b)) for b in val) / len(val)
    model.train()
    return loss


def build(args, dim: int, seed: int):
    """(models by library, how arlm was initialised)."""
    x_model, a_model, copied, how = common.build_pair(256, args.seq, decoder_kwargs(dim, args.depth), seed=seed)
    if args.own_init:
        if args.arlm_init is not None:
            a_model.net.cfg.init = args.arlm_init
            a_model.net.cfg.validate()
        # arlm's init from a generator seeded like x-transformers' global RNG
        a_model.net.init_weights(torch.Generator().manual_seed(seed))
        cfg = a_model.net.cfg
        drawn = "" if scheme(cfg) == cfg.init else f", which draws {scheme(cfg)!r} at width {dim}"
        how = f"each library's own init, same seed (arlm: model.init={cfg.init!r}{drawn})"
    elif not copied:
        how += " (no converter: each library's own init)"
    models = {"x-transformers": x_model.train(), "arlm": a_model.train()}
    keep = LIBS if args.lib == "both" else (args.lib,)
    return {k: m for k, m in models.items() if k in keep}, how


def train_width(args, dim: int, seed: int, train_batches, val_batches) -> list[dict]:
    models, how = build(args, dim, seed)
    print(f"\n## width {dim}, seed {seed}: TransformerWrapper(num_tokens=256, max_seq_len={args.seq}, "
          f"attn_layers=Decoder({', '.join(f'{k}={v}' for k, v in decoder_kwargs(dim, args.depth).items())}))")
    print(f"init: {how}")
    # decay only matrices: x-transformers stores norm gains as (gain - 1), so decaying every
    # parameter would pull its gains towards 1 and arlm's towards 0, a difference of recipe, not of library
    opts = {k: torch.optim.AdamW([{"params": [p for p in m.parameters() if p.dim() >= 2], "weight_decay": 0.1},
                                  {"params": [p for p in m.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                                 lr=args.lr, betas=(0.9, 0.99))
            for k, m in models.items()}
    print("initial val loss: " + ", ".join(f"{k} {val_loss(m, val_batches):.4f}" for k, m in models.items()))
    results, last = [], {k: float("nan") for k in models}
    t_start = time.perf_counter()
    for step, b in enumerate(train_batches):
        lr = lr_at(step, args.steps, args.lr)
        for k, m in models.items():
            for group in opts[k].param_groups:
                group["lr"] = lr
            loss = m(b)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opts[k].step()
            opts[k].zero_grad(set_to_none=True)
            last[k] = loss.item()
        done = step + 1
        if done % 100 == 0 or done in args.eval_at:
            print(f"step {done:>4}: train loss " + ", ".join(f"{k} {v:.4f}" for k, v in last.items())
                  + f" ({time.perf_counter() - t_start:.0f} s)", flush=True)
        if done in args.eval_at:
            for k, m in models.items():
                v = val_loss(m, val_batches)
                results.append({"lib": k, "width": dim, "step": done, "val_loss": v, "init": how,
                                "steps": args.steps, "lr": args.lr, "depth": args.depth, "seed": seed})
                print(f"  step {done} {k:>14}: val loss {v:.4f} nats/byte ({v / math.log(2):.4f} bits/byte)",
                      flush=True)
    return results


def print_table(results: list[dict]) -> None:
    """Validation loss per (width, step) for both libraries, each the mean over the seeds both
    libraries ran, the ratio of the means arlm / x-transformers, and the per-seed ratios' range."""
    runs: dict[tuple, dict[int, float]] = {}  # (width, step, lib) -> {seed: val_loss}
    for r in results:
        runs.setdefault((r["width"], r["step"], r["lib"]), {})[r.get("seed", 0)] = r["val_loss"]
    print("\n| width | step | seeds | x-transformers | arlm | arlm / x-t | per-seed ratios |\n|---|---|---|---|---|---|---|")
    worst = None
    for w, s in sorted({(w, s) for w, s, _ in runs}):
        xs, ars = runs.get((w, s, "x-transformers"), {}), runs.get((w, s, "arlm"), {})
        seeds = sorted(xs.keys() & ars.keys())
        if not seeds:  # one library only so far: its mean, no ratio
            mean = lambda d: f"{np.mean(list(d.values())):.4f}" if d else "-"  # noqa: E731
            print(f"| {w} | {s} | - | {mean(xs)} | {mean(ars)} | - | - |")
            continue
        x = float(np.mean([xs[sd] for sd in seeds]))
        a = float(np.mean([ars[sd] for sd in seeds]))
        per = [ars[sd] / xs[sd] for sd in seeds]
        ratio = a / x
        print(f"| {w} | {s} | {','.join(map(str, seeds))} | {x:.4f} | {a:.4f} | {ratio:.4f} | "
              f"{min(per):.4f}-{max(per):.4f} |")
        worst = ratio if worst is None else max(worst, ratio)
    if worst is not None:
        print(f"highest ratio arlm / x-transformers (means over seeds): {worst:.4f} "
              f"({'never above 1' if worst <= 1 else 'above 1'})")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table:
        print_table([json.loads(line) for f in args.table for line in f.read_text().splitlines() if line.strip()])
        return 0
    if not args.data.is_file():
        print(f"quality.py: {args.data} not found; nothing to compare. Pass --data PATH to a text file "
              "(tinyshakespeare: https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt)")
        return 0
    torch.set_num_threads(args.threads)
    raw = np.frombuffer(args.data.read_bytes(), dtype=np.uint8)
    split = int(len(raw) * 0.9)
    val_batches = batches(raw[split:], args.seq, args.batch, args.eval_batches, args.val_seed)

    print(f"# quality: {common.describe_machine(torch.device('cpu'))}")
    print(f"data: {args.data} ({len(raw):,} bytes; byte tokens; first 90% train, last 10% val)")
    print(f"{args.steps} steps, batch {args.batch} x seq {args.seq}, AdamW lr {args.lr} (10% warmup, cosine to 10%), "
          f"betas (0.9, 0.99), wd 0.1 on 2-D tensors, grad clip 1.0; val = {args.eval_batches} fixed batches "
          f"after steps {', '.join(map(str, args.eval_at))}")
    results = []
    for dim in args.widths:
        for seed in args.seeds:
            train_batches = batches(raw[:split], args.seq, args.batch, args.steps, seed)
            res = train_width(args, dim, seed, train_batches, val_batches)
            results += res
            if args.save:
                with args.save.open("a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in res)
    print_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

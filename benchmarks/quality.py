"""Quality parity: x-transformers and arlm trained alike on tinyshakespeare, validation losses printed.

Same keyword arguments, seed, batches, optimizer and schedule for both. arlm starts from
x-transformers' initial weights when ``arlm.export.x_transformers.convert_state_dict`` exists
(so any difference is the implementations', not the inits'); ``--own-init`` (or no converter)
gives each library its own initialisation after seeding with the same seed. Training steps
alternate between the two, so machine load affects both alike. Byte-level tokens; the first 90%
of the file trains, the last 10% validates (the same fixed validation batches for both).

  .venv/bin/python benchmarks/quality.py                      # ~2-4 minutes on 2 CPU cores
  .venv/bin/python benchmarks/quality.py --data PATH --steps 300
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import common
import numpy as np
import torch

DEFAULT_DATA = common.REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
DECODER = dict(dim=128, depth=2, heads=4, attn_dim_head=32, rotary_pos_emb=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"text file (default: {DEFAULT_DATA})")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--own-init", action="store_true", help="each library's own init (same seed), not copied weights")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a busy 2-core machine two OpenMP threads run ~5-10x slower)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


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


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.data.is_file():
        print(f"quality.py: {args.data} not found; nothing to compare. Pass --data PATH to a text file "
              "(tinyshakespeare: https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt)")
        return 0
    torch.set_num_threads(args.threads)
    raw = np.frombuffer(args.data.read_bytes(), dtype=np.uint8)
    split = int(len(raw) * 0.9)
    train_tok, val_tok = raw[:split], raw[split:]

    x_model, a_model, copied, how = common.build_pair(256, args.seq, DECODER, seed=args.seed)
    if args.own_init and copied:
        torch.manual_seed(args.seed)
        a_model.net.init_weights(torch.Generator().manual_seed(args.seed))
        copied, how = False, "each library's own init (arlm: init_weights with the same seed), --own-init"
    models = {"x-transformers": x_model.train(), "arlm": a_model.train()}
    # decay only matrices: x-transformers stores norm gains as (gain - 1), so decaying every
    # parameter would pull its gains towards 1 and arlm's towards 0, a difference of recipe, not of library
    opts = {k: torch.optim.AdamW([{"params": [p for p in m.parameters() if p.dim() >= 2], "weight_decay": 0.1},
                                  {"params": [p for p in m.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                                 lr=args.lr, betas=(0.9, 0.99))
            for k, m in models.items()}
    train_batches = batches(train_tok, args.seq, args.batch, args.steps, args.seed)
    val_batches = batches(val_tok, args.seq, args.batch, args.eval_batches, args.seed + 1)

    print(f"# quality parity: {common.describe_machine(torch.device('cpu'))}")
    print(f"data: {args.data} ({len(raw):,} bytes; byte tokens; first 90% train, last 10% val)")
    print(f"config (same kwargs for both): TransformerWrapper(num_tokens=256, max_seq_len={args.seq}, "
          f"attn_layers=Decoder({', '.join(f'{k}={v}' for k, v in DECODER.items())}))")
    print(f"init: {how}")
    print(f"{args.steps} steps, batch {args.batch} x seq {args.seq}, AdamW lr {args.lr} (10% warmup, cosine to 10%), "
          f"betas (0.9, 0.99), wd 0.1 on 2-D tensors, grad clip 1.0; val = {args.eval_batches} fixed batches")
    print("initial val loss: " + ", ".join(f"{k} {val_loss(m, val_batches):.4f}" for k, m in models.items()))

    seconds = {k: 0.0 for k in models}
    last = {k: float("nan") for k in models}
    t_start = time.perf_counter()
    for step, b in enumerate(train_batches):
        lr = lr_at(step, args.steps, args.lr)
        for k, m in models.items():
            t0 = time.perf_counter()
            for group in opts[k].param_groups:
                group["lr"] = lr
            loss = m(b)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opts[k].step()
            opts[k].zero_grad(set_to_none=True)
            seconds[k] += time.perf_counter() - t0
            last[k] = loss.item()
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            print(f"step {step + 1:>4}: train loss " + ", ".join(f"{k} {v:.4f}" for k, v in last.items())
                  + f" ({time.perf_counter() - t_start:.0f} s)", flush=True)

    final = {k: val_loss(m, val_batches) for k, m in models.items()}
    for k in models:
        print(f"{k:>14}: val loss {final[k]:.4f} nats/byte ({final[k] / math.log(2):.4f} bits/byte), "
              f"train time {seconds[k]:.1f} s")
    print(f"difference arlm - x-transformers: {final['arlm'] - final['x-transformers']:+.4f} nats/byte")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

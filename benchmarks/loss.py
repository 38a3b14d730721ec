"""Training-loss memory and time: full logits + F.cross_entropy vs arlm's chunked loss.

One forward + backward of the final projection and the loss for N rows of final embeddings
(the rest of the model is the same either way). Each mode runs in its own subprocess so the
peak memory is its own: growth of the peak RSS over the inputs on CPU, torch.cuda.max_memory_allocated on CUDA.

  .venv/bin/python benchmarks/loss.py                       # GPT-2 vocabulary, 2048 rows, CPU
  python benchmarks/loss.py --device cuda --rows 8192 --dim 768 --bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_one(args) -> dict:
    import torch

    from arlm.model.loss import linear_cross_entropy

    torch.manual_seed(0)
    dev = torch.device(args.device)
    h = torch.randn(args.rows, args.dim, device=dev, requires_grad=True)
    w = (torch.randn(args.vocab, args.dim, device=dev) * 0.02).requires_grad_()
    t = torch.randint(0, args.vocab, (args.rows,), device=dev)
    ctx = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16)

    def step():
        with ctx:
            if args.mode == "full":
                loss = torch.nn.functional.cross_entropy((h @ w.t()).float(), t)
            else:
                loss = linear_cross_entropy(h, w, t, chunk=args.chunk)
        loss.backward()
        h.grad = w.grad = None
        return loss

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # inputs made, nothing run yet
    step()  # warm up (allocator, kernels)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        loss = step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:  # CPU: growth of the peak RSS over the inputs
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss
    return {"mode": args.mode, "loss": float(loss), "time": sorted(times)[len(times) // 2], "peak": peak}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rows", type=int, default=2048, help="batch x sequence rows")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--chunk", type=int, default=None, help="rows per chunk (default: arlm's automatic choice)")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--mode", choices=("full", "chunked"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.chunk is None:
        from arlm.model.loss import auto_chunk_rows

        args.chunk = auto_chunk_rows(args.vocab) or 1024
    if args.mode:  # child: one mode, JSON on stdout
        print(json.dumps(run_one(args)))
        return 0
    print(f"# loss benchmark: {args.rows} rows, dim {args.dim}, vocab {args.vocab}, device {args.device}, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}, chunk {args.chunk} rows; median of {args.repeats}")
    res = {}
    for mode in ("full", "chunked"):
        out = subprocess.run([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--mode", mode,
                              "--chunk", str(args.chunk)], capture_output=True, text=True, check=True)
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    what = "peak RSS growth" if args.device == "cpu" else "peak allocated"
    for mode, r in res.items():
        print(f"{mode:>8}: loss {r['loss']:.5f}, fwd+bwd {r['time'] * 1e3:8.1f} ms, "
              f"{what} above the inputs {r['peak'] / 2**20:8.1f} MiB")
    f, c = res["full"], res["chunked"]
    print(f"chunked / full: time {c['time'] / f['time']:.2f}x, memory {c['peak'] / f['peak']:.2f}x, "
          f"|loss difference| {abs(c['loss'] - f['loss']):.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`arlm serve` under load: requests/s and latency percentiles, batched vs one at a time.

A server process serves a randomly initialised byte-level model (no training needed: the cost
of a decode step does not depend on the weights) on a loopback port; this process runs C
concurrent clients (httpx, asyncio), each sending completion requests back to back. The same
server code runs twice: batched (up to --max-batch sequences share each decode step) and one at
a time (--max-batch 1, the others queue). Printed per client count: requests/s, latency
p50/p90/p99 in ms, tokens/s, model decode steps per request (max_tokens when nothing is
shared: the machine-independent measure of batching), and the ratio batched / one-at-a-time.
Both servers run at once and the runs alternate between them (medians of --repeats), so a
busy machine hits both alike.

  .venv/bin/python benchmarks/serve.py                   # 1, 8 and 32 clients, ~3 min on 2 cores
  .venv/bin/python benchmarks/serve.py --clients 1 8 --requests 48 --dim 256
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def build(args):
    import torch

    from arlm.config.model import ModelConfig
    from arlm.model import Transformer
    from arlm.tokenizers.byte import ByteTokenizer

    torch.manual_seed(args.seed)
    cfg = ModelConfig(vocab_size=256, max_seq_len=args.context, dim=args.dim, depth=args.depth, heads=args.heads)
    return Transformer(cfg).eval(), ByteTokenizer()


def serve_forever(args) -> None:
    """The server side (run as a child process)."""
    import torch
    import uvicorn

    from arlm.serve import create_app

    torch.set_num_threads(args.threads)
    model, tok = build(args)
    app = create_app(model, tok, name="bench", max_rows=args.max_batch, max_waiting=4096)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="error")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, __file__, "--serve", "--port", str(port), "--max-batch", str(max_batch),
           "--threads", str(args.threads), "--dim", str(args.dim), "--depth", str(args.depth),
           "--heads", str(args.heads), "--context", str(args.context), "--seed", str(args.seed)]
    proc = subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.time() + 120
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit("the benchmark server did not start")
        time.sleep(0.2)


async def load(url: str, clients: int, requests: int, args) -> tuple[float, list[float], int]:
    """C clients share ``requests`` requests; returns (wall s, latencies s, completion tokens)."""
    import httpx

    todo = list(range(requests))
    latencies, tokens = [], 0

    async def client(c: httpx.AsyncClient):
        nonlocal tokens
        while todo:
            i = todo.pop()
            body = dict(prompt=f"request {i:05d}: the model", max_tokens=args.max_tokens, temperature=0.8, seed=i)
            t0 = time.perf_counter()
            r = await c.post("/v1/completions", json=body)
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()
            tokens += r.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
        await client_warmup(c, args)
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return wall, latencies, tokens


async def client_warmup(c, args) -> None:
    for _ in range(3):
        (await c.post("/v1/completions", json=dict(prompt="warm up", max_tokens=args.max_tokens))).raise_for_status()


def model_steps(url: str) -> int:
    """Decode steps the server's model has run so far (its /health counter)."""
    import httpx

    return httpx.get(url + "/health", timeout=30).json()["stats"]["steps"]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=None, help="requests per run (default: max(32, 4 x clients))")
    p.add_argument("--repeats", type=int, default=3, help="runs per mode and client count (median reported)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=32, help="batched server: sequences per step (default: 32)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="server torch threads (default: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        return serve_forever(args)

    print(f"model: byte vocab, dim {args.dim}, depth {args.depth}, context {args.context}; prompt ~27 tokens, "
          f"max_tokens {args.max_tokens}, temperature 0.8; server threads {args.threads}; "
          f"load average {os.getloadavg()[0]:.1f}")
    modes = (("batched", args.max_batch), ("one-at-a-time", 1))
    servers = {mode: start_server(args, max_batch) for mode, max_batch in modes}
    rates = {}
    try:
        for c in args.clients:
            n = args.requests or max(32, 4 * c)
            runs = {mode: [] for mode, _ in modes}
            steps = {mode: 0 for mode, _ in modes}
            for _ in range(args.repeats):  # alternate the two servers so load spikes hit both
                for mode, _ in modes:
                    before = model_steps(servers[mode][1])
                    runs[mode].append(asyncio.run(load(servers[mode][1], c, n, args)))
                    steps[mode] += model_steps(servers[mode][1]) - before
            for mode, _ in modes:
                rate = statistics.median(n / wall for wall, _, _ in runs[mode])
                tok = statistics.median(t / wall for wall, _, t in runs[mode])
                lat = [x for _, ls, _ in runs[mode] for x in ls]
                rates[mode, c] = rate
                print(f"{mode:>14} clients {c:3d}: {rate:7.2f} req/s  {tok:8.0f} tok/s  latency p50 {pct(lat, 50):7.0f} ms"
                      f"  p90 {pct(lat, 90):7.0f} ms  p99 {pct(lat, 99):7.0f} ms  "
                      f"{steps[mode] / (args.repeats * (n + 3)):5.1f} model steps/request ({args.repeats} x {n} requests)",
                      flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    for c in args.clients:
        print(f"clients {c:3d}: batched / one-at-a-time requests/s = {rates['batched', c] / rates['one-at-a-time', c]:.2f}x")
    print(f"load average at end: {os.getloadavg()[0]:.1f} (medians of {args.repeats} alternating runs)")


if __name__ == "__main__":
    main()

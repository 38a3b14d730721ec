"""``arlm serve``: an OpenAI-compatible HTTP API over a run."""

from __future__ import annotations

import argparse
import importlib.util

from .common import UsageError, check_device, note


def serve(args: argparse.Namespace) -> int:
    """Serve a run over HTTP with OpenAI's API (completions, chat completions, models).

    Endpoints: POST /v1/completions, POST /v1/chat/completions (for runs with a
    RUN/chat_template.json), GET /v1/models, GET /health.

    Concurrent requests are decoded together in shared steps (--max-batch sequences at once;
    --max-waiting more may queue, beyond that requests get 429). Binds 127.0.0.1 unless --host
    says otherwise: the server has no authentication, so expose it only behind a proxy that has.
    Needs the 'serve' extra: pip install 'arlm[serve]'.

    examples:
      arlm serve runs/demo --port 8000
      curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
           -d '{"prompt": "def ", "max_tokens": 50, "temperature": 0.8}'
    """
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in [0, 65535], got {args.port}")
    for flag in ("max_batch", "max_body"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.max_waiting < 0:
        raise UsageError(f"--max-waiting must be >= 0, got {args.max_waiting}")
    if not all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn")):
        raise UsageError("arlm serve needs the 'serve' extra: pip install 'arlm[serve]'")
    check_device(args.device)
    from arlm.serve import serve_run

    note(f"serving {args.run} on http://{args.host}:{args.port}/v1 (Ctrl-C stops)")
    serve_run(args.run, host=args.host, port=args.port, device=args.device, max_rows=args.max_batch,
              max_waiting=args.max_waiting, max_body=args.max_body)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory written by `arlm train`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    p.add_argument("--device", default="cpu", metavar="D", help="cpu, cuda, cuda:N or mps (default: cpu)")
    p.add_argument("--max-batch", type=int, default=32, metavar="N", help="sequences decoded together (default: 32)")
    p.add_argument("--max-waiting", type=int, default=64, metavar="N",
                   help="sequences that may wait beyond those; more get 429 (default: 64)")
    p.add_argument("--max-body", type=int, default=1 << 20, metavar="BYTES",
                   help="largest request body accepted (default: 1 MiB)")

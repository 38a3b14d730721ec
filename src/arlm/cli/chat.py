"""``arlm chat``: talk to a run in the terminal, replies streamed as they are decoded."""

from __future__ import annotations

import argparse
import secrets
import sys

from .common import UsageError, check_device, note, out
from .generate import flag_error


def chat(args: argparse.Namespace) -> int:
    """Chat with a run: each line you type is a message, the reply streams back.

    Messages are laid out by the run's chat template (RUN/chat_template.json, or --template
    FILE; without one, a plain "User: ... / Assistant: ..." transcript). When the conversation
    outgrows the model context the oldest turns are dropped (a --system message is kept).
    Ctrl-C stops a reply; Ctrl-C at the prompt or Ctrl-D (end of input) ends the chat.

    examples:
      arlm chat runs/demo
      arlm chat runs/demo --temperature 0.7 --top-p 0.9 --system "You are terse."
      printf 'hello\\nhow are you?\\n' | arlm chat runs/demo --seed 0
    """
    from arlm.generation.sampling import SamplingConfig, SamplingError

    try:
        cfg = SamplingConfig(max_new_tokens=args.max_new_tokens or 1, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                             seed=args.seed)
    except SamplingError as e:
        raise flag_error(e) from None
    from arlm.serve.template import DEFAULT, ChatTemplate, run_template

    template = ChatTemplate.load(args.template) if args.template else None
    check_device(args.device)
    from arlm.generation import AutoregressiveWrapper
    from arlm.run import load_run

    run = load_run(args.run, device=args.device)
    if template is None:
        template = run_template(run.run_dir)
    if template is None:
        template = DEFAULT
        note(f"({run.run_dir} has no chat_template.json: using a plain 'User:/Assistant:' transcript)")
    context = run.cfg.model.max_seq_len
    reply_len = args.max_new_tokens or context // 2
    if reply_len >= context:
        raise UsageError(f"--max-new-tokens must be below the model context ({context} tokens), got {reply_len}")
    cfg = cfg.replace(max_new_tokens=reply_len, stop=tuple(template.stop))
    try:
        return _loop(run, AutoregressiveWrapper(run.model), template, cfg, context, args.system)
    except KeyboardInterrupt:  # Ctrl-C outside a reply ends the chat, as at the prompt
        note("")
        return 0


def _loop(run, wrapper, template, cfg, context: int, system: str | None) -> int:
    import torch

    from arlm.generation.sampling import stream_text
    from arlm.serve.template import fit_messages

    device = next(run.model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(cfg.seed if cfg.seed is not None else secrets.randbits(63))
    messages = [{"role": "system", "content": system}] if system else []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:  # Ctrl-D / end of input
            if interactive:
                note("")
            return 0
        text = line.rstrip("\n")
        if not text.strip():
            continue
        try:
            kept, ids = fit_messages(template, run.tokenizer.encode, messages + [{"role": "user", "content": text}],
                                     context - cfg.max_new_tokens)
        except ValueError as e:
            note(f"(not sent: {e})")
            continue
        dropped = len(messages) + 1 - len(kept)
        if dropped:
            note(f"(dropped the {dropped} oldest message(s) to fit the {context}-token context)")
        reply = []
        try:
            for piece in stream_text(wrapper, run.tokenizer, ids, cfg, generator=gen):
                reply.append(piece)
                out(piece, end="")
        except KeyboardInterrupt:
            note("\n(reply stopped)")
        out()
        messages = kept + [{"role": "assistant", "content": "".join(reply).strip()}]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory written by `arlm train`")
    p.add_argument("--template", metavar="FILE", help="chat template JSON (default: RUN/chat_template.json)")
    p.add_argument("--system", metavar="TEXT", help="a system message at the start of the conversation")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="longest reply (default: half the context)")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 = greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, metavar="K", help="keep the K most likely tokens")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus: keep the most likely tokens up to mass P")
    p.add_argument("--min-p", type=float, metavar="P", help="drop tokens less likely than P times the best")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R", help="(default: 1 = off)")
    p.add_argument("--seed", type=int, metavar="S", help="random seed (default: a fresh one)")
    p.add_argument("--device", default="cpu", metavar="D", help="cpu, cuda, cuda:N or mps (default: cpu)")

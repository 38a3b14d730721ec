"""``arlm generate``: sample text from a trained run, printed as it is produced."""

from __future__ import annotations

import argparse
import math
import secrets
from typing import Callable

from .common import UsageError, check_device, note, out


def generate(args: argparse.Namespace) -> int:
    """Sample text from a run, printing the prompt and then each piece as it is decoded.

    Sampling applies the temperature first, then the filters in this order: --top-k, then
    --top-p, then --min-p (each only when given); temperature 0 is greedy decoding.
    Generation stops after --max-new-tokens tokens or at the first --stop string (which is not
    printed). A prompt longer than the model context is an error unless --truncate keeps its
    last tokens. The same --seed and options give the same text.

    Also: --beams N (beam search, printed when done), repetition / presence / frequency
    penalties, contrastive decoding against a smaller --amateur run, speculative decoding with a
    smaller --draft run (same tokenizer; the acceptance rate goes to stderr), --compile.

    examples:
      arlm generate runs/demo --prompt "def " --max-new-tokens 300
      arlm generate runs/demo --prompt "class " --temperature 0.7 --top-p 0.9 --stop "\\n\\n" --num-samples 3
      arlm generate runs/big --prompt "def " --draft runs/small --num-draft-tokens 4
      arlm generate runs/demo --prompt "import " --beams 4 --max-new-tokens 40
    """
    check_options(args)
    import torch

    from arlm.generation import AutoregressiveWrapper
    from arlm.run import load_run

    check_device(args.device)
    run = load_run(args.run, step=args.step, device=args.device)
    tok = run.tokenizer
    ids = tok.encode(args.prompt)
    if not ids:
        raise UsageError("the prompt is empty; give at least one character with --prompt")
    context = run.cfg.model.max_seq_len
    if len(ids) > context:
        if not args.truncate:
            raise UsageError(f"the prompt is {len(ids)} tokens but the model context (model.max_seq_len) is "
                             f"{context} tokens; shorten it or pass --truncate to keep its last {context} tokens")
        ids = ids[-context:]
        note(f"(prompt truncated to its last {context} tokens)")
    device = next(run.model.parameters()).device
    seed = args.seed if args.seed is not None else secrets.randbits(63)
    gen = torch.Generator(device=device).manual_seed(seed)
    wrapper = AutoregressiveWrapper(run.model)
    prompt = torch.tensor([ids], dtype=torch.long, device=device)
    filter_fn = compose_filters(args.top_k, args.top_p, args.min_p)
    extra = {}
    for flag, key in (("draft", "draft_model"), ("amateur", "amateur_model")):
        path = getattr(args, flag)
        if path is not None:
            other = load_run(path, device=args.device)
            if other.tokenizer.vocab_size != tok.vocab_size or other.tokenizer.kind != tok.kind:
                raise UsageError(f"--{flag} {path} uses a different tokenizer ({other.tokenizer.kind}, "
                                 f"{other.tokenizer.vocab_size} ids) than {args.run} ({tok.kind}, {tok.vocab_size} ids)")
            extra[key] = other.model
    if args.draft is not None:
        extra["num_draft_tokens"] = args.num_draft_tokens
    if args.amateur is not None:
        extra["contrastive_decode_kwargs"] = dict(alpha=args.contrastive_alpha, beta=args.contrastive_beta)
    penalties = dict(repetition_penalty=args.repetition_penalty, presence_penalty=args.presence_penalty,
                     frequency_penalty=args.frequency_penalty)
    if args.draft is None:
        extra.update(penalties)
    elif any(v != d for v, d in zip(penalties.values(), (1.0, 0.0, 0.0))):
        raise UsageError("penalties cannot be combined with --draft (speculative decoding samples the target exactly)")
    if args.compile:
        extra["compile"] = True

    if args.beams is not None:
        with torch.no_grad():
            beams = wrapper.beam_search(prompt, args.max_new_tokens, beams=args.beams,
                                        length_penalty=args.length_penalty, return_beams_and_scores=True,
                                        beams_first=False)
        seqs, scores = beams
        for i in range(min(args.num_samples, args.beams)):
            if i:
                out("\n" + "-" * 40)
            text, _ = StopStrings(args.stop or []).feed(tok.decode(seqs[0, i].tolist()), final=True)
            out(args.prompt + text)
            note(f"(beam {i + 1}: length-normalised log-probability {float(scores[0, i]):.3f})")
        return 0

    for i in range(args.num_samples):
        if i:
            out("\n" + "-" * 40)
        out(args.prompt, end="")
        decoder = tok.stream_decoder()
        stopper = StopStrings(args.stop or [])
        steps = wrapper.stream(prompt, args.max_new_tokens, temperature=args.temperature,
                               filter_logits_fn=filter_fn, generator=gen, **extra)
        stopped = False
        try:
            for step in steps:
                text, stopped = stopper.feed(decoder.push(step.tolist()))
                out(text, end="")
                if stopped:
                    break
        finally:
            steps.close()  # restores the model's mode even when a stop string ended the loop early
        if not stopped:
            text, _ = stopper.feed(decoder.flush(), final=True)
            out(text, end="")
        out()
    if wrapper.last_stats.get("acceptance_rate") is not None:
        note(f"(speculative decoding: {wrapper.last_stats['acceptance_rate']:.1%} of draft tokens accepted)")
    if args.seed is None and args.temperature > 0:
        note(f"(seed {seed}; pass --seed {seed} to repeat this sample)")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory written by `arlm train`")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200, metavar="N", help="tokens to sample (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T",
                   help="divide the logits by T before filtering; 0 = greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, metavar="K", help="keep the K most likely tokens")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus: keep the most likely tokens "
                   "whose probability adds up to P, in (0, 1]")
    p.add_argument("--min-p", type=float, metavar="P", help="drop tokens less likely than P times "
                   "the most likely one, P in [0, 1]")
    p.add_argument("--seed", type=int, metavar="S", help="random seed (default: a fresh one, printed to stderr)")
    p.add_argument("--num-samples", type=int, default=1, metavar="N", help="independent samples (default: 1)")
    p.add_argument("--stop", nargs="+", metavar="STR", help="stop at the first of these strings "
                   "(not printed); escapes such as \\n are understood")
    p.add_argument("--step", type=int, metavar="N", help="use checkpoint step-N (default: the latest)")
    p.add_argument("--truncate", action="store_true", help="keep the last tokens of a prompt longer "
                   "than the model context instead of failing")
    p.add_argument("--device", default="cpu", metavar="D", help="cpu, cuda, cuda:N or mps (default: cpu)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                   help="divide positive / multiply negative logits of tokens already present by R (default: 1 = off)")
    p.add_argument("--presence-penalty", type=float, default=0.0, metavar="A",
                   help="subtract A from the logits of tokens already present (default: 0)")
    p.add_argument("--frequency-penalty", type=float, default=0.0, metavar="A",
                   help="subtract A times the count of each token already present (default: 0)")
    p.add_argument("--beams", type=int, metavar="N", help="beam search with N beams (printed when done; "
                   "--num-samples shows the best ones)")
    p.add_argument("--length-penalty", type=float, default=1.0, metavar="L",
                   help="beam scores are log-probability / length**L (default: 1)")
    p.add_argument("--draft", metavar="RUN", help="speculative decoding with this smaller run as the draft model")
    p.add_argument("--num-draft-tokens", type=int, default=4, metavar="K", help="draft tokens per step (default: 4)")
    p.add_argument("--amateur", metavar="RUN", help="contrastive decoding against this smaller run")
    p.add_argument("--contrastive-alpha", type=float, default=0.1, metavar="A",
                   help="keep tokens at least A times as likely as the best (default: 0.1)")
    p.add_argument("--contrastive-beta", type=float, default=0.5, metavar="B",
                   help="score (1+B)*expert - B*amateur (default: 0.5)")
    p.add_argument("--compile", action="store_true", help="compile the decode step (CUDA graphs on a GPU)")


def check_options(args: argparse.Namespace) -> None:
    """Reject bad sampling options before any model is loaded."""
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.seed is not None and not (0 <= args.seed < 2**63):
        raise UsageError(f"--seed must be an integer in [0, 2**63), got {args.seed}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise UsageError(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be an integer >= 1, got {args.top_k}")
    if args.top_p is not None and not (0.0 < args.top_p <= 1.0):
        raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.min_p is not None and not (0.0 <= args.min_p <= 1.0):
        raise UsageError(f"--min-p must be in [0, 1], got {args.min_p}")
    if args.beams is not None and args.beams < 1:
        raise UsageError(f"--beams must be >= 1, got {args.beams}")
    if args.num_draft_tokens < 1:
        raise UsageError(f"--num-draft-tokens must be >= 1, got {args.num_draft_tokens}")
    if not (math.isfinite(args.repetition_penalty) and args.repetition_penalty > 0):
        raise UsageError(f"--repetition-penalty must be > 0 (1 = off), got {args.repetition_penalty}")
    if args.draft is not None and args.amateur is not None:
        raise UsageError("choose either --draft (speculative) or --amateur (contrastive), not both")
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.step is not None and args.step < 0:
        raise UsageError(f"--step must be >= 0, got {args.step}")
    if args.stop:
        args.stop = [_unescape(s) for s in args.stop]
        if any(not s for s in args.stop):
            raise UsageError("--stop strings must not be empty")


def compose_filters(top_k: int | None = None, top_p: float | None = None,
                    min_p: float | None = None) -> Callable | None:
    """One logits filter applying top-k, then top-p, then min-p (those given); None if none is."""
    from arlm.generation import filters

    chain = []
    if top_k is not None:
        chain.append(lambda logits: filters.top_k(logits, k=top_k))
    if top_p is not None:
        chain.append(lambda logits: filters.top_p(logits, thres=top_p))
    if min_p is not None:
        chain.append(lambda logits: filters.min_p(logits, min_p=min_p))
    if not chain:
        return None

    def composed(logits):
        for f in chain:
            logits = f(logits)
        return logits

    return composed


class StopStrings:
    """Cuts streamed text at the first stop string, holding back text that may begin one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str, final: bool = False) -> tuple[str, bool]:
        """Add decoded text; returns (text safe to print, whether a stop string was reached)."""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            ready, self.pending = self.pending[: min(hits)], ""
            return ready, True
        keep = 0 if final else self._held_back()
        cut = len(self.pending) - keep
        ready, self.pending = self.pending[:cut], self.pending[cut:]
        return ready, False

    def _held_back(self) -> int:
        """Length of the longest end of ``pending`` that is the start of some stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(s[:n]):
                    best = n
                    break
        return best


def _unescape(s: str) -> str:
    """'\\n' typed on a command line means a newline (shells pass the two characters)."""
    return s.replace("\\n", "\n").replace("\\t", "\t")

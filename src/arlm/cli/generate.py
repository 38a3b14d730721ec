"""``arlm generate``: sample text from a trained run, printed as it is produced."""

from __future__ import annotations

import argparse
import secrets

from arlm.generation.sampling import SamplingError, StopStrings, unescape

from .common import UsageError, check_device, note, out


def generate(args: argparse.Namespace) -> int:
    """Sample text from a run, printing the prompt and then each piece as it is decoded.

    Sampling applies the temperature first, then the filters in this order: --top-k, then
    --top-p, then --min-p (each only when given); temperature 0 is greedy decoding.
    Generation stops after --max-new-tokens tokens or at the first --stop string (which is not
    printed). A prompt longer than the model context is an error unless --truncate keeps its
    last tokens. The same --seed and options give the same text. Every option is checked
    before anything is printed.

    Also: --beams N (beam search, printed when done; --stochastic samples the beams; the
    sampling filters, penalties, --amateur and --draft do nothing there and are refused),
    repetition / presence / frequency penalties, contrastive decoding against a smaller
    --amateur run, speculative decoding with a smaller --draft run (same tokenizer; the
    acceptance rate goes to stderr), --compile.

    examples:
      arlm generate runs/demo --prompt "def " --max-new-tokens 300
      arlm generate runs/demo --prompt "class " --temperature 0.7 --top-p 0.9 --stop "\\n\\n" --num-samples 3
      arlm generate runs/big --prompt "def " --draft runs/small --num-draft-tokens 4
      arlm generate runs/demo --prompt "import " --beams 4 --max-new-tokens 40
    """
    cfg = check_options(args)
    import torch

    from arlm.generation import AutoregressiveWrapper
    from arlm.generation.sampling import stream_text
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
    seed = cfg.seed if cfg.seed is not None else secrets.randbits(63)
    gen = torch.Generator(device=device).manual_seed(seed)
    wrapper = AutoregressiveWrapper(run.model)
    extra = {}
    for flag, key in (("draft", "draft_model"), ("amateur", "amateur_model")):
        path = getattr(args, flag)
        if path is not None:
            other = load_run(path, device=args.device)
            if other.tokenizer.fingerprint != tok.fingerprint:  # same size is not same vocabulary (BPE merges)
                raise UsageError(f"--{flag} {path} uses a different vocabulary ({other.tokenizer.kind}, "
                                 f"{other.tokenizer.vocab_size} ids, fingerprint {other.tokenizer.fingerprint[:12]}) "
                                 f"than {args.run} ({tok.kind}, {tok.vocab_size} ids, fingerprint "
                                 f"{tok.fingerprint[:12]}); both runs must share one tokenizer.json")
            extra[key] = other.model
    if args.draft is not None:
        extra["num_draft_tokens"] = args.num_draft_tokens
    if args.amateur is not None:
        extra["contrastive_decode_kwargs"] = dict(alpha=args.contrastive_alpha, beta=args.contrastive_beta)
    if args.compile:
        extra["compile"] = True

    if cfg.beams is not None:
        prompt = torch.tensor([ids], dtype=torch.long, device=device)
        seqs, scores = wrapper.beam_search(prompt, sampling=cfg.replace(stop=()), generator=gen,
                                           return_beams_and_scores=True, beams_first=False)
        for i in range(cfg.num_samples):
            if i:
                out("\n" + "-" * 40)
            text, _ = StopStrings(cfg.stop).feed(tok.decode(seqs[0, i].tolist()), final=True)
            out(args.prompt + text)
            note(f"(beam {i + 1}: length-normalised log-probability {float(scores[0, i]):.3f})")
        return 0

    one = cfg.replace(num_samples=1)
    for i in range(cfg.num_samples):
        # the first token is decoded before anything is printed, so every late check
        # (contrastive options, the draft's context) fails before the prompt appears
        pieces = stream_text(wrapper, tok, ids, one, generator=gen, **extra)
        if i:
            out("\n" + "-" * 40)
        out(args.prompt, end="")
        for text in pieces:
            out(text, end="")
        out()
    if wrapper.last_stats.get("acceptance_rate") is not None:
        note(f"(speculative decoding: {wrapper.last_stats['acceptance_rate']:.1%} of draft tokens accepted)")
    if cfg.seed is None and cfg.temperature > 0:
        note(f"(seed {seed}; pass --seed {seed} to repeat this sample)")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory written by `arlm train`")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200, metavar="N", help="tokens to sample (default: 200)")
    p.add_argument("--temperature", type=float, metavar="T",
                   help="divide the logits by T before filtering; 0 = greedy (default: 0.8; beam search: only "
                   "with --stochastic)")
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
    p.add_argument("--stochastic", action="store_true", help="beam search samples its beams (Gumbel top-k) "
                   "at --temperature")
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


def check_options(args: argparse.Namespace):
    """Check every option before any model is loaded or anything printed; returns the
    ``SamplingConfig`` they describe (its own checks named after the flags)."""
    from arlm.generation.contrastive import check_contrastive
    from arlm.generation.sampling import SamplingConfig

    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = args.prompt[e.start].encode("utf-8", "surrogateescape")
        raise UsageError(f"--prompt is not valid UTF-8: byte 0x{bad.hex()} at character {e.start}; "
                         "give the prompt as UTF-8 text") from None
    beams = args.beams is not None
    if beams:
        for flag in ("draft", "amateur", "compile"):
            if getattr(args, flag):
                raise UsageError(f"--{flag} does nothing in beam search (--beams); drop one of them")
    elif args.stochastic:
        raise UsageError("--stochastic samples the beams of beam search; add --beams N or drop it")
    if args.num_draft_tokens < 1:
        raise UsageError(f"--num-draft-tokens must be >= 1, got {args.num_draft_tokens}")
    if args.draft is not None and args.amateur is not None:
        raise UsageError("choose either --draft (speculative) or --amateur (contrastive), not both")
    if args.draft is not None and (args.repetition_penalty, args.presence_penalty, args.frequency_penalty) != (1, 0, 0):
        raise UsageError("penalties cannot be combined with --draft (speculative decoding samples the target exactly)")
    if args.step is not None and args.step < 0:
        raise UsageError(f"--step must be >= 0, got {args.step}")
    if args.amateur is not None:
        try:
            check_contrastive(args.contrastive_alpha, args.contrastive_beta)
        except ValueError as e:
            raise UsageError(str(e).replace("contrastive alpha", "--contrastive-alpha")
                             .replace("contrastive beta", "--contrastive-beta")) from None
    temperature = args.temperature if args.temperature is not None else (1.0 if beams else 0.8)
    try:
        return SamplingConfig(
            max_new_tokens=args.max_new_tokens, temperature=temperature, top_k=args.top_k, top_p=args.top_p,
            min_p=args.min_p, repetition_penalty=args.repetition_penalty, presence_penalty=args.presence_penalty,
            frequency_penalty=args.frequency_penalty, stop=tuple(unescape(s) for s in args.stop or ()),
            seed=args.seed, num_samples=args.num_samples, beams=args.beams, length_penalty=args.length_penalty,
            stochastic=args.stochastic)
    except SamplingError as e:
        raise flag_error(e) from None


def flag_error(e: SamplingError) -> UsageError:
    """A SamplingConfig's complaint, named after the command-line flag of its field."""
    flag = "--" + e.field.replace("_", "-")
    return UsageError(f"{flag} {e.problem}".replace("beam search", "beam search (--beams)"))

"""lm-evaluation-harness on arlm runs: the model adapter ``ArlmLM`` (registered as ``arlm``) and
``run_tasks``, which ``arlm eval RUN --tasks ...`` calls.

The adapter scores with the run's own tokenizer and context (``model.max_seq_len``): a context
longer than that is cut from the left, as lm-eval expects, and ``loglikelihood_rolling`` scores
long texts in lm-eval's rolling windows, each token predicted once. arlm's tokenizers have no
end-of-text token, so the token lm-eval conditions an empty context on (its "prefix" token) is the
newline's, the separator between documents in plain text; ``prefix_token_id`` overrides it.
Needs the ``eval`` extra (lm-eval); importing this module without it raises ImportError saying so.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import Collator, handle_stop_sequences
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError:  # pragma: no cover - exercised only where the extra is missing
    raise ImportError("lm-evaluation-harness support needs the 'eval' extra: pip install 'arlm[eval]'") from None

from ..generation import AutoregressiveWrapper
from ..generation.sampling import SamplingConfig, StopStrings

__all__ = ["ArlmLM", "run_tasks"]

DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_GEN_TOKS = 256
# the generation options of lm-eval tasks this adapter honours
GEN_KWARGS = {"until", "max_gen_toks", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p",
              "repetition_penalty"}


@register_model("arlm")
class ArlmLM(TemplateLM):
    """An arlm run as an lm-eval model.

    ``run``: a run folder (or checkpoint folder), or a ``Run`` from ``arlm.run.load_run``.
    From lm-eval's own command line: ``--model arlm --model_args run=runs/demo,step=700`` once
    ``arlm.evaluation.lm_eval`` is imported (``arlm eval --tasks`` does that).
    """

    def __init__(self, run=None, step: int | None = None, device: str | None = None,
                 batch_size: int | str | None = None, prefix_token_id: int | None = None, seed: int = 1234,
                 max_batch_size: int | None = None):
        super().__init__()
        from ..run import Run, load_run

        if run is None:
            raise ValueError("the arlm lm-eval model needs run=RUN (a run folder written by arlm train)")
        if not isinstance(run, Run):
            run = load_run(run, step=None if step is None else int(step), device=device or "cpu")
        elif device is not None:
            run.model.to(device)
        self.run = run
        self.model = run.model.eval()
        self.wrapper = AutoregressiveWrapper(self.model)
        self.tokenizer = run.tokenizer
        self._device = next(self.model.parameters()).device
        # lm-eval passes "auto" or strings from --model_args; a number is what arlm can use
        # (max_batch_size, lm-eval's cap for "auto", has nothing to cap then)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() and int(batch_size) > 0 else DEFAULT_BATCH_SIZE
        newline = self.tokenizer.encode("\n")
        self._prefix = int(prefix_token_id) if prefix_token_id is not None else newline[-1]
        self.seed = int(seed)

    # ---- what TemplateLM asks for -------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self._prefix

    @property
    def max_length(self) -> int:
        return self.model.cfg.max_seq_len

    @property
    def tokenizer_name(self) -> str:
        return f"arlm-{getattr(self.tokenizer, 'kind', 'tokenizer')}-{self.tokenizer.vocab_size}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return list(self.tokenizer.encode(string))

    def tok_decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))

    # ---- scoring ------------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(summed log-prob of the continuation, whether greedy decoding gives it) per request.

        Each request is ``(key, context_ids, continuation_ids)``; the model reads the last
        ``max_length`` tokens of context + continuation (minus the last) and scores the continuation.
        Longest first, so a batch pads little; rows are right-padded, which a causal model never sees.
        """
        S = self.max_length
        for key, ctx, cont in requests:
            if not cont:
                raise ValueError(f"lm-eval asked to score an empty continuation after {key!r}")
            if len(cont) > S:
                raise ValueError(f"a continuation of {len(cont)} tokens cannot be scored in a context of {S} "
                                 "(model.max_seq_len); use loglikelihood_rolling for long texts")
        order = Collator(requests, sort_fn=lambda r: (-len(r[1]) - len(r[2]), tuple(r[1]) + tuple(r[2])))
        results = []
        for batch in order.get_batched(n=self.batch_size):
            inputs = [(list(ctx) + list(cont))[-(S + 1):][:-1] for _, ctx, cont in batch]
            width = max(len(x) for x in inputs)
            ids = torch.zeros(len(inputs), width, dtype=torch.long)  # (B, T) right-padded
            for i, x in enumerate(inputs):
                ids[i, : len(x)] = torch.tensor(x)
            with torch.inference_mode():
                logp = F.log_softmax(self.model(ids.to(self._device)).float(), dim=-1)  # (B, T, V)
            for i, (key, _, cont) in enumerate(batch):
                n, k = len(inputs[i]), len(cont)
                rows = logp[i, n - k: n]  # (k, V): the predictions of the continuation's tokens
                target = torch.tensor(cont, device=rows.device)
                score = float(rows.gather(-1, target[:, None]).sum())
                greedy = bool((rows.argmax(-1) == target).all())
                results.append((score, greedy))
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, (score, greedy))
        return order.get_original(results)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, in lm-eval's rolling windows of the model's context
        (the first token conditioned on the prefix token, every token scored exactly once)."""
        windows, owner = [], []
        for i, req in enumerate(requests):
            (text,) = req.args
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(i)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for i, (score, _) in zip(owner, scores):
            totals[i] += score
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---- generation ---------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continuations that end before the first ``until`` string (or after ``max_gen_toks``).

        Requests with the same generation options decode together as one ragged batch; greedy
        unless ``do_sample`` (then ``temperature``, ``top_k``, ``top_p`` apply, seeded by ``seed``).
        """
        order = Collator([(req.args[0], req.args[1]) for req in requests],
                         sort_fn=lambda r: -len(self.tok_encode(r[0])), group_fn=lambda r: r[1],
                         group_by="gen_kwargs")
        results = []
        for batch in order.get_batched(n=self.batch_size):
            contexts = [ctx for ctx, _ in batch]
            texts = self._generate(contexts, dict(batch[0][1]))
            for (ctx, kw), text in zip(batch, texts):
                results.append(text)
                self.cache_hook.add_partial("generate_until", (ctx, kw), text)
        return order.get_original(results)

    def _generate(self, contexts: list[str], gen_kwargs: dict) -> list[str]:
        unknown = sorted(set(gen_kwargs) - GEN_KWARGS)
        if unknown:
            raise ValueError(f"lm-eval generation option(s) {', '.join(unknown)} are not supported by the arlm "
                             f"model; supported: {', '.join(sorted(GEN_KWARGS))}")
        until = handle_stop_sequences(gen_kwargs.get("until"), eos=None)
        max_new = int(gen_kwargs.get("max_gen_toks", gen_kwargs.get("max_new_tokens", DEFAULT_MAX_GEN_TOKS)))
        do_sample = bool(gen_kwargs.get("do_sample", False))
        # greedy unless do_sample, whatever temperature says (as lm-eval's Hugging Face model)
        sampling = SamplingConfig(
            max_new_tokens=max_new, temperature=float(gen_kwargs.get("temperature", 1.0)) if do_sample else 0.0,
            top_k=gen_kwargs.get("top_k") if do_sample else None, top_p=gen_kwargs.get("top_p") if do_sample else None,
            repetition_penalty=float(gen_kwargs.get("repetition_penalty", 1.0)))
        S = self.max_length
        keep = S - min(max_new, S // 2)  # room for the new tokens; beyond it decoding slides its window
        prompts = [torch.tensor((self.tok_encode(c) or [self.prefix_token_id])[-keep:], device=self._device)
                   for c in contexts]
        gen = torch.Generator(device=self._device).manual_seed(self.seed)
        decoders = [self.tokenizer.stream_decoder() for _ in prompts]
        stoppers = [StopStrings(until) for _ in prompts]
        texts, done = [""] * len(prompts), [False] * len(prompts)
        steps = self.wrapper.stream(prompts, sampling=sampling, generator=gen)
        try:
            for tokens in steps:  # (B,) one new token per row
                for i, t in enumerate(tokens.tolist()):
                    if not done[i]:
                        piece, done[i] = stoppers[i].feed(decoders[i].push([t]))
                        texts[i] += piece
                if all(done):
                    break
        finally:
            steps.close()
        for i in range(len(prompts)):
            if not done[i]:
                texts[i] += stoppers[i].feed(decoders[i].flush(), final=True)[0]
        return texts


def run_tasks(run, tasks: list[str], *, include_path: str | Path | None = None, num_fewshot: int | None = None,
              limit: int | float | None = None, batch_size: int | None = None, device: str | None = None,
              log=None) -> dict:
    """Evaluate ``run`` on lm-eval ``tasks`` (names, or groups, lm-eval knows, plus the task YAML
    files under ``include_path``); returns lm-eval's results dict (``results``, ``versions``, ...).

    Unknown task names raise ValueError before any model work, naming close matches.
    """
    import difflib

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise ValueError(f"--include-path {include_path}: not a folder (give the folder holding your task YAML files)")
    # lm-eval's own ~15,000 task configs take seconds to index: look in include_path alone first
    manager = None
    if include_path is not None:
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
        if not set(tasks) <= set(manager.all_tasks):
            manager = None
    if manager is None:
        manager = TaskManager(include_path=str(include_path) if include_path is not None else None)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        hints = []
        for t in unknown:
            close = difflib.get_close_matches(t, known, n=3, cutoff=0.6)
            hints.append(f"{t!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ValueError(f"unknown lm-eval task(s) {', '.join(hints)}; `lm_eval ls tasks` lists them, and "
                         "--include-path DIR adds the task YAML files in DIR")
    lm = ArlmLM(run, batch_size=batch_size, device=device)
    out = simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                          log_samples=False)
    return out

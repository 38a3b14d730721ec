"""One sampling configuration: what to decode and how, validated once where it is built.

``SamplingConfig`` is frozen and checks itself in ``__post_init__``, so every holder of one
(``AutoregressiveWrapper.generate`` / ``beam_search``, ``arlm generate``, ``arlm serve``,
``arlm chat``) can trust it without checking again; ``dataclasses.replace`` re-validates.
Errors are ``SamplingError`` (a ValueError) carrying the field name, which the CLI turns into
its flag and the server into OpenAI's ``param``. Checks that need the model (an EOS id inside
the vocabulary, a prompt that fits the context) stay with the model.

Also here: the logits filter chain (top-k, then top-p, then top-a, then min-p), stop strings
cut from streamed text, and ``stream_text`` which ties them to a tokenizer.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from dataclasses import dataclass, fields
from typing import Callable, Iterator

__all__ = ["SamplingConfig", "SamplingError", "StopStrings", "compose_filters", "stream_text", "unescape"]

# beam search scores whole hypotheses by log-probability: these options would change nothing
_NOT_FOR_BEAMS = ("top_k", "top_p", "top_a", "min_p", "logits_filter")
_PENALTIES = (("repetition_penalty", 1.0), ("presence_penalty", 0.0), ("frequency_penalty", 0.0))


class SamplingError(ValueError):
    """A sampling option out of range or an option combination that would do nothing."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem


def _is_int(v) -> bool:
    """An integer (numpy's too), not a bool and not a float that happens to be whole."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick new tokens. Defaults are plain sampling at temperature 1 with no filter.

    temperature 0 is greedy decoding. Filters, when given, apply after the temperature in the
    order top_k, top_p, top_a, min_p (``logits_filter`` + ``filter_kwargs``, x-transformers'
    callable or filter name, comes first). ``stop``: strings that end a sample (not included).
    ``seed``: the random stream (None: the caller's generator or a fresh one). ``beams``: beam
    search with that many beams (``length_penalty``; ``stochastic`` samples beams at
    ``temperature``); options beam search would ignore are refused.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    top_a: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    eos_token: int | None = None
    num_samples: int = 1
    beams: int | None = None
    length_penalty: float = 1.0
    stochastic: bool = False
    logits_filter: str | Callable | None = None
    filter_kwargs: dict | None = None

    def __post_init__(self):
        if isinstance(self.stop, str):  # one stop string, not its characters
            object.__setattr__(self, "stop", (self.stop,))
        elif self.stop is None:
            object.__setattr__(self, "stop", ())
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        self._validate()

    # ------------------------------------------------------------------ validation (the one place)

    def _validate(self) -> None:
        _int(self, "max_new_tokens", 1)
        _num(self, "temperature", 0.0, "a finite number >= 0 (0 = greedy)")
        if self.top_k is not None:
            _int(self, "top_k", 1)
        _unit(self, "top_p", low_open=True)
        _unit(self, "top_a")
        _unit(self, "min_p")
        if not (_is_num(self.repetition_penalty) and math.isfinite(self.repetition_penalty)
                and self.repetition_penalty > 0):
            raise SamplingError("repetition_penalty", f"must be a finite number > 0 (1 = off), got {self.repetition_penalty!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            _num(self, name, None, "a finite number (0 = off)")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise SamplingError("stop", f"must be non-empty strings, got {list(self.stop)!r}")
        if self.seed is not None:
            _int(self, "seed", 0, below=2 ** 63)
        if self.eos_token is not None:
            _int(self, "eos_token", 0)
        _int(self, "num_samples", 1)
        _num(self, "length_penalty", None, "a finite number")
        if not isinstance(self.stochastic, bool):
            raise SamplingError("stochastic", f"must be True or False, got {self.stochastic!r}")
        self._check_filter()
        if self.beams is None:
            if self.stochastic:
                raise SamplingError("stochastic", "samples beams in beam search; set beams too")
            return
        _int(self, "beams", 1)
        for name in _NOT_FOR_BEAMS:
            if getattr(self, name) is not None:
                raise SamplingError(name, "does nothing in beam search (beams rank whole hypotheses by "
                                          "log-probability); drop it or sample without beams")
        for name, off in _PENALTIES:
            if getattr(self, name) != off:
                raise SamplingError(name, f"is not applied by beam search; leave it at {off} or sample without beams")
        # 0 (deterministic) is what plain beam search is anyway; other values would be ignored
        if self.temperature not in (0.0, 1.0) and not self.stochastic:
            raise SamplingError("temperature", "only changes beam search with stochastic=True (sampled beams); "
                                               "leave it at 1 (or 0) or set stochastic")
        if self.stochastic and self.temperature == 0:
            raise SamplingError("temperature", "must be > 0 for stochastic beam search")
        if self.num_samples > self.beams:
            raise SamplingError("num_samples", f"is {self.num_samples} but beam search keeps only beams={self.beams} "
                                                "hypotheses; ask for at most that many")

    def _check_filter(self) -> None:
        """x-transformers' filter by name or callable; a built-in's keywords are tried on a tiny
        input now, so a bad ``thres`` fails before any decoding."""
        if self.logits_filter is None:
            if self.filter_kwargs:
                raise SamplingError("filter_kwargs", "are given but logits_filter is None")
            return
        from .filters import FILTERS, resolve_filter

        try:
            fn = resolve_filter(self.logits_filter)
        except ValueError as e:
            raise SamplingError("logits_filter", str(e).removeprefix("filter_logits_fn ")) from None
        if self.filter_kwargs is not None and not isinstance(self.filter_kwargs, dict):
            raise SamplingError("filter_kwargs", f"must be a dict, got {type(self.filter_kwargs).__name__}")
        if fn in FILTERS.values():
            import torch

            try:
                fn(torch.zeros(1, 2), **(self.filter_kwargs or {}))
            except TypeError as e:
                raise SamplingError("filter_kwargs", f"do not fit {fn.__name__}: {e}") from None
            except ValueError as e:
                raise SamplingError("filter_kwargs", str(e)) from None

    # ------------------------------------------------------------------ what the decoders use

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def replace(self, **changes) -> SamplingConfig:
        """A copy with ``changes``, validated again."""
        return dataclasses.replace(self, **changes)

    def filter_fn(self) -> Callable | None:
        """The logits filter: x-transformers' ``logits_filter`` then top-k, top-p, top-a, min-p
        (those set); None when no filter is set."""
        from .filters import resolve_filter

        chain = compose_filters(self.top_k, self.top_p, self.min_p, self.top_a)
        if self.logits_filter is None:
            return chain
        first, kw = resolve_filter(self.logits_filter), dict(self.filter_kwargs or {})
        if chain is None:
            return (lambda logits: first(logits, **kw)) if kw else first
        return lambda logits: chain(first(logits, **kw))

    def generator(self, device="cpu"):
        """A ``torch.Generator`` seeded with ``seed`` on ``device``, or None when no seed is set."""
        if self.seed is None:
            return None
        import torch

        return torch.Generator(device=device).manual_seed(self.seed)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _int(cfg, name: str, low: int, below: int | None = None) -> None:
    v = getattr(cfg, name)
    if not _is_int(v) or v < low or (below is not None and v >= below):
        allowed = f"an integer >= {low}" if below is None else f"an integer in [{low}, 2**63)"
        raise SamplingError(name, f"must be {allowed}, got {v!r}")


def _num(cfg, name: str, low: float | None, allowed: str) -> None:
    v = getattr(cfg, name)
    if not _is_num(v) or not math.isfinite(v) or (low is not None and v < low):
        raise SamplingError(name, f"must be {allowed}, got {v!r}")


def _unit(cfg, name: str, low_open: bool = False) -> None:
    v = getattr(cfg, name)
    if v is None:
        return
    ok = _is_num(v) and math.isfinite(v) and (0.0 < v if low_open else 0.0 <= v) and v <= 1.0
    if not ok:
        raise SamplingError(name, f"must be in {'(0' if low_open else '[0'}, 1], got {v!r}")


def compose_filters(top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                    top_a: float | None = None) -> Callable | None:
    """One logits filter applying top-k, then top-p, then top-a, then min-p (those given); None if none is."""
    from . import filters

    chain = []
    if top_k is not None:
        chain.append(lambda logits: filters.top_k(logits, k=top_k))
    if top_p is not None:
        chain.append(lambda logits: filters.top_p(logits, thres=top_p))
    if top_a is not None:
        chain.append(lambda logits: filters.top_a(logits, min_p_ratio=top_a))
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

    def __init__(self, stops):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str, final: bool = False) -> tuple[str, bool]:
        """Add decoded text; returns (text safe to show, whether a stop string was reached)."""
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


def stream_text(wrapper, tokenizer, ids: list[int], cfg: SamplingConfig, *, generator=None,
                **models) -> Iterator[str]:
    """Sample one continuation of ``ids``; returns an iterator over its text, piece by piece,
    ending before the first stop string. The first token is decoded before this returns, so
    every check has run before the caller shows anything. ``models``: ``amateur_model`` /
    ``draft_model`` and their options, as ``AutoregressiveWrapper.stream`` takes them."""
    import torch

    device = next(wrapper.net.parameters()).device
    prompt = torch.tensor([ids], dtype=torch.long, device=device)
    steps = wrapper.stream(prompt, sampling=cfg.replace(stop=()), generator=generator, **models)
    first = next(steps)
    return _text_pieces(first, steps, tokenizer.stream_decoder(), StopStrings(cfg.stop))


def _text_pieces(first, steps, decoder, stopper: StopStrings) -> Iterator[str]:
    try:
        for step in itertools.chain([first], steps):
            text, stopped = stopper.feed(decoder.push(step.tolist()))
            if text:
                yield text
            if stopped:
                return
    finally:
        steps.close()  # restores the model's mode even when a stop string ended the loop early
    text, _ = stopper.feed(decoder.flush(), final=True)
    if text:
        yield text


def unescape(s: str) -> str:
    """'\\n' typed on a command line means a newline (shells pass the two characters)."""
    return s.replace("\\n", "\n").replace("\\t", "\t")

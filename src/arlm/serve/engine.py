"""The batching engine: one worker thread decodes every request's rows in shared steps.

Each request becomes one ``Row`` per choice (``n``). The worker keeps a batch of rows and, at
each step, runs the model once for all of them (a ragged, left-padded batch: every row sees
its own positions, as if alone) and samples each row with its own options and generator. At a
step boundary it rebuilds the batch when rows are waiting or when half the rows have finished:
waiting rows join, finished rows leave, and the kept rows' histories are prefilled into a fresh
cache. A batch only holds rows that fit the context together (longest history + most tokens
still wanted <= max_seq_len), so no row ever decodes on a sliding window; a row that does not
fit now waits for a later batch. Text leaves through each row's ``emit`` callback, already cut
at its stop strings.
"""

from __future__ import annotations

import collections
import itertools
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from arlm.generation.decode import Stepper, apply_penalties, filtered_probs, left_pad
from arlm.generation.sampling import SamplingConfig, StopStrings


class EngineFull(Exception):
    """More rows are waiting or running than the engine accepts (an HTTP 429)."""


@dataclass(eq=False)
class Row:
    """One sequence being sampled. ``emit(text, finish_reason)`` is called from the worker
    thread: text pieces with finish_reason None, then once with "stop" or "length"."""

    ids: list[int]
    cfg: SamplingConfig
    emit: Callable[[str, str | None], None]
    seed: int | None = None
    new: int = 0  # tokens generated so far
    cancelled: bool = False
    finished: bool = False
    tokens: list[int] = field(default_factory=list)  # prompt + generated

    def __post_init__(self):
        self.tokens = list(self.ids)
        self.generator = None  # set by the engine, on its device
        self.stopper = StopStrings(self.cfg.stop)
        self.decoder = None  # set by the engine (it knows the tokenizer)

    @property
    def remaining(self) -> int:
        return self.cfg.max_new_tokens - self.new

    def group(self) -> tuple:
        """Rows with equal keys share one filter call."""
        c = self.cfg
        return (c.temperature, c.top_k, c.top_p, c.min_p, c.presence_penalty, c.frequency_penalty,
                c.repetition_penalty)


class Engine:
    """Runs rows submitted from any thread on ``model`` (eval mode) in one worker thread.

    ``max_rows``: rows decoded together; ``max_waiting``: rows accepted beyond those before
    ``submit`` raises ``EngineFull``; ``window_s``: how long an idle worker waits after the first
    arrival for others to share the first step; ``rejoin_every``: steps a running batch takes
    before rows that arrived meanwhile join it. ``stats`` counts model steps and rows served."""

    def __init__(self, model, tokenizer, *, max_rows: int = 32, max_waiting: int = 64, window_s: float = 0.002,
                 rejoin_every: int = 8):
        self.model, self.tokenizer = model, tokenizer
        self.context = model.cfg.max_seq_len
        self.max_rows, self.max_waiting, self.window_s = max_rows, max_waiting, window_s
        self.device = next(model.parameters()).device
        self.waiting: collections.deque[Row] = collections.deque()
        self.running: list[Row] = []
        self.cond = threading.Condition()
        self.stats = dict(steps=0, prefills=0, rows=0, tokens=0, max_rows_in_step=0)
        self.arrivals = 0  # submissions so far: a batch is rebuilt when new rows came in
        # a rebuild prefills every kept row again, so arrivals join at most every few steps
        self.rejoin_every = rejoin_every
        self._stop = False
        self._thread = threading.Thread(target=self._work, name="arlm-serve-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the request side

    def submit(self, rows: list[Row]) -> None:
        """Queue rows (all or none); EngineFull when that would pass the limits."""
        for r in rows:
            if len(r.ids) + r.cfg.max_new_tokens > self.context:
                raise ValueError(f"prompt ({len(r.ids)} tokens) + max_tokens ({r.cfg.max_new_tokens}) is more "
                                 f"than the model context ({self.context} tokens)")
            r.decoder = self.tokenizer.stream_decoder()
            seed = secrets.randbits(63) if r.seed is None else r.seed
            r.generator = torch.Generator(device=self.device).manual_seed(seed)
        with self.cond:
            if len(self.waiting) + len(self.running) + len(rows) > self.max_rows + self.max_waiting:
                raise EngineFull(f"the server is busy ({len(self.waiting) + len(self.running)} sequences queued "
                                 f"or running, at most {self.max_rows + self.max_waiting}); retry shortly")
            self.waiting.extend(rows)
            self.arrivals += 1
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------ the worker

    def _work(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self.cond:
                while not self.waiting and not self._stop:
                    self.cond.wait()
                if self._stop:
                    return
            time.sleep(self.window_s)  # let requests that arrive together share the first step
            try:
                self._run()
            except Exception as e:  # noqa: BLE001  (a failed batch must not stop the server)
                self._fail_all(f"internal error while decoding: {type(e).__name__}: {e}")

    def _fail_all(self, message: str) -> None:
        with self.cond:
            rows, self.running = self.running + list(self.waiting), []
            self.waiting.clear()
        for r in rows:
            if not r.finished:
                r.finished = True
                r.emit(message, "error")

    def _take(self) -> list[Row]:
        """Rows for the next batch: running ones first, then waiting ones in arrival order, as
        many as fit the context together; the others wait (keeping their state)."""
        with self.cond:
            candidates = [r for r in itertools.chain(self.running, self.waiting) if not self._done(r)]
            batch, rest, longest, most = [], [], 0, 0
            for r in candidates:
                L, R = max(longest, len(r.tokens)), max(most, r.remaining)
                if len(batch) < self.max_rows and L + R <= self.context:
                    batch.append(r)
                    longest, most = L, R
                else:
                    rest.append(r)
            self.running, self.waiting = batch, collections.deque(rest)
            return batch

    def _done(self, r: Row) -> bool:
        if r.cancelled and not r.finished:
            r.finished = True
        return r.finished

    @torch.inference_mode()
    def _run(self) -> None:
        """Decode until no row is left, rebuilding the batch at step boundaries when needed."""
        while True:
            arrivals = self.arrivals
            rows = self._take()
            if not rows:
                return
            self.stats["prefills"] += 1
            ids, start = left_pad([torch.tensor(r.tokens, device=self.device) for r in rows], 0)
            B, T = ids.shape
            steps = max(r.remaining for r in rows)
            hist = torch.empty(B, T + steps, dtype=torch.long, device=self.device)
            hist[:, :T] = ids
            total = T
            stepper = Stepper(self.model, B, start if bool(start.any()) else None, need=T + steps)
            counts = self._counts(rows, ids, start)
            for i in range(steps):
                logits = stepper.logits(hist, total).float()  # (B, V)
                tok = self._sample(rows, logits, counts)
                self.stats["steps"] += 1
                self.stats["max_rows_in_step"] = max(self.stats["max_rows_in_step"], sum(not r.finished for r in rows))
                hist[:, total] = tok
                total += 1
                if counts is not None:
                    counts.scatter_add_(1, tok[:, None], torch.ones(B, 1, device=self.device))
                for r, t in zip(rows, tok.tolist()):
                    if not self._done(r):
                        self._advance(r, t)
                live = sum(not self._done(r) for r in rows)
                joiners = self.arrivals != arrivals and live < self.max_rows and i + 1 >= self.rejoin_every
                if live == 0 or joiners or live <= B // 2:
                    break  # rebuild: let waiting rows in, drop finished ones

    def _counts(self, rows: list[Row], ids: torch.Tensor, start: torch.Tensor) -> torch.Tensor | None:
        """Token counts (B, V) for the penalties, when some row uses them."""
        if all(g[4:] == (0.0, 0.0, 1.0) for g in (r.group() for r in rows)):
            return None
        real = torch.arange(ids.shape[1], device=ids.device)[None] >= start[:, None]
        return torch.zeros(ids.shape[0], self.model.cfg.vocab_size, device=ids.device).scatter_add_(
            1, ids, real.float())

    def _sample(self, rows: list[Row], logits: torch.Tensor, counts: torch.Tensor | None) -> torch.Tensor:
        """One token per row, each row with its own options and generator (finished rows: 0)."""
        tok = torch.zeros(len(rows), dtype=torch.long, device=logits.device)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(rows):
            if not r.finished:
                groups.setdefault(r.group(), []).append(i)
        for key, idx in groups.items():
            cfg = rows[idx[0]].cfg
            sel = torch.tensor(idx, device=logits.device)
            lg = logits.index_select(0, sel)
            if counts is not None:
                lg = apply_penalties(lg, counts.index_select(0, sel), cfg.repetition_penalty, cfg.presence_penalty,
                                     cfg.frequency_penalty)
            if cfg.greedy:
                tok[sel] = lg.argmax(dim=-1)
                continue
            probs = filtered_probs(lg, cfg.temperature, cfg.filter_fn() or (lambda x: x))
            for j, i in enumerate(idx):
                tok[i] = torch.multinomial(probs[j], 1, generator=rows[i].generator)[0]
        return tok

    def _advance(self, r: Row, t: int) -> None:
        """Add token t to row r, emit its text, and finish the row at a stop string or its length."""
        r.tokens.append(t)
        r.new += 1
        self.stats["tokens"] += 1
        text, stopped = r.stopper.feed(r.decoder.push([t]))
        reason = "stop" if stopped else ("length" if r.remaining == 0 else None)
        if reason == "length":
            tail, stopped = r.stopper.feed(r.decoder.flush(), final=True)
            text += tail
            reason = "stop" if stopped else reason
        if reason is not None:
            r.finished = True
            self.stats["rows"] += 1
        if text or reason is not None:
            r.emit(text, reason)

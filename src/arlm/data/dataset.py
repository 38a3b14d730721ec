"""Token streams for training: a train/val split, random training chunks, fixed eval windows."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from arlm.data.corpus import DataError
from arlm.tokenizers.base import source_offset


@dataclass
class TokenSplits:
    """Train and validation token ids, and how many raw bytes each covers (for bits per byte)."""

    train: np.ndarray
    val: np.ndarray
    train_bytes: int  # bytes of the corpus as it is on disk, so bits per byte never count a replacement
    val_bytes: int
    replaced_bytes: int = 0  # corpus bytes the tokenizer read as U+FFFD (BPE on text that is not UTF-8)

    @property
    def val_bytes_per_token(self) -> float:
        return self.val_bytes / len(self.val)


def split_tokens(corpus: bytes, tokenizer, val_fraction: float, min_len: int) -> TokenSplits:
    """Encode ``corpus`` once; the last ``val_fraction`` of the tokens is validation (nanoGPT).

    ``min_len`` is the fewest tokens each split needs: seq_len + 1.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    tokens = tokenizer.encode_bytes(corpus)
    n = len(tokens)
    cut = int(n * (1 - val_fraction))
    train, val = tokens[:cut], tokens[cut:]
    if min(len(train), len(val)) < min_len:
        needed = math.ceil(min_len / min(val_fraction, 1 - val_fraction))
        raise DataError(
            f"the corpus is too small: it has {n} tokens, split into {len(train)} train and "
            f"{len(val)} validation tokens, but each split needs at least {min_len} "
            f"(seq_len + 1), about {needed} tokens in all; use a bigger corpus, a smaller "
            "data.seq_len, or a larger data.val_fraction"
        )
    spans = tokenizer.replaced_spans(corpus)
    train_bytes = source_offset(spans, len(tokenizer.token_bytes(train)))
    return TokenSplits(train=train, val=val, train_bytes=train_bytes, val_bytes=len(corpus) - train_bytes,
                       replaced_bytes=sum(end - start for start, end in spans))


def document_positions(ids: torch.Tensor, separator: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For windows of packed documents ids (B, T): (doc_ids, pos), both (B, T) int64.

    A separator ends its document, so the token after it starts the next one: doc_ids counts the
    separators before each token, and pos counts from its document's first token in the window.
    """
    is_sep = (ids == separator).long()
    doc = torch.cumsum(is_sep, dim=1) - is_sep  # separators strictly before t
    t = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    first = torch.ones_like(is_sep, dtype=torch.bool)
    first[:, 1:] = doc[:, 1:] != doc[:, :-1]
    start = torch.cummax(torch.where(first, t, torch.zeros_like(t)), dim=1).values  # (B, T)
    return doc, t - start


def document_inputs(ids: torch.Tensor, separator: int | None) -> dict:
    """The model's ``doc_ids`` and ``pos`` inputs for packed documents, or {} when not masking."""
    if separator is None:
        return {}
    doc, pos = document_positions(ids, separator)
    return {"doc_ids": doc, "pos": pos}


def _windows(tokens, starts: np.ndarray, seq_len: int) -> torch.Tensor:
    """Rows ``tokens[s : s + seq_len + 1]`` for each start, as int64.

    ``tokens`` is an array, or any 1-D sequence that slices (memory-mapped shards: a window may
    span two of them).
    """
    if isinstance(tokens, np.ndarray):
        index = starts[:, None] + np.arange(seq_len + 1)  # (B, T+1)
        return torch.from_numpy(tokens[index].astype(np.int64))
    rows = [tokens[int(s) : int(s) + seq_len + 1] for s in starts]
    return torch.from_numpy(np.stack(rows).astype(np.int64))  # (B, T+1)


def _check_stream(tokens: np.ndarray, seq_len: int, batch_size: int) -> None:
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
    if np.ndim(tokens) != 1:
        raise ValueError(f"tokens must be a 1-D array, got shape {np.shape(tokens)}")
    if len(tokens) < seq_len + 1:
        raise ValueError(
            f"{len(tokens)} tokens cannot fill one window of seq_len + 1 = {seq_len + 1} tokens; "
            "use more data or a smaller seq_len"
        )


class ChunkSampler:
    """Endless random windows of ``seq_len + 1`` tokens, ``batch_size`` per batch.

    Batch k is drawn from ``np.random.default_rng([seed, k])``, so the state is just
    ``(seed, batches)`` and a resumed run sees exactly the batches an uninterrupted one would.
    With ``world_size`` ranks each batch draws ``batch_size * world_size`` starts and rank r
    takes its own contiguous share, so the ranks together see the single-process batch.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        seq_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        _check_stream(tokens, seq_len, batch_size)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.batches = 0

    def next_batch(self) -> torch.Tensor:
        """The next (batch_size, seq_len + 1) int64 batch."""
        rng = np.random.default_rng([self.seed, self.batches])
        high = len(self.tokens) - self.seq_len  # exclusive: the last window ends at the last token
        starts = rng.integers(0, high, size=self.batch_size * self.world_size)
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        self.batches += 1
        return _windows(self.tokens, mine, self.seq_len)

    def __iter__(self) -> ChunkSampler:
        return self

    def __next__(self) -> torch.Tensor:
        return self.next_batch()

    def state_dict(self) -> dict:
        return {"seed": self.seed, "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        missing = {"seed", "batches"} - set(state)
        if missing:
            raise ValueError(f"sampler state lacks {sorted(missing)}; expected keys seed, batches")
        self.seed, self.batches = int(state["seed"]), int(state["batches"])


def eval_batches(
    tokens: np.ndarray, seq_len: int, batch_size: int, max_batches: int | None
) -> Iterator[torch.Tensor]:
    """Consecutive windows from the start of ``tokens``, stride ``seq_len``, ``batch_size`` a batch.

    Neighbouring windows share one token: the last target of one is the first input of the next.
    Stops after ``max_batches`` batches (None: all); the last batch may be smaller.
    """
    _check_stream(tokens, seq_len, batch_size)
    n_windows = (len(tokens) - 1) // seq_len
    if max_batches is not None:
        if max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
        n_windows = min(n_windows, max_batches * batch_size)
    starts = np.arange(n_windows) * seq_len
    for i in range(0, n_windows, batch_size):
        yield _windows(tokens, starts[i : i + batch_size], seq_len)

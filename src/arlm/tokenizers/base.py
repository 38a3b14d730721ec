"""What every arlm tokenizer shares: id checks, byte-exact decoding, streaming decode."""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
from pathlib import Path

import numpy as np


def _byte_level_chars() -> list[str]:
    """GPT-2's byte-level alphabet: the character that stands for each byte value.

    Printable Latin-1 bytes stand for themselves; the others (controls, space, ...) are moved
    to U+0100 onwards, in byte order, so every byte is a visible, non-whitespace character.
    """
    visible = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    chars, moved = [], 0
    for b in range(256):
        if b in visible:
            chars.append(chr(b))
        else:
            chars.append(chr(0x100 + moved))
            moved += 1
    return chars


BYTE_TO_CHAR: list[str] = _byte_level_chars()
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in enumerate(BYTE_TO_CHAR)}


REPLACEMENT_BYTES = len("\ufffd".encode())  # U+FFFD is 3 bytes of UTF-8


def source_offset(spans: list[tuple[int, int]], n: int) -> int:
    """Where the first ``n`` bytes of repaired text end in the original bytes, when each span
    (start, end) of the original became one U+FFFD. An offset inside a U+FFFD maps to its start."""
    shift = 0  # original offset - repaired offset, before the current span
    for start, end in spans:
        at = start - shift  # the span's U+FFFD starts here in the repaired text
        if n < at + REPLACEMENT_BYTES:
            return min(n, at) + shift
        shift += (end - start) - REPLACEMENT_BYTES
    return n + shift


def check_ids(ids, vocab_size: int) -> np.ndarray:
    """``ids`` (list, numpy array or 1-D tensor) as int64, or ValueError if any is out of range."""
    if hasattr(ids, "detach"):  # a torch tensor, possibly on an accelerator
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids)
    if arr.ndim > 1:
        raise ValueError(f"expected a 1-D sequence of token ids, got shape {arr.shape}")
    arr = arr.reshape(-1)
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"token ids must be integers in [0, {vocab_size}), got dtype {arr.dtype}")
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        raise ValueError(
            f"token id {int(arr[bad.argmax()])} is out of range: allowed ids are [0, {vocab_size})"
        )
    return arr.astype(np.int64, copy=False)


class BaseTokenizer:
    """The tokenizer protocol: ``kind``, ``vocab_size``, encode/decode, raw bytes, save."""

    kind: str
    vocab_size: int

    @property
    def id_dtype(self) -> type:
        """The smallest numpy dtype ``encode_bytes`` uses for this vocabulary."""
        return np.uint16 if self.vocab_size <= 65535 else np.int32

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        raise NotImplementedError

    def encode_bytes(self, data: bytes) -> np.ndarray:
        """Token ids of a whole corpus as a 1-D array of ``id_dtype``."""
        raise NotImplementedError

    def token_bytes(self, ids) -> bytes:
        """The raw bytes the tokens stand for, concatenated."""
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        """Write a Hugging Face ``tokenizer.json`` to ``path``; returns the path."""
        raise NotImplementedError

    def replaced_spans(self, data: bytes) -> list[tuple[int, int]]:
        """(start, end) ranges of ``data`` that ``encode_bytes`` does not read as they are (BPE:
        sequences that are not valid UTF-8, each read as U+FFFD); none for the byte tokenizer."""
        return []

    def source_bytes(self, data: bytes, text_bytes: int) -> int:
        """How many bytes of ``data`` the first ``text_bytes`` bytes of its tokens stand for: the
        same number unless bytes were replaced (bits per byte count the original bytes)."""
        return source_offset(self.replaced_spans(data), text_bytes)

    def decode(self, ids) -> str:
        """Text of ``ids``; bytes that are not valid UTF-8 become U+FFFD."""
        return self.token_bytes(ids).decode("utf-8", errors="replace")

    def to_hf(self):
        """The same tokenizer as a Hugging Face ``tokenizers.Tokenizer``."""
        raise NotImplementedError

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the canonical tokenizer.json (keys sorted): equal exactly when two tokenizers
        have the same vocabulary and merges, so their ids mean the same text and they encode alike.
        Models whose logits are compared id by id (contrastive, speculative decoding) and prepared
        token shards check it; equal sizes alone say neither."""
        spec = json.loads(self.to_hf().to_str())
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def stream_decoder(self) -> StreamDecoder:
        """A decoder for ids that arrive a few at a time (generation)."""
        return StreamDecoder(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class StreamDecoder:
    """Turns ids into text as they arrive, holding back UTF-8 sequences that are not complete yet.

    The pieces returned by ``push`` and ``flush`` join to exactly ``tokenizer.decode(all ids)``.
    """

    def __init__(self, tokenizer: BaseTokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids) -> str:
        """Add ids; return the text they complete."""
        return self._utf8.decode(self.tokenizer.token_bytes(ids))

    def flush(self) -> str:
        """Return what is held back (as U+FFFD if incomplete) and start afresh."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text


def prepare_path(path: str | Path) -> Path:
    """``path`` as a Path whose parent folder exists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path

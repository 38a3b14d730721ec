"""Byte-level BPE (GPT-2 style) trained and run by Hugging Face ``tokenizers``."""

from __future__ import annotations

import codecs
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from arlm.tokenizers.base import CHAR_TO_BYTE, BaseTokenizer, check_ids, prepare_path

CHUNK_CHARS = 1 << 16

# A whitespace character that ends a whitespace run just before a non-space character. The
# byte-level pre-tokenizer always starts a piece there, and its regex looks no further back, so
# encoding the text in pieces cut at these points gives exactly the ids of encoding it whole.
# Python's \s covers all of the pre-tokenizer's whitespace, so the lookahead never cuts a word.
_CUT = re.compile(r"[ \t\n\r](?=\S)")


def text_chunks(text: str, size: int = CHUNK_CHARS) -> Iterator[str]:
    """Split ``text`` into pieces of about ``size`` characters at pre-token boundaries."""
    start = 0
    while start < len(text):
        cut = _CUT.search(text, start + size)
        end = cut.start() if cut else len(text)
        yield text[start:end]
        start = end


_SPANS = threading.local()


def _record_replacement(err: UnicodeDecodeError) -> tuple[str, int]:
    """A codecs error handler: "replace" (one U+FFFD per bad sequence) that also notes where."""
    _SPANS.found.append((err.start, err.end))
    return "\ufffd", err.end


codecs.register_error("arlm-replace", _record_replacement)


def utf8_text(data: bytes) -> tuple[str, list[tuple[int, int]]]:
    """``data`` decoded as UTF-8, each bad sequence read as U+FFFD (``errors="replace"``), and the
    (start, end) byte ranges that were replaced."""
    _SPANS.found = []
    try:
        text = bytes(data).decode("utf-8", errors="arlm-replace")
        return text, _SPANS.found
    finally:
        _SPANS.found = []


class BPETokenizer(BaseTokenizer):
    """Byte-level BPE over text.

    Input bytes that are not valid UTF-8 are decoded with ``errors="replace"`` (each bad sequence
    becomes U+FFFD) before training or encoding: BPE handles text; use the byte tokenizer for
    arbitrary bytes. Every id still maps to exact bytes, so decoding never fails.
    """

    kind = "bpe"

    def __init__(self, hf: tokenizers.Tokenizer):
        self._hf = hf
        vocab = hf.get_vocab(with_added_tokens=True)
        self.vocab_size = len(vocab)
        table: list[bytes | None] = [None] * self.vocab_size
        for token, i in vocab.items():
            if not 0 <= i < self.vocab_size or any(c not in CHAR_TO_BYTE for c in token):
                raise ValueError(
                    f"token {token!r} (id {i}) is not a byte-level BPE token with an id in "
                    f"[0, {self.vocab_size}); arlm reads byte-level BPE tokenizers only"
                )
            table[i] = bytes(CHAR_TO_BYTE[c] for c in token)
        self._bytes = table

    @classmethod
    def train(cls, data: bytes | str | Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn merges from ``data`` until ``vocab_size`` tokens (fewer if the data runs out).

        The 256 byte tokens come first, so any text is encodable. Deterministic for given data.
        """
        if vocab_size < 257:
            raise ValueError(
                f"BPE vocab_size must be >= 257 (256 byte tokens plus merges), got {vocab_size}"
            )
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data).decode("utf-8", errors="replace")
        texts = text_chunks(data) if isinstance(data, str) else data
        hf = tokenizers.Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    def to_hf(self) -> tokenizers.Tokenizer:
        """The underlying Hugging Face tokenizer."""
        return self._hf

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_bytes(self, data: bytes, chunk_chars: int = CHUNK_CHARS) -> np.ndarray:
        text = bytes(data).decode("utf-8", errors="replace")
        chunks = list(text_chunks(text, chunk_chars))
        pieces = self._hf.encode_batch(chunks, add_special_tokens=False)
        parts = [np.asarray(p.ids, dtype=self.id_dtype) for p in pieces]
        return np.concatenate(parts) if parts else np.empty(0, dtype=self.id_dtype)

    def replaced_spans(self, data: bytes) -> list[tuple[int, int]]:
        return utf8_text(data)[1]

    def token_bytes(self, ids) -> bytes:
        table = self._bytes
        return b"".join([table[i] for i in check_ids(ids, self.vocab_size).tolist()])

    def save(self, path: str | Path) -> Path:
        path = prepare_path(path)
        self._hf.save(str(path))
        return path

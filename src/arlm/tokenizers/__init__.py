"""Tokenizers: bytes (exact for any input) or byte-level BPE, saved as HF tokenizer.json."""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers

from arlm.tokenizers.base import BaseTokenizer, StreamDecoder
from arlm.tokenizers.bpe import BPETokenizer
from arlm.tokenizers.byte import ByteTokenizer, is_byte_model

KINDS = ("byte", "bpe")

__all__ = [
    "KINDS",
    "BaseTokenizer",
    "BPETokenizer",
    "ByteTokenizer",
    "StreamDecoder",
    "build_tokenizer",
    "load_tokenizer",
    "replaced_note",
]


def replaced_note(n: int, what: str) -> str:
    """The line that says how many bytes of ``what`` BPE read as U+FFFD (text that is not UTF-8)."""
    return (f"note: {n:,} byte(s) of {what} are not valid UTF-8; the BPE tokenizer reads each bad sequence "
            "as U+FFFD (bits per byte still count the original bytes; use --tokenizer byte to keep every byte)")


def build_tokenizer(kind: str, corpus: bytes, bpe_vocab_size: int) -> BaseTokenizer:
    """A ``kind`` tokenizer for ``corpus``: "byte", or "bpe" trained to ``bpe_vocab_size``."""
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.train(corpus, bpe_vocab_size)
    raise ValueError(f"unknown tokenizer kind {kind!r}; allowed: {', '.join(KINDS)}")


def load_tokenizer(path: str | Path) -> BaseTokenizer:
    """Read a tokenizer.json written by ``save`` (or a folder holding one). Parses JSON only."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        spec = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a valid tokenizer.json ({e})") from None
    model = spec.get("model") if isinstance(spec, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        found = model.get("type") if isinstance(model, dict) else None
        raise ValueError(f"{path}: expected a byte-level BPE tokenizer.json, found model {found!r}")
    if is_byte_model(model):
        return ByteTokenizer()
    try:
        return BPETokenizer(tokenizers.Tokenizer.from_str(text))
    except Exception as e:  # the Rust parser raises plain Exception
        raise ValueError(f"{path} is not a usable tokenizer.json: {e}") from None

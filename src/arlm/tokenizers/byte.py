"""Byte tokenizer: 256 ids, id == byte value, exact for any bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from arlm.tokenizers.base import BYTE_TO_CHAR, BaseTokenizer, check_ids, prepare_path


class ByteTokenizer(BaseTokenizer):
    """One token per byte. Round-trips any bytes, valid UTF-8 or not."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_bytes(self, data: bytes) -> np.ndarray:
        return np.frombuffer(bytes(data), dtype=np.uint8).astype(self.id_dtype)

    def token_bytes(self, ids) -> bytes:
        return check_ids(ids, self.vocab_size).astype(np.uint8).tobytes()

    def to_hf(self) -> tokenizers.Tokenizer:
        """The same tokenizer for Hugging Face tools: byte-level BPE with no merges, id == byte."""
        vocab = {c: b for b, c in enumerate(BYTE_TO_CHAR)}
        hf = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        return hf

    def save(self, path: str | Path) -> Path:
        path = prepare_path(path)
        self.to_hf().save(str(path))
        return path


def is_byte_model(model: dict) -> bool:
    """Whether a tokenizer.json ``model`` section is the one ``ByteTokenizer.save`` writes."""
    return not model.get("merges") and model.get("vocab") == {
        c: b for b, c in enumerate(BYTE_TO_CHAR)
    }

"""Corpora and token streams: load text, split it, sample training chunks and eval windows."""

from arlm.data.corpus import (
    DEFAULT_CORPUS_DESCRIPTION,
    TEXT_SUFFIXES,
    DataError,
    default_corpus,
    load_corpus,
)
from arlm.data.dataset import ChunkSampler, TokenSplits, eval_batches, split_tokens

__all__ = [
    "DEFAULT_CORPUS_DESCRIPTION",
    "TEXT_SUFFIXES",
    "ChunkSampler",
    "DataError",
    "TokenSplits",
    "default_corpus",
    "eval_batches",
    "load_corpus",
    "split_tokens",
]

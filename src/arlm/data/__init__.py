"""Corpora and token streams: load or prepare text, split it, sample training chunks and eval windows."""

from arlm.data.corpus import (
    DEFAULT_CORPUS_DESCRIPTION,
    TEXT_SUFFIXES,
    DataError,
    default_corpus,
    load_corpus,
)
from arlm.data.dataset import ChunkSampler, TokenSplits, eval_batches, split_tokens
from arlm.data.loading import TrainingData, align_data_config, open_training_data
from arlm.data.preparation import prepare
from arlm.data.shards import ShardedTokens, is_prepared, open_prepared

__all__ = [
    "DEFAULT_CORPUS_DESCRIPTION",
    "TEXT_SUFFIXES",
    "ChunkSampler",
    "DataError",
    "ShardedTokens",
    "TokenSplits",
    "TrainingData",
    "align_data_config",
    "default_corpus",
    "eval_batches",
    "is_prepared",
    "load_corpus",
    "open_prepared",
    "open_training_data",
    "prepare",
    "split_tokens",
]

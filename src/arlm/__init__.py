"""arlm: build, train and sample decoder-only autoregressive transformer language models."""

from .config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig, preset
from .generation import AutoregressiveWrapper, min_p, top_a, top_k, top_p
from .model import Decoder, KVCache, Transformer, TransformerWrapper

__version__ = "0.1.0"

__all__ = [
    "AutoregressiveWrapper", "ConfigError", "DataConfig", "Decoder", "KVCache", "ModelConfig", "RunConfig",
    "TrainConfig", "Transformer", "TransformerWrapper", "min_p", "preset", "top_a", "top_k", "top_p",
]

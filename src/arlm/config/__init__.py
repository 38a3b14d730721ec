"""Typed run configuration: model, data and training sections, presets, YAML round trip."""

from .checks import ConfigError
from .model import ModelConfig
from .model_checks import FF_ACTIVATIONS, NORMS, POS_BIASES, POS_EMBS
from .presets import PRESETS, preset
from .run import (OPTIMIZERS, PRECISIONS, SCHEDULES, TOKENIZERS, DataConfig, RunConfig, TrainConfig, all_keys,
                  field_types)

__all__ = [
    "FF_ACTIVATIONS", "NORMS", "OPTIMIZERS", "POS_BIASES", "POS_EMBS", "PRECISIONS", "PRESETS", "SCHEDULES",
    "TOKENIZERS", "ConfigError", "DataConfig", "ModelConfig", "RunConfig", "TrainConfig", "all_keys", "field_types",
    "preset",
]

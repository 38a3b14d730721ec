"""Training: the loop, optimizer groups, LR schedule, checkpoints and metrics."""

from .checkpoint import (CheckpointError, latest_checkpoint, load_optimizer, load_weights, save_checkpoint,
                         verify_checkpoint)
from .resume import RESUMABLE_CHANGES, merge_resume_config
from .schedule import lr_at
from .step import forward_backward
from .trainer import MAX_CONSECUTIVE_SKIPS, NonFiniteLossError, TrainResult, train

__all__ = [
    "MAX_CONSECUTIVE_SKIPS", "RESUMABLE_CHANGES", "CheckpointError", "NonFiniteLossError", "TrainResult",
    "forward_backward", "latest_checkpoint", "load_optimizer", "load_weights", "lr_at", "merge_resume_config",
    "save_checkpoint", "train", "verify_checkpoint",
]

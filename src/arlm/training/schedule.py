"""Learning-rate schedules as pure functions of the step.

The trainer sets ``lr_at(step, cfg)`` on every parameter group before each update, so the
schedule has no state of its own: a resumed run gets exactly the rates of an uninterrupted one
from the step number alone.
"""

from __future__ import annotations

import math

from ..config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for update number ``step`` (1-based: the first update is step 1).

    Linear warmup from ``lr / warmup_steps`` to ``lr`` over the first ``warmup_steps`` updates,
    then ``constant`` stays at ``lr`` while ``cosine`` decays to ``min_lr`` at ``max_steps``
    (and stays there if a run is extended past it).
    """
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = cfg.max_steps - cfg.warmup_steps
    if span <= 0:
        return cfg.min_lr
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def schedule_state(step: int, cfg: TrainConfig) -> dict:
    """What a checkpoint records about the schedule (for people; ``lr_at`` needs only the step)."""
    return {"name": cfg.schedule, "step": step, "warmup_steps": cfg.warmup_steps,
            "max_steps": cfg.max_steps, "lr": cfg.lr, "min_lr": cfg.min_lr}

"""Learning-rate schedules as pure functions of the step.

The trainer sets ``lr_at(step, cfg)`` on every parameter group before each update, so the
schedule has no state of its own: a resumed run gets exactly the rates of an uninterrupted one
from the step number alone.

``wsd`` (warmup-stable-decay; Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training
Beyond Fixed Training Durations"; MiniCPM) holds ``lr`` until the last ``decay_fraction`` of
``max_steps``. Every step up to the decay has the same rate whatever ``max_steps`` is, so a
checkpoint taken before the decay continues into a longer run exactly as if that run had been
planned from the start (see ``decay_start`` and ``resume.plan_run``).
"""

from __future__ import annotations

import math

from ..config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for update number ``step`` (1-based: the first update is step 1).

    Linear warmup from ``lr / warmup_steps`` to ``lr`` over the first ``warmup_steps`` updates,
    then ``constant`` stays at ``lr``; ``cosine`` decays to ``min_lr`` at ``max_steps`` (and
    stays there if a run is extended past it); ``wsd`` stays at ``lr`` up to ``decay_start``,
    then decays to ``min_lr`` at ``max_steps`` (linearly, or as 1 - sqrt of the decay's progress).
    """
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":
        start = decay_start(cfg)
        if step <= start:
            return cfg.lr
        progress = min(1.0, (step - start) / (cfg.max_steps - start))  # in (0, 1]
        left = 1.0 - progress if cfg.decay_shape == "linear" else 1.0 - math.sqrt(progress)
        return cfg.min_lr + left * (cfg.lr - cfg.min_lr)
    span = cfg.max_steps - cfg.warmup_steps
    if span <= 0:
        return cfg.min_lr
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def decay_start(cfg: TrainConfig) -> int | None:
    """The last step of a ``wsd`` run's stable phase (its lr does not depend on ``max_steps``),
    or None for the other schedules. The decay never starts inside the warmup."""
    if cfg.schedule != "wsd":
        return None
    decay_steps = max(1, round(cfg.decay_fraction * cfg.max_steps))
    return min(cfg.max_steps - 1, max(cfg.warmup_steps, cfg.max_steps - decay_steps))


def schedule_state(step: int, cfg: TrainConfig) -> dict:
    """What a checkpoint records about the schedule (for people; ``lr_at`` needs only the step)."""
    state = {"name": cfg.schedule, "step": step, "warmup_steps": cfg.warmup_steps,
             "max_steps": cfg.max_steps, "lr": cfg.lr, "min_lr": cfg.min_lr}
    if cfg.schedule == "wsd":
        state.update(decay_start=decay_start(cfg), decay_fraction=cfg.decay_fraction, decay_shape=cfg.decay_shape)
    return state

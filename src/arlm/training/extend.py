"""Extending a run with ``--resume auto`` and a larger ``train.max_steps``.

A ``wsd`` run's rates up to its decay do not depend on ``max_steps``, so the extension continues
from the newest checkpoint taken before the decay began and follows exactly the curve of a run
planned with the new ``max_steps`` from the start. The checkpoints taken during the old decay
are moved aside into ``RUN/decayed-N/`` (with the metrics they belong to) when the trainer writes
the run folder, so nothing saved is lost. A ``cosine`` run cannot be extended that way: its past
was trained on the old curve, and the log says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from ..config import ConfigError, RunConfig
from ..rundir import CHECKPOINTS, CONFIG, METRICS, CheckpointError, read_config, step_dirs, verify_checkpoint
from ..rundir.layout import checkpoint_step
from .schedule import decay_start


def extension_start(run_dir: Path, latest: Path, cfg: RunConfig | None,
                    log: Callable[[str], None]) -> tuple[Path, list[Path]]:
    """The checkpoint ``--resume auto`` continues from, and the newer checkpoints to move aside.

    ``latest`` (the newest valid checkpoint) unless ``cfg`` raises ``max_steps`` of a ``wsd`` run
    whose decay has begun: then the newest valid checkpoint at or before the decay's start.
    """
    if cfg is None:
        return latest, []
    try:
        saved = read_config(latest / CONFIG).train
    except ConfigError:
        return latest, []  # plan_run reports the unusable config
    old, new, at = saved.max_steps, cfg.train.max_steps, checkpoint_step(latest)
    if new <= old or saved.schedule != cfg.train.schedule:
        return latest, []
    if saved.schedule == "cosine":
        log(f"--resume auto: train.schedule=cosine and max_steps grows from {old} to {new}: the cosine is "
            f"stretched from step {at} on, so the past schedule changes (steps 1-{at} were trained on the curve "
            f"to {old}) and the run will not equal a {new}-step run; train.schedule: wsd extends exactly")
        return latest, []
    start = decay_start(saved)
    if saved.schedule != "wsd" or at <= start:
        return latest, []
    for step, path in reversed(step_dirs(run_dir)):
        if step > start:
            continue
        try:
            verify_checkpoint(path)
        except CheckpointError:
            continue
        newer = [p for s, p in step_dirs(run_dir) if s > step]
        log(f"--resume auto: extending a wsd run from max_steps {old} to {new}: continuing from {path.name}, "
            f"the newest checkpoint before its decay began (after step {start}), so the run follows the "
            f"{new}-step schedule exactly; the decay's checkpoints ({', '.join(p.name for p in newer)}) are "
            "moved to a decayed-N folder")
        return path, newer
    raise CheckpointError(
        f"--resume auto: cannot extend {run_dir} from max_steps {old} to {new}: its wsd decay began after step "
        f"{start} and no valid checkpoint from before it is left. Resume with --max-steps {old}, or start a "
        "new run with the longer schedule"
    )


def set_aside_decay(run_dir: Path, paths: list[Path], log: Callable[[str], None]) -> Path | None:
    """Move the old decay's checkpoints (and a copy of the metrics) into ``RUN/decayed-N``."""
    if not paths:
        return None
    n = 1
    while (run_dir / f"decayed-{n}").exists():
        n += 1
    aside = run_dir / f"decayed-{n}"
    (aside / CHECKPOINTS).mkdir(parents=True)
    if (run_dir / METRICS).is_file():
        shutil.copy2(run_dir / METRICS, aside / METRICS)
    for p in paths:
        p.rename(aside / CHECKPOINTS / p.name)
    log(f"moved {', '.join(p.name for p in paths)} (trained on the old decay) and a copy of metrics.jsonl to {aside}")
    return aside

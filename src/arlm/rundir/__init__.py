"""The run folder: its layout, discovery, the training lock and atomic writes, in one place.

Layout of a run folder ``RUN`` (the ``--out`` of ``arlm train``)::

    config.yaml          the resolved config (the base layer of ``--resume auto``)
    tokenizer.json       the run's tokenizer
    metrics.jsonl        one JSON line per step / validation, appended
    checkpoints/step-N/  committed checkpoints (see ``training.checkpoint``); COMMIT written last
    .lock                held (flock) by the one trainer writing the folder; holds its pid
    restarted-N/         files of a run that stopped before its first checkpoint, set aside

Every file but ``metrics.jsonl`` (appended line by line; a torn last line is skipped on read)
is replaced whole: written to a temporary file in the same folder, fsynced, then renamed over
the old one, so a reader (``load_run``, ``generate``, ``eval``, which take no lock) sees the old
or the new file, never half of one, and a full disk or a kill leaves the old file intact.

``latest``: arlm no longer writes ``RUN/latest``. A checkpoint exists when its folder
``checkpoints/step-N`` holds a ``COMMIT`` whose checksums verify; the newest such folder is the
latest checkpoint. A pointer file beside it would be a second answer that a crash between the
rename and the pointer update, or a hand edit, makes disagree with the first, and every reader
would then need a rule for which one wins. ``latest_checkpoint(RUN)`` is the one answer; a
``latest`` left by an older arlm is removed when a trainer next writes the folder.
"""

from .atomic import write_atomic
from .layout import (CHECKPOINTS, COMMIT, CONFIG, LATEST, LOCK, METRICS, REQUIRED_FILES, TOKENIZER, CheckpointError,
                     clean_stale, committed_steps, is_checkpoint_dir, is_run_dir, latest_checkpoint, step_dirs,
                     verify_checkpoint, write_run_files)
from .lock import RunBusyError, RunLock, training_lock
from .read import load_weights, read_config, read_trainer_state, run_config

__all__ = [
    "CHECKPOINTS", "COMMIT", "CONFIG", "LATEST", "LOCK", "METRICS", "REQUIRED_FILES", "TOKENIZER", "CheckpointError",
    "RunBusyError", "RunLock", "clean_stale", "committed_steps", "is_checkpoint_dir", "is_run_dir",
    "latest_checkpoint", "load_weights", "read_config", "read_trainer_state", "run_config", "step_dirs",
    "training_lock", "verify_checkpoint", "write_atomic", "write_run_files",
]

"""File names of a run folder, and discovery: is this a run, a checkpoint, which checkpoints are committed."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable

from .atomic import write_atomic

CONFIG = "config.yaml"
TOKENIZER = "tokenizer.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LOCK = ".lock"
LATEST = "latest"  # written by arlm before the run folder had one owner; removed, never read (see __init__)
COMMIT = "COMMIT"
REQUIRED_FILES = ("model.safetensors", "optimizer.pt", "trainer_state.json", "rng.pt", CONFIG, TOKENIZER)
RUN_FILES = (CONFIG, METRICS, TOKENIZER, LATEST, CHECKPOINTS)  # what makes a folder a run (and is set aside)
_STEP_DIR = re.compile(r"^step-(\d+)$")
_SCRATCH_DIR = re.compile(r"^\.(tmp|trash)-step-(\d+)-(\d+)$")
_SCRATCH_FILE = re.compile(r"^\..+\.tmp-(\d+)$")  # write_atomic's temporary files


class CheckpointError(ValueError):
    """A checkpoint cannot be written, found, trusted or resumed; the message says which and why."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` already holds an arlm run (config, metrics or checkpoints)."""
    p = Path(path)
    return p.is_dir() and any((p / n).exists() for n in RUN_FILES)


def is_checkpoint_dir(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint folder (``RUN/checkpoints/step-N``, or any folder with a
    COMMIT), committed or not; ``verify_checkpoint`` says whether it is usable."""
    p = Path(path)
    return p.is_dir() and ((p / COMMIT).exists() or (_STEP_DIR.match(p.name) is not None
                                                       and p.parent.name == CHECKPOINTS))


def checkpoint_step(path: str | Path) -> int:
    """N of a ``step-N`` folder."""
    m = _STEP_DIR.match(Path(path).name)
    if m is None:
        raise CheckpointError(f"{path} is not named step-N, so its step is unknown")
    return int(m.group(1))


def step_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """All ``checkpoints/step-N`` folders (committed or not), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def committed_steps(run_dir: str | Path) -> list[int]:
    """Steps of checkpoints with a COMMIT marker (not verified), oldest first."""
    return [s for s, p in step_dirs(run_dir) if (p / COMMIT).is_file()]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checkpoint(ckpt_dir: str | Path) -> dict:
    """The parsed COMMIT of a checkpoint whose files all match their recorded size and sha256.

    Raises ``CheckpointError`` naming the first problem found.
    """
    ckpt_dir = Path(ckpt_dir)
    marker = ckpt_dir / COMMIT
    if not marker.is_file():
        raise CheckpointError(f"{ckpt_dir} has no {COMMIT} marker (the save never finished)")
    try:
        commit = json.loads(marker.read_text(encoding="utf-8"))
        files = commit["files"]
        if not isinstance(files, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{marker} is not a valid COMMIT record") from None
    missing = [f for f in REQUIRED_FILES if f not in files]
    if missing:
        raise CheckpointError(f"{marker} does not list {', '.join(missing)}")
    for fname, meta in files.items():
        if "/" in fname or "\\" in fname or fname.startswith("."):
            raise CheckpointError(f"{marker} lists an unexpected file name {fname!r}")
        path = ckpt_dir / fname
        if not path.is_file():
            raise CheckpointError(f"{path} is missing")
        size = path.stat().st_size
        if size != meta.get("size"):
            raise CheckpointError(f"{path} has {size} bytes, COMMIT recorded {meta.get('size')} (truncated or changed)")
        if sha256_file(path) != meta.get("sha256"):
            raise CheckpointError(f"{path} does not match its sha256 in COMMIT (corrupted)")
    return commit


def latest_checkpoint(run_dir: str | Path, log: Callable[[str], None] = _stderr) -> Path | None:
    """The newest checkpoint of a run whose COMMIT verifies, or None. Only reads.

    A newer checkpoint that fails verification is skipped with a message naming it, the reason
    and the checkpoint used instead.
    """
    bad = []
    for _, path in reversed(step_dirs(run_dir)):
        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            bad.append((path, e))
            continue
        for b, why in bad:
            log(f"skipping checkpoint {b.name}: {why}; falling back to {path.name}")
        return path
    for b, why in bad:
        log(f"skipping checkpoint {b.name}: {why}; no older valid checkpoint")
    return None


# ---- housekeeping of the one writer (the lock holder) ---------------------------------------------


def clean_stale(run_dir: str | Path, log: Callable[[str], None] = _stderr) -> list[Path]:
    """Remove what a killed writer left: ``checkpoints/.tmp-*`` / ``.trash-*`` folders of a save
    and ``RUN/.NAME.tmp-PID`` files of an atomic write. Anything whose writer process is still
    alive is left alone. Returns what was removed. Only the trainer holding the run's lock calls
    this (readers never delete)."""
    run_dir = Path(run_dir)
    found = []
    if (run_dir / CHECKPOINTS).is_dir():
        found += [(p, int(m.group(3))) for p in (run_dir / CHECKPOINTS).iterdir()
                  if (m := _SCRATCH_DIR.match(p.name)) and p.is_dir()]
    if run_dir.is_dir():
        found += [(p, int(m.group(1))) for p in run_dir.iterdir() if (m := _SCRATCH_FILE.match(p.name)) and p.is_file()]
    removed = []
    for p, pid in found:
        if pid != os.getpid() and pid_alive(pid):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            log(f"removed {p}: an unfinished checkpoint save from an earlier process")
        else:
            p.unlink(missing_ok=True)
            log(f"removed {p}: an unfinished write from an earlier process")
        removed.append(p)
    return removed


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def write_run_files(run_dir: str | Path, *, config_yaml: str, tokenizer, log: Callable[[str], None] = _stderr) -> None:
    """Write RUN/config.yaml and RUN/tokenizer.json atomically; drop a ``latest`` an older arlm left."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / CONFIG, config_yaml)
    write_atomic(run_dir / TOKENIZER, tokenizer.save)
    stale = run_dir / LATEST
    if stale.is_file():
        stale.unlink()
        log(f"removed {stale}: arlm no longer writes it (the newest checkpoint whose COMMIT verifies is the latest)")

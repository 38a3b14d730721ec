"""Checkpoints: atomic, checksummed, discoverable, loaded without executing code.

Layout of one checkpoint, ``RUN/checkpoints/step-N/``::

    model.safetensors    weights (safetensors; tied tensors stored once)
    optimizer.pt         optimizer state (torch.save; read back with weights_only=True)
    trainer_state.json   step, sampler position, schedule, skipped steps, tokens, time, best val
    rng.pt               torch CPU and CUDA RNG states (weights_only=True)
    config.yaml          the run's config
    tokenizer.json       the run's tokenizer
    COMMIT               JSON: sha256 and size of every file above; written last

Everything is written into ``checkpoints/.tmp-step-N-<pid>/`` and fsynced, then the folder is
renamed to ``step-N`` (one atomic ``os.replace``) and ``RUN/latest`` is replaced atomically. A
checkpoint without a valid ``COMMIT`` does not exist as far as discovery is concerned, so a crash
at any point leaves the previous checkpoint as the one a resume finds.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_model, save_file, save_model

COMMIT = "COMMIT"
FORMAT = 1
REQUIRED_FILES = ("model.safetensors", "optimizer.pt", "trainer_state.json", "rng.pt", "config.yaml",
                  "tokenizer.json")
_STEP_DIR = re.compile(r"^step-(\d+)$")
_SCRATCH_DIR = re.compile(r"^\.(tmp|trash)-step-(\d+)-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint cannot be written, found, trusted or resumed; the message says which and why."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


# ---- writing ---------------------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync_path(path)
    except OSError:  # some platforms/filesystems cannot fsync a directory; the rename is still atomic
        pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_model(path: Path, model) -> None:
    save_model(model, str(path), metadata={"format": "pt"})


def _save_optimizer(path: Path, optimizer) -> None:
    torch.save(optimizer.state_dict(), path)


def _save_rng(path: Path, rng: dict) -> None:
    torch.save(rng, path)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def rng_state(device: torch.device) -> dict:
    """The torch RNG states dropout draws from: CPU, and every CUDA device when training on CUDA."""
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
    return {"torch": torch.get_rng_state(), "cuda": list(cuda)}


def save_checkpoint(run_dir: str | Path, step: int, *, model, optimizer, trainer_state: dict, cfg,
                    tokenizer, keep_last: int, rng: dict | None = None,
                    log: Callable[[str], None] = _stderr, full_state: tuple[dict, dict] | None = None,
                    keep: Callable[[int], bool] | None = None) -> Path:
    """Write ``RUN/checkpoints/step-<step>`` atomically, point ``RUN/latest`` at it, then prune
    committed checkpoints beyond the newest ``keep_last``. Returns the checkpoint folder.
    ``full_state``: (model, optimizer) state dicts gathered from a sharded (FSDP) model, written
    instead of ``model`` and ``optimizer``'s own; the optimizer's is keyed by parameter name.
    ``keep(step)``: pruning spares the checkpoints it is true for (a wsd run's pre-decay one).

    If any write fails (disk full, permissions, ...) the temporary folder is removed, earlier
    checkpoints and ``latest`` are untouched, and ``CheckpointError`` says what failed.
    """
    run_dir = Path(run_dir)
    root = run_dir / "checkpoints"
    name = f"step-{step}"
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    rng = rng if rng is not None else rng_state(next(model.parameters()).device)
    action = "creating the temporary folder"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        writers = (
            ("model.safetensors", lambda p: _save_model(p, model) if full_state is None
             else save_file({k: v.contiguous() for k, v in full_state[0].items()}, str(p), metadata={"format": "pt"})),
            ("optimizer.pt", lambda p: _save_optimizer(p, optimizer) if full_state is None
             else torch.save(full_state[1], p)),
            ("trainer_state.json", lambda p: _write_text(p, json.dumps(trainer_state, indent=1))),
            ("rng.pt", lambda p: _save_rng(p, rng)),
            ("config.yaml", lambda p: _write_text(p, cfg.to_yaml())),
            ("tokenizer.json", lambda p: tokenizer.save(p)),
        )
        files = {}
        for fname, write in writers:
            action = f"writing {fname}"
            path = tmp / fname
            write(path)
            _fsync_path(path)
            files[fname] = {"sha256": _sha256(path), "size": path.stat().st_size}
        action = f"writing {COMMIT}"
        commit = {"format": FORMAT, "step": step, "files": files}
        _write_text(tmp / COMMIT, json.dumps(commit, indent=1))
        _fsync_path(tmp / COMMIT)
        _fsync_dir(tmp)
        action = f"renaming {tmp.name} to {name}"
        if final.exists():
            # a leftover step-N that discovery rejected (corrupt or uncommitted): move it aside first,
            # since a folder cannot be renamed onto a non-empty one
            trash = root / f".trash-{name}-{os.getpid()}"
            if trash.exists():
                shutil.rmtree(trash)
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
        action = "updating RUN/latest"
        _write_latest(run_dir, name)
    except Exception as e:  # OSError, and the RuntimeError/SafetensorError that torch.save/safetensors raise on I/O failure
        shutil.rmtree(tmp, ignore_errors=True)
        detail = "the disk is full; " if getattr(e, "errno", None) == errno.ENOSPC else ""
        raise CheckpointError(
            f"saving checkpoint {name} in {root} failed while {action}: {e}. {detail}"
            "Earlier checkpoints are intact; free space or fix permissions, then resume with --resume auto"
        ) from e
    _prune(root, keep_last, keep=final, log=log, spare=keep)
    return final


def _write_latest(run_dir: Path, name: str) -> None:
    tmp = run_dir / f".latest.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run_dir / "latest")
    _fsync_dir(run_dir)


def _prune(root: Path, keep_last: int, keep: Path, log: Callable[[str], None],
           spare: Callable[[int], bool] | None = None) -> None:
    committed = [(s, p) for s, p in step_dirs(root.parent) if (p / COMMIT).is_file()]
    for step, path in committed[:-keep_last] if keep_last > 0 else []:
        if path == keep or (spare is not None and spare(step)):
            continue
        try:
            shutil.rmtree(path)
        except OSError as e:  # pruning is housekeeping: never fail a run over it
            log(f"could not remove old checkpoint {path}: {e}")


# ---- discovery ---------------------------------------------------------------------------------


def step_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """All ``checkpoints/step-N`` folders (committed or not), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


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
        if _sha256(path) != meta.get("sha256"):
            raise CheckpointError(f"{path} does not match its sha256 in COMMIT (corrupted)")
    return commit


def clean_stale(run_dir: str | Path, log: Callable[[str], None] = _stderr) -> list[Path]:
    """Remove ``.tmp-*`` / ``.trash-*`` folders left by a save that was killed; a folder whose
    writer process is still alive is left alone. Returns the folders removed."""
    root = Path(run_dir) / "checkpoints"
    removed = []
    if not root.is_dir():
        return removed
    for p in root.iterdir():
        m = _SCRATCH_DIR.match(p.name)
        if not m or not p.is_dir():
            continue
        pid = int(m.group(3))
        if pid != os.getpid() and _alive(pid):
            continue
        shutil.rmtree(p, ignore_errors=True)
        log(f"removed {p}: an unfinished checkpoint save from an earlier process")
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def latest_checkpoint(run_dir: str | Path, log: Callable[[str], None] = _stderr) -> Path | None:
    """The newest checkpoint of a run whose COMMIT verifies, or None.

    Stale temporary folders are removed first. A newer checkpoint that fails verification is
    skipped with a message naming it, the reason and the checkpoint used instead.
    """
    clean_stale(run_dir, log)
    bad = []
    for step, path in reversed(step_dirs(run_dir)):
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


def committed_steps(run_dir: str | Path) -> list[int]:
    """Steps of checkpoints with a COMMIT marker (not verified), oldest first."""
    return [s for s, p in step_dirs(run_dir) if (p / COMMIT).is_file()]


# ---- reading ---------------------------------------------------------------------------------


def _torch_load(path: Path, device) -> object:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # UnpicklingError for anything that is not plain tensors/containers
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain tensor file that torch.load(weights_only=True) "
            f"accepts, so it may contain code ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None


def load_weights(model, ckpt_dir: str | Path, device="cpu") -> None:
    """Load ``model.safetensors`` into ``model`` (strict: every tensor must match)."""
    path = Path(ckpt_dir) / "model.safetensors"
    try:
        missing, unexpected = load_model(model, str(path), strict=True, device=str(device))
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise CheckpointError(f"cannot load weights from {path}: {e}") from None
    if missing or unexpected:
        raise CheckpointError(f"weights in {path} do not fit the model: missing {missing}, unexpected {unexpected}")


def load_optimizer(optimizer, ckpt_dir: str | Path, device="cpu", model=None) -> None:
    """Load ``optimizer.pt``: torch's own layout, or keyed by parameter name (written by a
    sharded run; needs ``model`` to map names to parameters)."""
    path = Path(ckpt_dir) / "optimizer.pt"
    state = _torch_load(path, device)
    try:
        groups = state.get("param_groups") if isinstance(state, dict) else None
        if groups and groups[0].get("params") and isinstance(groups[0]["params"][0], str):
            if model is None:
                raise ValueError("its state is keyed by parameter name and no model was given")
            from .distributed import load_full_optimizer_state

            load_full_optimizer_state(model, optimizer, state)
        else:
            optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"optimizer state in {path} does not fit this optimizer: {e}") from None


def load_rng(ckpt_dir: str | Path) -> dict:
    state = _torch_load(Path(ckpt_dir) / "rng.pt", "cpu")
    if not isinstance(state, dict) or not isinstance(state.get("torch"), torch.Tensor):
        raise CheckpointError(f"{Path(ckpt_dir) / 'rng.pt'} does not hold torch RNG states")
    return state


def restore_rng(state: dict, device: torch.device, log: Callable[[str], None] = _stderr) -> None:
    """Set the torch RNG states saved by ``rng_state``."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if device.type == "cuda":
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            log(f"checkpoint has CUDA RNG states for {len(cuda)} device(s), this machine has "
                f"{torch.cuda.device_count()}: dropout on CUDA will not repeat the original run exactly")


def read_trainer_state(ckpt_dir: str | Path) -> dict:
    path = Path(ckpt_dir) / "trainer_state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path} is not a trainer state (no 'step')")
    return state

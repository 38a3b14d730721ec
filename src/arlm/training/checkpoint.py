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
renamed to ``step-N`` (one atomic ``os.replace``). A checkpoint without a valid ``COMMIT`` does not
exist as far as discovery is concerned (``arlm.rundir``, which owns the run folder's layout and
discovery), so a crash at any point leaves the previous checkpoint as the one a resume finds.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file, save_model

# discovery and the read side live with the run folder's owner; re-exported for existing callers
from ..rundir.atomic import disk_full_hint, fsync_dir, fsync_path
from ..rundir.layout import (COMMIT, REQUIRED_FILES, CheckpointError, clean_stale, committed_steps,  # noqa: F401
                             latest_checkpoint, sha256_file, step_dirs, verify_checkpoint)
from ..rundir.read import load_weights, read_trainer_state  # noqa: F401

FORMAT = 1


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


# ---- writing ---------------------------------------------------------------------------------


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
    """Write ``RUN/checkpoints/step-<step>`` atomically, then prune
    committed checkpoints beyond the newest ``keep_last``. Returns the checkpoint folder.
    ``full_state``: (model, optimizer) state dicts gathered from a sharded (FSDP) model, written
    instead of ``model`` and ``optimizer``'s own; the optimizer's is keyed by parameter name.
    ``keep(step)``: pruning spares the checkpoints it is true for (a wsd run's pre-decay one).

    If any write fails (disk full, permissions, ...) the temporary folder is removed, earlier
    checkpoints are untouched, and ``CheckpointError`` says what failed.
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
            fsync_path(path)
            files[fname] = {"sha256": sha256_file(path), "size": path.stat().st_size}
        action = f"writing {COMMIT}"
        commit = {"format": FORMAT, "step": step, "files": files}
        _write_text(tmp / COMMIT, json.dumps(commit, indent=1))
        fsync_path(tmp / COMMIT)
        fsync_dir(tmp)
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
        fsync_dir(root)
    except Exception as e:  # OSError, and the RuntimeError/SafetensorError that torch.save/safetensors raise on I/O failure
        shutil.rmtree(tmp, ignore_errors=True)
        detail = disk_full_hint(e)
        raise CheckpointError(
            f"saving checkpoint {name} in {root} failed while {action}: {e}. {detail}"
            "Earlier checkpoints are intact; free space or fix permissions, then resume with --resume auto"
        ) from e
    _prune(root, keep_last, keep=final, log=log, spare=keep)
    return final


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


# ---- reading ---------------------------------------------------------------------------------


def _torch_load(path: Path, device) -> object:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # UnpicklingError for anything that is not plain tensors/containers
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain tensor file that torch.load(weights_only=True) "
            f"accepts, so it may contain code ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None


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

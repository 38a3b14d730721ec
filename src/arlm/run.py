"""Open a trained run folder: config, tokenizer and weights of a committed checkpoint.

Loading reads YAML, JSON and safetensors only; it never unpickles anything. It takes no lock and
needs none (a run being trained can be read): it reads committed checkpoints only. It imports
nothing of the trainer.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .config import ConfigError, RunConfig
from .model import Transformer
from .rundir import (CHECKPOINTS, CONFIG, TOKENIZER, CheckpointError, committed_steps, is_checkpoint_dir,
                     latest_checkpoint, load_weights, read_config, read_trainer_state, verify_checkpoint)
from .tokenizers import load_tokenizer

__all__ = ["Run", "RunError", "load_run"]


class RunError(ValueError):
    """A path is not a usable run or checkpoint; the message says why and what to pass instead."""


@dataclass
class Run:
    """A loaded checkpoint: ``model`` is in eval mode on the requested device."""

    cfg: RunConfig
    model: Transformer
    tokenizer: object
    step: int
    checkpoint_dir: Path
    run_dir: Path


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _resolve(path: Path, step: int | None, log: Callable[[str], None]) -> tuple[Path, Path]:
    """-> (run_dir, checkpoint_dir) for a run folder or a checkpoint folder."""
    if not path.exists():
        raise RunError(f"{path} does not exist; give a run folder (the --out of arlm train) or one of its checkpoints")
    if not path.is_dir():
        raise RunError(f"{path} is a file; give a run folder (the --out of arlm train) or one of its checkpoints")
    if is_checkpoint_dir(path):
        if step is not None and path.name != f"step-{step}":
            raise RunError(f"{path} is the checkpoint {path.name}, but step={step} was asked for")
        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            raise RunError(f"checkpoint {path} is not usable: {e}") from None
        return path.parent.parent, path
    if not (path / CONFIG).is_file():
        raise RunError(f"{path} is not a run folder: it has no config.yaml (arlm train writes one into its --out)")
    if step is not None:
        ckpt = path / CHECKPOINTS / f"step-{step}"
        if not ckpt.is_dir():
            have = committed_steps(path)
            raise RunError(f"{path} has no checkpoint at step {step}; committed steps: {have or 'none'}")
        try:
            verify_checkpoint(ckpt)
        except CheckpointError as e:
            raise RunError(f"checkpoint {ckpt} is not usable: {e}") from None
        return path, ckpt
    ckpt = latest_checkpoint(path, log)
    if ckpt is None:
        raise RunError(
            f"{path} has no committed checkpoint yet (training saves one every train.ckpt_every steps "
            "and when it ends); wait for one or resume the run"
        )
    return path, ckpt


def load_run(run_dir: str | Path, step: int | None = None, device: str | torch.device = "cpu", *,
             log: Callable[[str], None] = _stderr) -> Run:
    """Load a run's newest valid checkpoint (or ``step``), or a checkpoint folder itself.

    Raises ``RunError`` when the path does not exist, is not a run, or has no committed
    checkpoint. The config and tokenizer come from the checkpoint folder, so they match the weights.
    """
    run_path, ckpt = _resolve(Path(run_dir), step, log)
    try:
        cfg = read_config(ckpt / CONFIG)  # its errors name the file
    except ConfigError as e:
        raise RunError(str(e)) from None
    try:
        cfg.validate()
    except ConfigError as e:
        raise RunError(f"{ckpt / CONFIG} is not a usable config: {e}") from None
    try:
        tokenizer = load_tokenizer(ckpt / TOKENIZER)
    except (OSError, ValueError) as e:
        raise RunError(f"cannot load the tokenizer of {ckpt}: {e}") from None
    model = Transformer(cfg.model)
    try:
        load_weights(model, ckpt, device="cpu")
        state = read_trainer_state(ckpt)
    except CheckpointError as e:
        raise RunError(str(e)) from None
    model.to(device).eval()
    return Run(cfg=cfg, model=model, tokenizer=tokenizer, step=int(state["step"]), checkpoint_dir=ckpt,
               run_dir=run_path)

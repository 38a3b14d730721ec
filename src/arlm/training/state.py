"""The run state (what a resume must restore besides weights and optimizer moments), and the
session (the live objects of one ``train()`` call).

``RunState`` is the one record of where a run stands (step, tokens, sampler position, skip
counters, validation, time, RNG). It writes itself into a checkpoint's ``trainer_state.json``
(and its RNG states into ``rng.pt``) and reads itself back from them; the JSON keys are the
ones checkpoints have always had, so older checkpoints keep resuming.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import RunConfig, TrainConfig
from ..data import ChunkSampler, TokenSplits
from . import checkpoint as ckpt_io
from .checkpoint import CheckpointError
from .distributed import DistInfo
from .progress import Progress


@dataclass
class RunState:
    step: int = 0  # optimizer updates done (skipped non-finite steps count)
    tokens_seen: int = 0
    skipped_steps: int = 0
    consecutive_skips: int = 0
    elapsed_s: float = 0.0  # wall time of all earlier sessions of this run
    best_val_loss: float | None = None
    last_val: dict | None = None  # {"step", "val_loss", "val_bpb", "val_ppl"}; null values when not finite
    sampler: dict = field(default_factory=dict)  # ChunkSampler.state_dict() at ``step``
    corpus: dict | None = None  # {"sha256", "bytes"} of the text the run trains on
    rng: dict | None = field(default=None, repr=False)  # RNG states read from rng.pt (not JSON)
    # this session's start (perf_counter); never saved, so elapsed() adds up across sessions
    session_start: float = field(default_factory=time.perf_counter, repr=False, compare=False)

    def elapsed(self) -> float:
        """Wall time of the whole run so far, earlier sessions included."""
        return self.elapsed_s + time.perf_counter() - self.session_start

    def to_dict(self, schedule: dict) -> dict:
        """The ``trainer_state.json`` of a checkpoint taken now (``schedule`` is for people)."""
        return {
            "format": ckpt_io.FORMAT, "step": self.step, "sampler": self.sampler, "schedule": schedule,
            "skipped_steps": self.skipped_steps, "consecutive_skips": self.consecutive_skips,
            "tokens_seen": self.tokens_seen, "elapsed_s": self.elapsed(), "best_val_loss": self.best_val_loss,
            "last_val": self.last_val, "corpus": self.corpus,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "RunState":
        """Read a ``trainer_state.json`` dict; missing keys take their starting values."""
        try:
            return cls(
                step=int(d.get("step", 0)), tokens_seen=int(d.get("tokens_seen", 0)),
                skipped_steps=int(d.get("skipped_steps", 0)), consecutive_skips=int(d.get("consecutive_skips", 0)),
                elapsed_s=float(d.get("elapsed_s", 0.0)), best_val_loss=d.get("best_val_loss"),
                last_val=d.get("last_val"), sampler=d.get("sampler"), corpus=d.get("corpus"),
            )
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"trainer state has a value of the wrong type: {e}") from None

    @classmethod
    def load(cls, ckpt_dir: Path) -> "RunState":
        """The state saved in checkpoint ``ckpt_dir`` (trainer_state.json and rng.pt)."""
        state = cls.from_dict(ckpt_io.read_trainer_state(ckpt_dir))
        state.rng = ckpt_io.load_rng(ckpt_dir)
        return state


@dataclass
class Session:
    """The live objects of one ``train()`` call: what set-up builds, and what the step and
    after-step functions work with. ``state`` is the part a checkpoint saves."""

    cfg: RunConfig
    run_dir: Path
    resume_from: Path | None
    device: torch.device
    bf16: bool
    dinfo: DistInfo
    fsdp: bool  # the model is sharded (its forward is a collective)
    owns_group: bool  # this call created the process group and destroys it at the end
    model: nn.Module
    fwd: nn.Module  # what forward/backward runs through: the model, DDP-wrapped and/or compiled
    optimizer: Any
    sampler: ChunkSampler
    tokenizer: Any
    splits: TokenSplits
    state: RunState
    metrics: Any  # MetricsWriter on rank 0
    progress: Progress
    params: list  # parameters whose gradients are clipped
    clip: float  # max gradient norm (inf: no clipping)
    tokens_per_step: int  # over all ranks and micro-batches
    peak: float | None  # device peak FLOP/s, for MFU
    fpt: float  # training FLOPs per token
    every_rank: bool  # evaluation and samples run here (rank 0, or every rank under FSDP)
    start_step: int = 0  # the step this session started at
    last_saved: int | None = None  # step of the newest checkpoint of this run
    last_ckpt: Path | None = None
    received: list[int] = field(default_factory=list)  # signals caught
    train_time: float = 0.0  # seconds spent in train_step this session
    tok_s_avg: float | None = None  # smoothed tokens/s for the progress line

    @property
    def tc(self) -> TrainConfig:
        return self.cfg.train

    @property
    def rng_devices(self) -> list[torch.device]:
        """Devices whose RNG evaluation and sampling fork (and so never move)."""
        return [self.device] if self.device.type == "cuda" else []

"""Experiment trackers beside RUN/metrics.jsonl: TensorBoard event files and Weights & Biases.

``train.tracker`` names them ("none", or a comma list of tensorboard, wandb). Each tracker takes
the same records as metrics.jsonl (``MetricsWriter`` hands every record to each) and logs their
numbers against the training step; metrics.jsonl stays the source of truth and is always written.
Only rank 0 opens trackers. The libraries are optional (the ``track`` extra) and imported here,
when a run asks for them.
"""

from __future__ import annotations

import importlib
import json
import os
import secrets
from pathlib import Path

from ..config import RunConfig
from ..config.run import tracker_names
from ..rundir.atomic import write_atomic

TENSORBOARD_DIR = "tensorboard"  # RUN/tensorboard/events.out.tfevents.*
WANDB_ID_FILE = "wandb.json"  # RUN/wandb.json: {"id", "project"} of the W&B run this run logs to
WANDB_DEFAULT_PROJECT = "arlm"

# metrics.jsonl key -> tracker tag; training values under train/, validation under val/
TAGS = {
    "loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
    "tokens_per_sec": "train/tokens_per_sec", "mfu": "train/mfu", "tokens": "train/tokens",
    "val_loss": "val/loss", "val_bpb": "val/bpb", "val_ppl": "val/ppl",
}


class TrackerError(ValueError):
    """A tracker cannot start (its extra is missing, or W&B refused the run); says what to do."""


def scalars(record: dict) -> dict[str, float]:
    """The tracker tags and values of one metrics.jsonl record (nulls are left out: JSON null means
    not finite, or MFU on a device without a known peak)."""
    return {tag: float(record[key]) for key, tag in TAGS.items()
            if isinstance(record.get(key), (int, float)) and not isinstance(record.get(key), bool)}


def check_trackers(cfg: RunConfig) -> None:
    """Raise before any work if a tracker ``cfg.train.tracker`` names cannot be imported."""
    for name in tracker_names(cfg.train.tracker):
        _import(_MODULES[name], name)


def open_trackers(cfg: RunConfig, run_dir: str | Path, start_step: int) -> list:
    """Start the trackers of ``cfg.train.tracker`` for a run (re)starting after ``start_step``."""
    run_dir = Path(run_dir)
    kinds = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}
    opened = []
    try:
        for name in tracker_names(cfg.train.tracker):
            opened.append(kinds[name](cfg, run_dir, start_step))
    except BaseException:
        for t in opened:
            t.close()
        raise
    return opened


class TensorBoardTracker:
    """Scalars into RUN/tensorboard (``tensorboard --logdir RUN``)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, start_step: int):
        tb = _import(_MODULES["tensorboard"], "tensorboard")
        # A resumed run recomputes the steps after its checkpoint: purge_step makes TensorBoard drop
        # what an earlier session logged from there on, as metrics.jsonl drops those lines.
        self._writer = tb.SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=start_step + 1)

    def write(self, record: dict) -> None:
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, global_step=int(record["step"]))

    def close(self) -> None:
        self._writer.close()


class WandbTracker:
    """A W&B run named after the run folder, with the resolved config as its config.

    Its id is kept in RUN/wandb.json, so a resumed run (``--resume auto``) logs to the same W&B run;
    a new run in the folder gets a new id. ``WANDB_MODE=offline`` writes the run locally (upload it
    later with ``wandb sync``). W&B keeps one value per step: steps that a resumed run recomputes
    after its checkpoint keep the values first logged (the same ones, when the resume is exact).
    """

    def __init__(self, cfg: RunConfig, run_dir: Path, start_step: int):
        wandb = _import(_MODULES["wandb"], "wandb")
        id_file = run_dir / WANDB_ID_FILE
        saved = _read_id_file(id_file) if start_step > 0 else {}
        run_id = saved.get("id") or secrets.token_hex(6)
        project = saved.get("project") or os.environ.get("WANDB_PROJECT") or WANDB_DEFAULT_PROJECT
        write_atomic(id_file, json.dumps({"id": run_id, "project": project}) + "\n")
        try:
            self._run = wandb.init(
                project=project, id=run_id, name=run_dir.name, config=cfg.to_dict(), resume="allow",
                # W&B's own files go to WANDB_DIR when it is set, else into the run folder
                dir=None if os.environ.get("WANDB_DIR") else str(run_dir),
                # the trainer's log lines stay on the terminal; capturing them would rewire the
                # process's stdout/stderr, which the progress bar and the CLI's errors write to
                settings=wandb.Settings(console="off"),
            )
        except Exception as e:  # W&B raises many kinds (no API key, no network, a bad entity)
            raise TrackerError(
                f"train.tracker=wandb: W&B could not start run {run_id!r} in project {project!r}: {str(e).rstrip('.')}. "
                "Log in with `wandb login`, or set WANDB_MODE=offline to log locally (and `wandb sync` "
                "later), or drop wandb from train.tracker"
            ) from None
        self.id = run_id

    def write(self, record: dict) -> None:
        values = scalars(record)
        if values:
            self._run.log(values, step=int(record["step"]))

    def close(self) -> None:
        self._run.finish()


_MODULES = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb"}


def _import(module: str, tracker: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TrackerError(f"train.tracker={tracker} needs the 'track' extra: pip install 'arlm[track]'") from None


def _read_id_file(path: Path) -> dict:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return saved if isinstance(saved, dict) else {}


__all__ = ["TAGS", "TENSORBOARD_DIR", "WANDB_ID_FILE", "TrackerError", "check_trackers", "open_trackers",
           "scalars"]

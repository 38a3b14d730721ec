"""Where a training run writes and what it continues from: run-dir checks and resume planning.

Everything here only reads, so the trainer can reject a bad ``--out`` / ``--resume`` before any
work starts, except what the one writer of the run folder (``writer=True``: the holder of its
lock, rank 0 under torchrun) does before training: removing the temporary folders of a killed
save, and setting aside the files of a run that never reached a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..config import ConfigError, RunConfig, all_keys
from ..rundir import (COMMIT, CONFIG, CheckpointError, clean_stale, committed_steps, is_checkpoint_dir, is_run_dir,
                      latest_checkpoint, read_config, step_dirs, verify_checkpoint)
from ..rundir.layout import RUN_FILES, checkpoint_step
from .extend import extension_start

# Keys a resumed run may change: how long to train, how often to evaluate / sample / save, and
# where and how fast to run. Anything else would make the resumed run a different run.
RESUMABLE_CHANGES = (
    "train.max_steps", "train.max_minutes", "train.eval_every", "train.eval_batches",
    "train.sample_every", "train.sample_tokens", "train.sample_prompt", "train.ckpt_every",
    "train.keep_last", "train.device", "train.precision", "train.compile", "train.progress",
    "train.activation_checkpointing", "train.loss_chunk", "train.distributed",
    "train.tracker",
)
# Kept from the checkpoint, never compared: vocab_size comes from the tokenizer; model.init only
# chose the step-0 weights, which a resumed run loads from the checkpoint instead
DERIVED_KEYS = ("model.vocab_size", "model.init")


@dataclass
class RunPlan:
    """A resolved training target: the effective config, the run folder, and the checkpoint to
    continue from (None for a fresh run)."""

    cfg: RunConfig
    run_dir: Path
    checkpoint: Path | None
    set_aside: list[Path] = field(default_factory=list)  # newer checkpoints moved aside before writing


def _get(cfg: RunConfig, key: str):
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


def merge_resume_config(saved: RunConfig, new: RunConfig | None) -> RunConfig:
    """The config a resumed run uses: ``saved`` with the ``RESUMABLE_CHANGES`` keys taken from
    ``new``. Any other difference raises ``CheckpointError`` listing every differing key."""
    if new is None:
        return saved
    merged = RunConfig.from_dict(saved.to_dict())
    differ = []
    for key in all_keys():
        if key in DERIVED_KEYS:
            continue
        a, b = _get(saved, key), _get(new, key)
        if key in RESUMABLE_CHANGES:
            section, _, name = key.partition(".")
            setattr(getattr(merged, section), name, b)
        elif a != b:
            differ.append(f"{key} (checkpoint: {a!r}, now: {b!r})")
    if differ:
        raise CheckpointError(
            "incompatible resume: the config differs from the checkpoint's in " + "; ".join(differ)
            + ". A resumed run may change only " + ", ".join(RESUMABLE_CHANGES)
            + ". Resume with the run's own config (it is in the run's config.yaml), "
            "or start a new run with another --out"
        )
    return merged


def _checkpoint_from_path(path: Path, log: Callable[[str], None]) -> Path:
    if not path.exists():
        raise CheckpointError(f"--resume {path}: no such checkpoint or run folder")
    if is_checkpoint_dir(path):
        verify_checkpoint(path)
        return path
    if is_run_dir(path):
        found = latest_checkpoint(path, log)
        if found is None:
            raise CheckpointError(f"--resume {path}: this run has no committed checkpoint to resume from")
        return found
    raise CheckpointError(
        f"--resume {path} is neither a checkpoint (a folder with a {COMMIT} file, like RUN/checkpoints/step-N) "
        "nor a run folder"
    )


def _set_aside(out: Path) -> Path:
    """Move a run's files (config, metrics, tokenizer, latest, checkpoints) into a new
    ``out/restarted-N`` folder and return it."""
    n = 1
    while (out / f"restarted-{n}").exists():
        n += 1
    aside = out / f"restarted-{n}"
    aside.mkdir()
    for name in RUN_FILES:
        if (out / name).exists():
            (out / name).rename(aside / name)
    return aside


def plan_run(cfg: RunConfig | None, out_dir: str | Path, resume: str | Path | None,
             log: Callable[[str], None], *, writer: bool = True) -> RunPlan:
    """Decide what ``train`` does with ``out_dir`` and ``resume``; raise before any work if it
    would overwrite a run, resume from nothing, or resume with an incompatible config.
    ``writer``: this process holds the run's lock, so it may tidy the folder (see the module doc)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder; choose a folder for the run")
    if writer and out.is_dir():
        clean_stale(out, log)
    if resume is None:
        if cfg is None:
            raise ConfigError("a config is needed to start a new run (only a resume can reuse the saved one)")
        if is_run_dir(out):
            steps = committed_steps(out)
            what = f"checkpoints up to step {steps[-1]}" if steps else "a config and metrics"
            raise CheckpointError(
                f"{out} already holds a run ({what}); continue it with --resume auto, "
                "or choose another --out for a new run"
            )
        return RunPlan(cfg, out, None)

    aside: list[Path] = []
    if isinstance(resume, str) and resume == "auto":
        ckpt = latest_checkpoint(out, log) if out.is_dir() else None
        if ckpt is not None:
            ckpt, aside = extension_start(out, ckpt, cfg, log)  # a longer wsd run: from before its decay
        if ckpt is None:
            if is_run_dir(out):
                # stopped before its first save (or no checkpoint verifies): nothing to continue, so
                # start over, keeping what the folder held aside instead of deleting it
                if cfg is None:
                    cfg = read_config(out / CONFIG) if (out / CONFIG).is_file() else None
                if cfg is None:
                    raise ConfigError(f"--resume auto: {out} holds no committed checkpoint and no config.yaml; "
                                      "give --preset or --config to start over")
                if not writer:  # rank 0 sets the files aside; this rank only needs the plan
                    return RunPlan(cfg, out, None)
                aside = _set_aside(out)
                log(f"--resume auto: {out} holds no committed checkpoint (it stopped before its first save, or "
                    f"no checkpoint verifies); starting over, the earlier files are kept in {aside}")
                return RunPlan(cfg, out, None)
            if cfg is None:
                raise ConfigError(f"--resume auto: {out} holds no run to resume and no config was given")
            log(f"--resume auto: no run in {out} yet, starting a new one")
            return RunPlan(cfg, out, None)
    else:
        ckpt = _checkpoint_from_path(Path(resume), log)

    source_run = ckpt.parent.parent
    ckpt_step = checkpoint_step(ckpt)
    if out.exists() and out.resolve() == source_run.resolve():
        newer = []
        for step, path in step_dirs(out):
            if step > ckpt_step and path not in aside:
                try:
                    verify_checkpoint(path)
                    newer.append(path.name)
                except CheckpointError:
                    pass  # an unusable newer checkpoint may be overwritten when we reach its step
        if newer:
            raise CheckpointError(
                f"resuming {ckpt.name} into {out} would overwrite its newer checkpoints {', '.join(newer)}; "
                "resume the newest with --resume auto, or branch off with another --out"
            )
    elif is_run_dir(out):
        raise CheckpointError(
            f"{out} already holds another run; to continue {ckpt} in a new folder, choose an empty --out"
        )

    try:
        saved = read_config(ckpt / CONFIG)
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {ckpt.name} has no usable config: {e}") from None
    return RunPlan(merge_resume_config(saved, cfg), out, ckpt, aside)

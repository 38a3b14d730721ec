"""Reading a run folder without a lock: configs (strictly: a cut-short file is an error, never
defaults), trainer state and weights of committed checkpoints. Nothing here executes code
from a file (YAML safe_load, JSON, safetensors)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from ..config import ConfigError, RunConfig
from ..config.yaml_text import load_yaml_text
from .layout import CONFIG, CheckpointError, is_checkpoint_dir, latest_checkpoint

SECTIONS = ("model", "data", "train")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _load(path: Path) -> tuple[RunConfig, dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    if not text.strip():
        raise ConfigError(f"{path} is empty (a write cut short?); a run's config.yaml lists every field")
    data = load_yaml_text(text, str(path))  # safe, refuses duplicate keys, errors name the file
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a mapping with sections {', '.join(SECTIONS)}")
    missing = [s for s in SECTIONS if not isinstance(data.get(s), dict) or not data[s]]
    if missing:
        raise ConfigError(f"{path} has no {', '.join(missing)} section (cut short?); "
                          "a run's config.yaml lists every field")
    try:
        return RunConfig.from_dict(data), data
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def read_config(path: str | Path) -> RunConfig:
    """A run's or checkpoint's config.yaml; ``ConfigError`` naming the file when it is missing,
    empty, not YAML, lacks a section, or holds a bad key or value."""
    return _load(Path(path))[0]


def run_config(path: str | Path, log: Callable[[str], None] = _stderr) -> RunConfig | None:
    """The config a resume of ``path`` (a run folder or a checkpoint folder) starts from.

    For a run: ``RUN/config.yaml``, unless it is unreadable or lacks keys the newest committed
    checkpoint's config has (a write cut short by an older arlm, which wrote it in place); then
    that checkpoint's own config, with a message. None when ``path`` holds no config at all.
    """
    path = Path(path)
    if is_checkpoint_dir(path):  # one without a config is no checkpoint: resume says why
        return read_config(path / CONFIG) if (path / CONFIG).is_file() else None
    own = path / CONFIG
    ckpt = latest_checkpoint(path, log=lambda m: None) if path.is_dir() else None  # resume reports skips itself
    if ckpt is None:
        return read_config(own) if own.is_file() else None
    saved, saved_data = _load(ckpt / CONFIG)
    if not own.exists():
        log(f"{own} is missing; using the config of checkpoint {ckpt.name}")
        return saved
    try:
        cfg, data = _load(own)
    except ConfigError as e:
        log(f"{e}; using the config of checkpoint {ckpt.name} instead")
        return saved
    lost = [f"{s}.{k}" for s in SECTIONS for k in saved_data[s] if k not in data[s]]
    if lost:
        log(f"{own} lacks {', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''} (cut short?); "
            f"using the config of checkpoint {ckpt.name} instead")
        return saved
    return cfg


def read_trainer_state(ckpt_dir: str | Path) -> dict:
    path = Path(ckpt_dir) / "trainer_state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path} is not a trainer state (no 'step')")
    return state


def load_weights(model, ckpt_dir: str | Path, device="cpu") -> None:
    """Load ``model.safetensors`` into ``model`` (strict: every tensor must match)."""
    from safetensors.torch import load_model

    path = Path(ckpt_dir) / "model.safetensors"
    try:
        missing, unexpected = load_model(model, str(path), strict=True, device=str(device))
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise CheckpointError(f"cannot load weights from {path}: {e}") from None
    if missing or unexpected:
        raise CheckpointError(f"weights in {path} do not fit the model: missing {missing}, unexpected {unexpected}")

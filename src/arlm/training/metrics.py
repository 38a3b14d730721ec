"""RUN/metrics.jsonl lines, model FLOPs per token and model FLOPs utilisation (MFU).

One JSON object per line. A training step:
``{"step", "loss", "lr", "grad_norm", "tokens_per_sec", "elapsed_s", "mfu", "tokens", "skipped"}``
(loss/grad_norm are null when not finite; mfu is null where the device peak is unknown).
A validation: ``{"step", "val_loss", "val_bpb", "val_ppl", "elapsed_s"}``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..config import ModelConfig
from ..rundir import write_atomic

# Dense bf16 peak FLOP/s by CUDA device name (vendor datasheets, without sparsity).
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
}


def peak_flops(device: torch.device | str, precision: str) -> float | None:
    """The device's dense peak FLOP/s for ``precision`` ("bf16" or "fp32"), or None if unknown.

    Only bf16 peaks of known CUDA devices are tabulated; CPUs and other devices get None rather
    than an invented number.
    """
    device = torch.device(device)
    if device.type != "cuda" or precision != "bf16" or not torch.cuda.is_available():
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device), precision)


def peak_flops_for_name(name: str, precision: str = "bf16") -> float | None:
    if precision != "bf16":
        return None
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name.upper():
            return flops
    return None


def flops_per_token(cfg: ModelConfig, n_matmul_params: int, seq_len: int) -> float:
    """Training FLOPs per token, 6N + 12 L H Q T (PaLM, appendix B).

    N counts the parameters used in matrix multiplies (the embedding lookup is free; the output
    projection is not, tied or untied); 12 L H Q T is attention's score and value matmuls, L counting
    attention calls (custom layouts and tied layers included).
    """
    return 6.0 * n_matmul_params + 12.0 * cfg.n_attn_calls * cfg.heads * cfg.head_dim * seq_len


def matmul_params(model) -> int:
    """Parameters that enter a matmul: all but the embedding tables, plus the tied output head."""
    cfg = model.cfg
    n = model.num_params(exclude_embedding=True)
    if cfg.tie_embedding:
        n += cfg.padded_vocab * cfg.dim
    return n


def finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


class MetricsWriter:
    """Appends JSON lines to RUN/metrics.jsonl, flushed after each line, and hands every record to
    ``trackers`` too (objects with ``write(record)`` and ``close()``: TensorBoard, W&B)."""

    def __init__(self, path: str | Path, trackers=()):
        self.path = Path(path)
        self.trackers = list(trackers)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record, allow_nan=False) + "\n")
        self._f.flush()
        for tracker in self.trackers:
            tracker.write(record)

    def close(self) -> None:
        self._f.close()
        for tracker in self.trackers:
            tracker.close()


def read_metrics(path: str | Path) -> list[dict]:
    """Every parseable line of a metrics.jsonl (a torn last line from a crash is skipped)."""
    out = []
    path = Path(path)
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def truncate_metrics(path: str | Path, step: int) -> int:
    """Drop lines after ``step`` (they are about to be recomputed by a resumed run) and any torn
    line; rewrite atomically. Returns how many lines were dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    keep = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and int(rec.get("step", 0)) <= step:
            keep.append(line)
    dropped = len(lines) - len(keep)
    if dropped:
        write_atomic(path, "".join(l + "\n" for l in keep))
    return dropped


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")

"""Loss curves of one or more runs as one image: ``plot_runs([RUN, ...], "curves.png")``.

Four panels, each against the step or the tokens seen: training loss (smoothed, the raw values
faint behind), validation loss, validation bits per byte, and throughput. One colour per run.
Reads only RUN/metrics.jsonl; drawn with matplotlib (the ``plot`` extra) without a display.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .run import RunError
from .training.metrics import read_metrics

X_AXES = {"step": "step", "tokens": "tokens seen"}
DEFAULT_SMOOTHING = 0.9


@dataclass
class Curves:
    """The numbers of one run's metrics.jsonl, as arrays (NaN where a value is null)."""

    label: str
    step: np.ndarray  # (S,) training steps
    tokens: np.ndarray  # (S,) tokens seen after each step
    loss: np.ndarray  # (S,)
    tokens_per_sec: np.ndarray  # (S,)
    val_step: np.ndarray  # (V,) steps of the validations
    val_loss: np.ndarray  # (V,)
    val_bpb: np.ndarray  # (V,)

    def x(self, axis: str) -> np.ndarray:
        return self.step if axis == "step" else self.tokens

    def val_x(self, axis: str) -> np.ndarray:
        """Validation positions on ``axis``: the tokens seen at their step (read off the training lines)."""
        if axis == "step":
            return self.val_step
        return np.interp(self.val_step, self.step, self.tokens, left=0.0)


def read_curves(run_dir: str | Path, label: str | None = None) -> Curves:
    """A run folder's curves; ``RunError`` when it is not a run or has no training step logged yet."""
    run = Path(run_dir)
    metrics = run / "metrics.jsonl"
    if not run.is_dir():
        raise RunError(f"{run} is not a folder; give run folders (the --out of arlm train)")
    if not metrics.is_file():
        raise RunError(f"{run} is not a run folder: it has no metrics.jsonl (arlm train writes one into its --out)")
    records = read_metrics(metrics)
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    if not train:
        raise RunError(f"{metrics} has no training step yet; plot it once training has logged one")

    def col(rows, key):
        return np.array([_number(r.get(key)) for r in rows], dtype=np.float64)

    return Curves(label=label or run.name, step=col(train, "step"), tokens=col(train, "tokens"),
                  loss=col(train, "loss"), tokens_per_sec=col(train, "tokens_per_sec"),
                  val_step=col(val, "step"), val_loss=col(val, "val_loss"), val_bpb=col(val, "val_bpb"))


def ema(values: np.ndarray, smoothing: float) -> np.ndarray:
    """Exponential moving average, debiased (as TensorBoard's smoothing: the first points are not
    pulled towards 0); NaNs are skipped and stay NaN."""
    out = np.full_like(values, np.nan)
    acc, weight = 0.0, 0.0
    for i, v in enumerate(values):
        if math.isnan(v):
            continue
        acc = smoothing * acc + (1 - smoothing) * v
        weight = smoothing * weight + (1 - smoothing)
        out[i] = acc / weight
    return out


def plot_runs(runs, out: str | Path, *, x: str = "step", smoothing: float = DEFAULT_SMOOTHING,
              dpi: int = 120) -> Path:
    """Draw the curves of ``runs`` (run folders) into the image ``out`` (.png, .pdf, .svg, ...)."""
    out = Path(out)
    fig, canvas = _figure()
    kinds = canvas.get_supported_filetypes()
    if out.suffix.lstrip(".").lower() not in kinds:
        raise ValueError(f"{out}: cannot tell the image format from {out.suffix or 'no suffix'!r}; "
                         f"end the name with one of {', '.join('.' + k for k in sorted(kinds))}")
    runs = [Path(r) for r in runs]
    if not runs:
        raise ValueError("give at least one run folder to plot")
    names = [r.name for r in runs]
    curves = [read_curves(r, label=r.name if names.count(r.name) == 1 else str(r)) for r in runs]
    draw(fig, curves, x=x, smoothing=smoothing)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


def draw(fig, curves: list[Curves], *, x: str = "step", smoothing: float = DEFAULT_SMOOTHING) -> None:
    """Draw the four panels of ``curves`` into the empty matplotlib figure ``fig``."""
    if x not in X_AXES:
        raise ValueError(f"x={x!r}: plot against one of {', '.join(X_AXES)}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing={smoothing}: give a number in [0, 1) (0 draws the raw values)")
    axes = fig.subplots(2, 2, sharex=True)
    (ax_loss, ax_val), (ax_bpb, ax_tps) = axes
    for i, c in enumerate(curves):
        colour = f"C{i % 10}"
        xs = c.x(x)
        ax_loss.plot(xs, c.loss, color=colour, alpha=0.25, linewidth=0.8)
        ax_loss.plot(xs, ema(c.loss, smoothing), color=colour, linewidth=1.6, label=c.label)
        ax_tps.plot(xs, c.tokens_per_sec, color=colour, alpha=0.25, linewidth=0.8)
        ax_tps.plot(xs, ema(c.tokens_per_sec, smoothing), color=colour, linewidth=1.6, label=c.label)
        vx = c.val_x(x)
        ax_val.plot(vx, c.val_loss, color=colour, marker="o", markersize=3, linewidth=1.4, label=c.label)
        ax_bpb.plot(vx, c.val_bpb, color=colour, marker="o", markersize=3, linewidth=1.4, label=c.label)

    smoothed = f" (EMA {smoothing:g}; raw faint)" if smoothing else ""
    titles = {
        ax_loss: ("Training loss" + smoothed, "nats per token"),
        ax_val: ("Validation loss", "nats per token"),
        ax_bpb: ("Validation bits per byte", "bits per byte"),
        ax_tps: ("Throughput" + smoothed, "tokens / s"),
    }
    for ax, (title, ylabel) in titles.items():
        ax.set_title(title, fontsize=11)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if not any(np.isfinite(line.get_ydata()).any() for line in ax.get_lines()):
            ax.text(0.5, 0.5, "no values logged", transform=ax.transAxes, ha="center", va="center",
                    color="0.5")
    for ax in axes[1]:
        ax.set_xlabel(X_AXES[x])
        ax.tick_params(labelbottom=True)
    if x == "tokens":  # 1.5M rather than an offset like 1e6 in the corner
        axes[1][0].xaxis.set_major_formatter(_eng())
    ax_tps.yaxis.set_major_formatter(_eng())
    ax_loss.legend(loc="upper right", fontsize=9)
    fig.suptitle(", ".join(c.label for c in curves) if len(curves) <= 3 else f"{len(curves)} runs", fontsize=12)


def _figure():
    """A matplotlib figure on the Agg canvas (no display, and pyplot's global state is left alone)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("arlm plot needs the 'plot' extra: pip install 'arlm[plot]'") from None
    fig = Figure(figsize=(12, 8), layout="constrained")
    return fig, FigureCanvasAgg(fig)


def _eng():
    from matplotlib.ticker import EngFormatter

    return EngFormatter(sep="")


def _number(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


__all__ = ["Curves", "draw", "ema", "plot_runs", "read_curves"]

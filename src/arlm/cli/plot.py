"""``arlm plot``: loss curves of one or more runs as an image."""

from __future__ import annotations

import argparse

from .common import UsageError, out


def plot(args: argparse.Namespace) -> int:
    """Draw the loss curves of one or more runs into an image (PNG, PDF or SVG).

    Four panels: training loss (smoothed with an exponential moving average, the raw values
    faint behind it), validation loss, validation bits per byte, and throughput in tokens/s,
    each against the step (default) or the tokens seen (--x tokens), one colour per run.
    Reads RUN/metrics.jsonl only, so it works while a run is still training.
    Needs the 'plot' extra (matplotlib): pip install 'arlm[plot]'.

    examples:
      arlm plot runs/demo --out curves.png
      arlm plot runs/small runs/large --out compare.png --x tokens
    """
    from arlm.plot import plot_runs

    if not 0.0 <= args.smooth < 1.0:
        raise UsageError(f"--smooth must be in [0, 1) (0 draws the raw values), got {args.smooth}")
    try:
        path = plot_runs(args.runs, args.out, x=args.x, smoothing=args.smooth)
    except ImportError as e:
        raise UsageError(str(e)) from None
    out(f"wrote {path}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories written by `arlm train`")
    p.add_argument("--out", required=True, metavar="FILE", help="image to write: .png, .pdf or .svg")
    p.add_argument("--x", choices=("step", "tokens"), default="step",
                   help="horizontal axis: training step (default) or tokens seen")
    p.add_argument("--smooth", type=float, default=0.9, metavar="W",
                   help="EMA weight for the training loss and throughput, in [0, 1) (default 0.9; 0: raw)")

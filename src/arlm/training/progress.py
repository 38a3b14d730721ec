"""How a training run reports progress: a tqdm bar on a terminal, plain periodic lines elsewhere.

A bar redraws itself with carriage returns, which a log file keeps as hundreds of updates on one
line; so when stderr is not a terminal (output to a file, a pipe, a job scheduler) the run writes
one plain ``step N/M | loss ...`` line every tenth of the run and at least every ``LOG_SECONDS``.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from tqdm.auto import tqdm

from .metrics import format_duration

LOG_SECONDS = 30.0  # without a progress bar, log at least this often (and every 10% of the run)


def stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """Step reports and messages of one training session (rank 0 speaks; others pass ``log=None``)."""

    def __init__(self, max_steps: int, start_step: int, *, bar: bool, log: Callable[[str], None] | None):
        self.max_steps = max_steps
        self.log = log if log is not None else (lambda m: None)
        self.show_bar = bar and log is not None and stderr_is_terminal()
        self.bar = tqdm(total=max_steps, initial=start_step, disable=not self.show_bar, dynamic_ncols=True,
                        unit="step")
        self.every = max(1, round(max_steps / 10))
        self.last_line = time.perf_counter()

    def say(self, msg: str) -> None:
        """A message for people; above the bar when it writes to the terminal itself."""
        if self.show_bar and self.log is print:
            self.bar.write(msg)
        else:
            self.log(msg)

    def step(self, step: int, loss: float, lr: float, tok_s: float, eta_s: float) -> None:
        if self.show_bar:
            self.bar.update(1)
            self.bar.set_postfix_str(f"loss {loss:.4f} | {tok_s:,.0f} tok/s | lr {lr:.2e}", refresh=False)
        elif step % self.every == 0 or step == self.max_steps or time.perf_counter() - self.last_line >= LOG_SECONDS:
            self.last_line = time.perf_counter()
            self.log(f"step {step}/{self.max_steps} | loss {loss:.4f} | lr {lr:.2e} | {tok_s:,.0f} tok/s "
                     f"| eta {format_duration(eta_s)}")

    def close(self) -> None:
        self.bar.close()

"""SIGTERM/SIGINT during training: note the signal, let the step finish, checkpoint, stop."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable


@contextlib.contextmanager
def stop_signals(on_signal: Callable[[int], None]):
    """Route SIGTERM/SIGINT to ``on_signal`` for the duration (main thread only), then restore."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum, frame):
        if signum == signal.SIGINT and seen:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        seen.append(signum)
        on_signal(signum)

    seen: list[int] = []

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)

"""What every verb shares: the argument parser, usage errors, and help text from docstrings."""

from __future__ import annotations

import argparse
import difflib
import inspect
import re
import sys
from typing import Callable, NoReturn


NEGATIVE_NUMBER = re.compile(r"^-(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class UsageError(Exception):
    """A bad command line or option value: printed as ``arlm: error: ...``, exit status 2."""

    def __init__(self, message: str, verb: str | None = None):
        super().__init__(message)
        self.verb = verb


class Parser(argparse.ArgumentParser):
    """argparse, but errors are raised (so ``main`` prints them one way) instead of exiting."""

    def __init__(self, *args, verb: str | None = None, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # --model.d must not silently mean --model.dim
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.verb = verb
        # a value after a flag may be any number, `--train.lr -1e-3` or `--model.rotary_base -inf` too
        # (argparse's own pattern knows only -1 and -.5, so the rest read as unknown flags); the
        # value's check then says what is allowed
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.verb)


def summary(fn: Callable) -> str:
    """The first line of a verb's docstring: its one-line help."""
    return inspect.getdoc(fn).strip().splitlines()[0]


def description(fn: Callable) -> str:
    """A verb's whole docstring: its ``--help`` description."""
    return inspect.getdoc(fn).strip()


def suggest(word: str, choices) -> str:
    """' (did you mean X?)' when ``word`` is close to one of ``choices``, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def out(text: str = "", end: str = "\n") -> None:
    """Write to stdout and flush, so piped output appears as it is produced."""
    sys.stdout.write(text + end)
    sys.stdout.flush()


def note(text: str) -> None:
    """A remark for the person at the terminal (stderr, so stdout stays clean for pipes)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def check_device(name: str) -> None:
    """A ``--device`` value this machine has, or a UsageError naming it and what is allowed."""
    from arlm.config import ConfigError
    from arlm.training.device import resolve_device

    try:
        resolve_device(name)
    except (ConfigError, RuntimeError) as e:
        # the trainer's message names train.device; keep only what is missing here
        reason = str(e).split(" but ", 1)[-1].split(";")[0] if isinstance(e, ConfigError) else "not a device name"
        raise UsageError(f"--device {name!r}: {reason}; use cpu, cuda, cuda:N or mps where this machine has them")

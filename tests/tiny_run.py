"""A tiny trained run folder for the generation, serving and chat tests (seconds to make)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from conftest import LIVE_INIT

from arlm.cli.main import main


def cli(*argv) -> tuple[int, str, str]:
    """Run ``arlm argv`` in this process; returns (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse's --help
            rc = e.code if isinstance(e.code, int) else 0
    return rc, out.getvalue(), err.getvalue()


def train_tiny_run(out: Path, corpus: Path, *extra) -> Path:
    """Train the tiny preset (byte tokenizer) for a few steps into ``out``; returns ``out``.
    Its blocks start live (conftest.LIVE_INIT): eight steps from the identity leave attention too
    faint for the decoding checks run on it."""
    rc, _, err = cli("train", "--preset", "tiny", "--data", corpus, "--out", out, "--no-progress",
                     "--max-steps", "8", "--model.init", LIVE_INIT, *extra)
    assert rc == 0, err
    return out

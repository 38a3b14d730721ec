"""Shared test set-up: one CPU thread per process, and a small deterministic text corpus."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

# The tests use tiny models, where intra-op threads only add overhead, and on a busy 2-core
# machine two threads per process oversubscribe the cores (measured: the CLI tests ran 3-4x
# slower). Subprocesses inherit the variable; set OMP_NUM_THREADS yourself to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after the variable, so a fresh import picks it up)

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The default model.init (auto: scaled_zero below width 384) starts every block as the identity:
# at init the logits at a position depend on its own token only, so a check of causality, caching,
# masking or batching on such a model passes whatever attention does (a non-causal kernel passed
# 182 tests that ``scaled`` fails). Tests of what a model computes build it with LIVE_INIT:
# ``scaled``, the same draws with the residual outputs live. tests/test_model.py tests scaled_zero
# itself.
LIVE_INIT = "scaled"


def reinit(net, init: str, seed: int = 0):
    """``net`` re-initialised under ``model.init`` scheme ``init`` from ``seed``; returns it."""
    net.cfg.init = init
    net.init_weights(torch.Generator().manual_seed(seed))
    return net


def live_init(net, seed: int = 0):
    """``net`` re-initialised under LIVE_INIT from ``seed``; returns it."""
    return reinit(net, LIVE_INIT, seed)


_WORDS = ("the model reads a token and predicts the next one so that a small network learns "
          "simple patterns in plain text with spaces commas and full stops").split()


def make_corpus(n_bytes: int = 16_000, seed: int = 0) -> str:
    """Deterministic ASCII text of about ``n_bytes``: short lines of words from a small vocabulary,
    with enough repetition that a tiny model learns something in a few steps."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < n_bytes:
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 10))]
        line = " ".join(words).capitalize() + rng.choice((".", ",", "."))
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def tiny_corpus_text() -> str:
    """About 16 KB of deterministic ASCII text (the same every run)."""
    return make_corpus()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, tiny_corpus_text) -> Path:
    """A text file holding ``tiny_corpus_text``; do not modify it (shared by the whole session)."""
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(tiny_corpus_text, encoding="utf-8")
    return path


# Word-level corpus for the trainer, checkpoint and evaluation tests.
TRAIN_WORDS = ("the of and to in is was for on that with as by at from it an be this are or which "
         "model token train loss step value where when never always data run").split()


def write_corpus(path, n_bytes=20_000, seed=0):
    """Write about ``n_bytes`` of deterministic word-salad lines to ``path``; returns ``path``."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < n_bytes:
        line = " ".join(rng.choice(TRAIN_WORDS) for _ in range(rng.randint(4, 14))) + "."
        lines.append(line)
        size += len(line) + 1
    path.write_text("\n".join(lines))
    return path


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A fresh ``write_corpus`` file in the test's own folder."""
    return write_corpus(tmp_path / "corpus.txt")


@pytest.fixture(scope="module")
def one_thread():
    """Pin torch to one thread for a module whatever OMP_NUM_THREADS says: its tests compare
    numbers bit for bit with subprocesses that also run on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def spawn_script(tmp_path, script, cfg, out, *extra):
    """Run ``script`` (Python source) in a subprocess with ``cfg`` written as YAML and ``out``
    as its arguments; one thread, stdout and stderr together."""
    (tmp_path / "script.py").write_text(script)
    cfg.to_yaml(tmp_path / "cfg.yaml")
    return subprocess.Popen([sys.executable, str(tmp_path / "script.py"), str(tmp_path / "cfg.yaml"), str(out),
                             *map(str, extra)], env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(pred, proc, timeout=120):
    """Poll ``pred`` until true; fail if ``proc`` ends first or the timeout passes."""
    deadline = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"subprocess ended early ({proc.returncode}): {proc.stdout.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the subprocess")
        time.sleep(0.02)


# torchrun ships with torch; found beside this interpreter first (a venv's bin/), else on PATH
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")

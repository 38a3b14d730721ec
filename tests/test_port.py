"""x-transformers scripts run against arlm with only the import changed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "xt_enwik8.py"


def test_the_enwik8_example_configuration_trains_and_samples(tmp_path, tiny_corpus):
    # x-transformers' own enwik8 configuration (polar positions, pre-and-post norm), scaled down
    env = dict(os.environ, XT_DIM="32", XT_DEPTH="2", XT_HEADS="2", XT_SEQ_LEN="32", XT_BATCHES="30",
               XT_BATCH_SIZE="8", XT_ACCUMULATE="1", XT_LR="3e-3", XT_VALIDATE_EVERY="29", XT_GENERATE_EVERY="1000",
               XT_GENERATE_LENGTH="20")
    out = subprocess.run([sys.executable, str(EXAMPLE), str(tiny_corpus)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    losses = [float(x) for x in re.findall(r"training loss: ([\d.]+)", out.stdout)]
    assert len(losses) == 30 and losses[-1] < losses[0] - 0.5, losses
    assert "sample:" in out.stdout


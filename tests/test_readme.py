"""The README's commands and examples: the two opening commands, runnable Python, valid CLI lines."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from arlm.cli.main import build_parser
from arlm.config import PRESETS

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
TORCH_PIN = "pip install torch==2.13.0"


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


BLOCKS = code_blocks(README)
PYTHON = [body for lang, body in BLOCKS if lang == "python"]


def test_readme_opens_with_the_main_job_then_the_tests():
    assert len(BLOCKS) >= 2
    (lang1, main_job), (lang2, tests) = BLOCKS[:2]
    assert main_job.count("\n") == 1 and tests.count("\n") == 1  # one shell line each
    # the main job: fresh venv, CPU-pinned torch first, the package, train the default preset, sample
    steps = [s.strip() for s in main_job.strip().split("&&")]
    assert steps[0] == "python3 -m venv .venv"
    assert steps[1] == ".venv/bin/" + TORCH_PIN
    assert steps[2] == ".venv/bin/pip install -e ."
    assert steps[3].startswith(".venv/bin/arlm train --preset default --out runs/demo")
    assert steps[4].startswith(".venv/bin/arlm generate runs/demo --prompt")
    # the tests: the same set-up with the test extras, then pytest
    steps = [s.strip() for s in tests.strip().split("&&")]
    assert steps[:2] == ["python3 -m venv .venv", ".venv/bin/" + TORCH_PIN]
    assert steps[2] == ".venv/bin/pip install -e '.[dev]'"
    assert steps[3] == ".venv/bin/python -m pytest"
    # nothing before them but the title and one sentence
    head = README[: README.index("```")]
    assert head.startswith("# arlm\n") and len([l for l in head.splitlines() if l.strip()]) == 2


def test_ci_script_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in ci
    assert "install torch==2.13.0" in ci and "install -e '.[dev]'" in ci
    assert re.search(r"python\"? -m pytest", ci)
    assert ci.index("install torch==2.13.0") < ci.index("install -e")  # torch first, so pip keeps that build


def test_the_main_job_commands_parse():
    main_job = BLOCKS[0][1]
    for step in main_job.split("&&"):
        argv = shlex.split(step)
        if argv[0].endswith("/arlm"):
            args, extras = build_parser().parse_known_args(argv[1:])
            assert not extras, step


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_examples_run(index, tmp_path, monkeypatch, capsys):
    """Each Python block runs as written (they are small enough for a CPU in seconds)."""
    monkeypatch.chdir(tmp_path)  # examples that write runs/ write them here
    exec(compile(PYTHON[index], f"README.md python block {index + 1}", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip()  # every example prints its result


def test_python_example_is_the_x_transformers_api():
    first = PYTHON[0]
    assert "from arlm import TransformerWrapper, Decoder, AutoregressiveWrapper" in first
    for call in ("model(seq)", "loss.backward()", "model.generate(prompts"):
        assert call in first


def test_cli_lines_in_the_readme_parse():
    """Every `arlm ...` line in a later shell block is a valid command line for the current CLI."""
    lines = [l for lang, body in BLOCKS[2:] if lang in ("bash", "sh", "") for l in body.splitlines()]
    commands = [l.split(" #")[0].strip() for l in lines if l.strip().startswith("arlm ")]
    assert len(commands) >= 5
    for line in commands:
        args, extras = build_parser().parse_known_args(shlex.split(line)[1:])
        assert not extras and args.verb, line


def test_presets_table_lists_every_preset():
    rows = re.findall(r"^\| `([\w-]+)` \|", README, re.M)
    assert rows == list(PRESETS)


def test_results_name_the_command_behind_each_figure():
    results = README.split("## Results", 1)[1].split("\n## ", 1)[0]
    for command in ("arlm train --preset default", "benchmarks/generate.py", "benchmarks/train.py",
                    "benchmarks/quality.py"):
        assert command in results

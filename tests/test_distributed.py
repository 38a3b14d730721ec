"""DDP under torchrun on CPU (gloo): the same `arlm train` command, same loss curve as one process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TORCHRUN

pytestmark = pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None
                                and shutil.which("torchrun") is None, reason="torchrun not installed with torch")



def _corpus(tmp_path: Path) -> Path:
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "home"]
    text = " ".join(words[(i * 7 + i // 3) % len(words)] for i in range(6000))
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    return path


def _train(args: list[str], nproc: int | None, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc:
        cmd = [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", "-m", "arlm", "train", *args]
    else:
        cmd = [sys.executable, "-m", "arlm", "train", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if ok:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def _rows(run: Path) -> list[dict]:
    return [r for r in (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in _rows(run)]


def test_ddp_two_ranks_equal_one_process_with_the_global_batch(tmp_path):
    data = _corpus(tmp_path)
    common = ["--preset", "tiny", "--data", str(data), "--no-progress", "--max-steps", "12",
              "--train.grad_accum", "2", "--train.eval_every", "0"]
    _train([*common, "--out", str(tmp_path / "one"), "--train.batch_size", "4"], None)
    _train([*common, "--out", str(tmp_path / "ddp"), "--train.batch_size", "2"], 2)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "ddp")
    assert len(one) == len(two) == 12
    # each rank sees its half of the same rows; averaged gradients equal the full batch's
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-4
    # rank 0 alone wrote the run: one metrics line per step, one committed checkpoint set
    from arlm.rundir import committed_steps

    assert [r["step"] for r in _rows(tmp_path / "ddp")] == list(range(1, 13))
    assert committed_steps(tmp_path / "ddp")[-1] == 12 and not (tmp_path / "ddp" / ".lock").exists()


def test_ddp_resume_continues_the_same_curve(tmp_path):
    data = _corpus(tmp_path)
    common = ["--preset", "tiny", "--data", str(data), "--no-progress", "--train.batch_size", "2",
              "--train.eval_every", "0", "--model.attn_dropout", "0.1",
              "--train.schedule", "constant", "--train.warmup_steps", "0"]  # lr independent of max_steps
    _train([*common, "--out", str(tmp_path / "full"), "--max-steps", "10"], 2)
    _train([*common, "--out", str(tmp_path / "split"), "--max-steps", "5"], 2)
    _train([*common, "--out", str(tmp_path / "split"), "--max-steps", "10", "--resume", "auto"], 2)
    assert _losses(tmp_path / "split") == _losses(tmp_path / "full")


def test_fsdp_two_ranks_track_one_process_and_resume_across_modes(tmp_path):
    # FSDP2 shards parameters, gradients and Adam moments; the loss curve is that of one process
    # with the global batch, and its checkpoints (full tensors, moments keyed by name) resume
    # under FSDP and in a single process alike
    data = _corpus(tmp_path)
    common = ["--preset", "tiny", "--data", str(data), "--no-progress", "--train.grad_accum", "2",
              "--train.eval_every", "0", "--train.schedule", "constant", "--train.warmup_steps", "0"]
    _train([*common, "--out", str(tmp_path / "one"), "--train.batch_size", "4", "--max-steps", "10"], None)
    fsdp = [*common, "--train.batch_size", "2", "--train.distributed", "fsdp"]
    _train([*fsdp, "--out", str(tmp_path / "fsdp"), "--max-steps", "6"], 2)
    _train([*fsdp, "--out", str(tmp_path / "fsdp"), "--max-steps", "10", "--resume", "auto"], 2)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "fsdp")
    assert len(one) == len(two) == 10
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-4
    # the step-6 FSDP checkpoint continued under DDP (whole model, torch's optimizer layout) in a
    # new folder: weights and the name-keyed Adam moments load into it, so steps 7-10 are the
    # reference's (step 7 checks the weights, 8-10 the moments and the sampler position)
    step6 = tmp_path / "fsdp" / "checkpoints" / "step-6"
    _train([*common, "--out", str(tmp_path / "mixed"), "--train.batch_size", "2", "--max-steps", "10",
            "--resume", str(step6)], 2)
    mixed = _rows(tmp_path / "mixed")
    assert [r["step"] for r in mixed] == [7, 8, 9, 10]
    assert max(abs(a - r["loss"]) for a, r in zip(one[6:], mixed)) < 1e-4


def test_a_locked_run_refuses_a_torchrun_job_without_hanging(tmp_path):
    # rank 0 alone takes the lock; when it is refused, the job ends (the other rank, waiting for
    # rank 0 to join the process group, is stopped by torchrun) and nothing is written
    from arlm.rundir import RunLock

    out = tmp_path / "run"
    args = ["--preset", "tiny", "--data", str(_corpus(tmp_path)), "--no-progress", "--max-steps", "2",
            "--train.batch_size", "2", "--out", str(out)]
    with RunLock(out, log=lambda m: None):
        r = _train(args, 2, ok=False)
        assert r.returncode != 0 and f"{out} is being trained by pid {os.getpid()}" in r.stdout + r.stderr
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    _train(args, 2)  # released: the same job trains
    assert len(_losses(out)) == 2


def test_fsdp_refuses_muon():
    from arlm.config import ConfigError, RunConfig

    cfg = RunConfig()
    cfg.train.distributed, cfg.train.optimizer = "fsdp", "muon"
    with pytest.raises(ConfigError, match="muon needs whole weight matrices"):
        cfg.validate()

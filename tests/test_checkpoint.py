"""Checkpoints: atomic commits, discovery past corrupt ones, exact resume, signals, kill -9, safe loading."""

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from arlm.config import RunConfig
from arlm.data import ChunkSampler
from arlm.run import load_run
from arlm.training import CheckpointError, latest_checkpoint, train, verify_checkpoint
from arlm.training import checkpoint as ck
from arlm.training.checkpoint import REQUIRED_FILES
from arlm.training.metrics import read_metrics
from conftest import spawn_script, wait_for

QUIET = dict(progress=False, log=lambda m: None)


def tiny_cfg(corpus, model=None, **train_kw):
    t = dict(batch_size=4, max_steps=8, lr=3e-3, min_lr=3e-4, warmup_steps=2, eval_every=0, eval_batches=2,
             ckpt_every=4, sample_tokens=8, keep_last=3)
    t.update(train_kw)
    m = dict(max_seq_len=16, dim=32, depth=1, heads=2, pos_emb="rotary")
    m.update(model or {})
    return RunConfig.from_dict({"model": m, "data": dict(path=str(corpus)), "train": t})


# dropout everywhere, so a resume that does not restore the RNG shows up in the losses
DROPOUT = dict(emb_dropout=0.1, attn_dropout=0.1, ff_dropout=0.1)


pytestmark = pytest.mark.usefixtures("one_thread")  # exact comparisons with subprocesses


def losses(run_dir):
    return [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def assert_same_state(a, b):
    """Checkpoint folders a and b hold bit-identical weights and optimizer state."""
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    oa = torch.load(a / "optimizer.pt", weights_only=True)
    ob = torch.load(b / "optimizer.pt", weights_only=True)
    assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        for key, value in oa["state"][i].items():
            assert torch.equal(value, ob["state"][i][key]), (i, key)


def recommit(ckpt_dir):
    """Rewrite COMMIT so it vouches for the files as they are now (an attacker who edits a file can)."""
    commit = json.loads((ckpt_dir / "COMMIT").read_text())
    for name in commit["files"]:
        data = (ckpt_dir / name).read_bytes()
        commit["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (ckpt_dir / "COMMIT").write_text(json.dumps(commit))


def interrupt_at_batch(monkeypatch, n):
    """Deliver SIGTERM to this process right after the sampler draws batch number ``n``."""
    orig = ChunkSampler.next_batch

    def next_batch(self):
        batch = orig(self)
        if self.batches == n:
            signal.raise_signal(signal.SIGTERM)
        return batch

    monkeypatch.setattr(ChunkSampler, "next_batch", next_batch)


# ---- atomic, checksummed, pruned ---------------------------------------------------------------------


def test_checkpoint_layout_commit_and_pruning(tmp_path, corpus):
    out = tmp_path / "run"
    train(tiny_cfg(corpus, max_steps=10, ckpt_every=2, keep_last=2), out, **QUIET)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-10", "step-8"]
    assert latest_checkpoint(out) == out / "checkpoints" / "step-10"
    assert not (out / "latest").exists() and not (out / ".lock").exists()  # no pointer; the lock is released
    ckpt = out / "checkpoints" / "step-10"
    commit = verify_checkpoint(ckpt)
    assert commit["step"] == 10 and set(commit["files"]) == set(REQUIRED_FILES)
    for name, meta in commit["files"].items():
        data = (ckpt / name).read_bytes()
        assert meta == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 10 and state["sampler"] == {"seed": 1337, "batches": 10}
    assert state["tokens_seen"] == 10 * 4 * 16 and state["skipped_steps"] == 0
    assert state["schedule"]["name"] == "cosine" and state["best_val_loss"] is not None
    rng = torch.load(ckpt / "rng.pt", weights_only=True)
    assert isinstance(rng["torch"], torch.Tensor) and rng["cuda"] == []


@pytest.mark.parametrize("damage, reason", [
    ("flip", "sha256"), ("truncate", "bytes"), ("no_commit", "no COMMIT"), ("missing", "missing"),
])
def test_corrupt_newest_checkpoint_is_skipped(tmp_path, corpus, damage, reason):
    out = tmp_path / "run"
    train(tiny_cfg(corpus), out, **QUIET)
    original = losses(out)
    newest = out / "checkpoints" / "step-8"
    if damage == "flip":
        data = bytearray((newest / "model.safetensors").read_bytes())
        data[-5] ^= 0xFF
        (newest / "model.safetensors").write_bytes(bytes(data))
    elif damage == "truncate":
        (newest / "optimizer.pt").write_bytes((newest / "optimizer.pt").read_bytes()[:100])
    elif damage == "no_commit":
        (newest / "COMMIT").unlink()
    else:
        (newest / "rng.pt").unlink()
    logs = []
    assert latest_checkpoint(out, logs.append) == out / "checkpoints" / "step-4"
    assert len(logs) == 1 and "step-8" in logs[0] and reason in logs[0] and "falling back to step-4" in logs[0]
    # resuming goes on from step 4, repeats the same steps and replaces the damaged step-8
    res = train(tiny_cfg(corpus), out, resume="auto", **QUIET)
    assert res.step == 8 and losses(out) == original
    verify_checkpoint(newest)
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


def test_stale_temp_folders_are_removed(tmp_path, corpus):
    out = tmp_path / "run"
    train(tiny_cfg(corpus, max_steps=4), out, **QUIET)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = out / "checkpoints" / f".tmp-step-8-{int(dead.stdout)}"
    live = out / "checkpoints" / f".tmp-step-9-{os.getppid()}"  # a writer that is still running
    for d in (stale, live):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"half")
    logs = []
    assert latest_checkpoint(out, logs.append).name == "step-4"
    assert stale.exists() and live.exists() and not logs  # a reader (load_run, generate) deletes nothing
    assert train(tiny_cfg(corpus, max_steps=6), out, resume="auto", progress=False, log=logs.append).step == 6
    assert not stale.exists() and live.exists()  # the trainer, holding the lock, tidies up
    assert any(str(stale) in m for m in logs)


@pytest.mark.parametrize("error, match", [
    (OSError(errno.ENOSPC, "No space left on device"), "disk is full"),
    # what torch.save raises when the disk fills up under it
    (RuntimeError("[enforce fail at inline_container.cc] PytorchStreamWriter failed writing file"), "Pytorch"),
])
def test_failed_save_keeps_previous_checkpoints(tmp_path, corpus, monkeypatch, error, match):
    orig = ck._save_optimizer

    def disk_full(path, optimizer):
        if ".tmp-step-8-" in str(path):
            path.write_bytes(b"partial")
            raise error
        return orig(path, optimizer)

    monkeypatch.setattr(ck, "_save_optimizer", disk_full)
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match=rf"step-8.*optimizer\.pt.*{match}.*intact"):
        train(tiny_cfg(corpus, max_steps=12), out, **QUIET)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-4"]  # no temp folder left
    verify_checkpoint(out / "checkpoints" / "step-4")
    assert latest_checkpoint(out) == out / "checkpoints" / "step-4"
    monkeypatch.setattr(ck, "_save_optimizer", orig)
    assert train(tiny_cfg(corpus, max_steps=12), out, resume="auto", **QUIET).step == 12


# ---- exact resume ---------------------------------------------------------------------------------


def _interrupted_then_resumed(tmp_path, corpus, monkeypatch, name, break_restore=None):
    cfg = tiny_cfg(corpus, model=DROPOUT, max_steps=16, grad_accum=2, eval_every=4, sample_every=6, ckpt_every=5)
    out = tmp_path / name
    with monkeypatch.context() as m:
        interrupt_at_batch(m, 8 * 2)  # during step 8
        first = train(cfg, out, **QUIET)
    assert first.stopped_by == "signal" and first.signal == signal.SIGTERM and first.step == 8
    assert first.checkpoint.name == "step-8"
    torch.manual_seed(4321)  # a new process would not start where this one left the global RNG
    with monkeypatch.context() as m:
        if break_restore:
            break_restore(m)
        second = train(cfg, out, resume="auto", **QUIET)
    assert second.step == 16 and second.stopped_by == "max_steps"
    return cfg, out


def test_resume_is_exact(tmp_path, corpus, monkeypatch):
    cfg, out = _interrupted_then_resumed(tmp_path, corpus, monkeypatch, "resumed")
    ref = tmp_path / "ref"
    train(cfg, ref, **QUIET)
    assert [s for s, _, _ in losses(out)] == list(range(1, 17))
    assert losses(out) == losses(ref)  # every loss and grad norm bit-for-bit
    vals = lambda d: [(r["step"], r["val_loss"]) for r in read_metrics(d / "metrics.jsonl") if "val_loss" in r]
    assert vals(out) == vals(ref)
    assert_same_state(out / "checkpoints" / "step-16", ref / "checkpoints" / "step-16")


def test_resume_without_sampler_position_differs(tmp_path, corpus, monkeypatch):
    """Negative control: the exact-resume comparison fails when the data position is not restored."""
    _, out = _interrupted_then_resumed(
        tmp_path, corpus, monkeypatch, "broken",
        break_restore=lambda m: m.setattr(ChunkSampler, "load_state_dict", lambda self, state: None))
    cfg = tiny_cfg(corpus, model=DROPOUT, max_steps=16, grad_accum=2, eval_every=4, sample_every=6, ckpt_every=5)
    ref = tmp_path / "ref"
    train(cfg, ref, **QUIET)
    assert losses(out)[:8] == losses(ref)[:8]
    assert all(a != b for a, b in zip(losses(out)[8:], losses(ref)[8:]))


def test_resume_without_rng_state_differs(tmp_path, corpus, monkeypatch):
    """Negative control: with dropout, not restoring the RNG changes every later step."""
    _, out = _interrupted_then_resumed(
        tmp_path, corpus, monkeypatch, "broken",
        break_restore=lambda m: m.setattr(ck, "restore_rng", lambda *a, **k: None))
    cfg = tiny_cfg(corpus, model=DROPOUT, max_steps=16, grad_accum=2, eval_every=4, sample_every=6, ckpt_every=5)
    ref = tmp_path / "ref"
    train(cfg, ref, **QUIET)
    assert losses(out)[:8] == losses(ref)[:8] and losses(out)[8:] != losses(ref)[8:]


def test_extend_a_finished_run(tmp_path, corpus):
    short = tiny_cfg(corpus, max_steps=6, schedule="constant")
    long = tiny_cfg(corpus, max_steps=10, schedule="constant")
    out, ref = tmp_path / "run", tmp_path / "ref"
    train(short, out, **QUIET)
    logs = []
    res = train(short, out, resume="auto", progress=False, log=logs.append)
    assert res.step == 6 and any("nothing to train" in m for m in logs)
    assert train(long, out, resume="auto", **QUIET).step == 10
    train(long, ref, **QUIET)
    assert losses(out) == losses(ref)  # a constant schedule does not depend on max_steps
    assert RunConfig.from_yaml(out / "config.yaml").train.max_steps == 10


def test_resume_with_saved_config_and_fork_to_new_folder(tmp_path, corpus):
    cfg = tiny_cfg(corpus, max_steps=8)
    ref = tmp_path / "ref"
    train(cfg, ref, **QUIET)
    fork = tmp_path / "fork"
    res = train(None, fork, resume=ref / "checkpoints" / "step-4", **QUIET)  # cfg None: the saved config
    assert res.step == 8
    assert losses(fork) == losses(ref)[4:]
    assert_same_state(fork / "checkpoints" / "step-8", ref / "checkpoints" / "step-8")


def test_incompatible_resume_names_the_fields(tmp_path, corpus):
    out = tmp_path / "run"
    train(tiny_cfg(corpus), out, **QUIET)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    changed = tiny_cfg(corpus, model=dict(dim=64), lr=1e-2, max_steps=20)
    with pytest.raises(CheckpointError, match=r"incompatible resume.*model\.dim.*train\.lr") as e:
        train(changed, out, resume="auto", **QUIET)
    assert "train.max_steps" not in str(e.value).split("A resumed run")[0]  # allowed to change
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_resume_errors(tmp_path, corpus):
    cfg = tiny_cfg(corpus, max_steps=8)
    out = tmp_path / "run"
    train(cfg, out, **QUIET)
    with pytest.raises(CheckpointError, match="overwrite its newer checkpoints step-8"):
        train(cfg, out, resume=out / "checkpoints" / "step-4", **QUIET)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        train(cfg, out, resume=tmp_path / "nowhere", **QUIET)
    other = tmp_path / "other"
    shutil.copytree(out, other)
    with pytest.raises(CheckpointError, match="already holds another run"):
        train(cfg, out, resume=other / "checkpoints" / "step-8", **QUIET)
    for p in (out / "checkpoints").iterdir():  # a run killed before its first checkpoint
        for f in p.iterdir():
            f.unlink()
        p.rmdir()
    old_metrics = (out / "metrics.jsonl").read_text()
    logs = []
    res = train(cfg, out, resume="auto", progress=False, log=logs.append)  # starts over, keeps the old files
    assert res.step == 8 and any("no committed checkpoint" in m and "starting over" in m for m in logs)
    assert (out / "restarted-1" / "metrics.jsonl").read_text() == old_metrics
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == list(range(1, 9))  # one curve
    logs = []
    res = train(cfg, tmp_path / "fresh", resume="auto", progress=False, log=logs.append)
    assert res.step == 8 and any("starting a new one" in m for m in logs)


# ---- signals and kill -9 (subprocesses) ------------------------------------------------------------

_SIGTERM_SCRIPT = """
import sys, time, torch
torch.set_num_threads(1)
from arlm.config import RunConfig
from arlm.data import ChunkSampler
from arlm.training import train
orig = ChunkSampler.next_batch
def slow(self):  # slow the run down so the signal lands mid-run
    time.sleep(0.05)
    return orig(self)
ChunkSampler.next_batch = slow
res = train(RunConfig.from_yaml(sys.argv[1]), sys.argv[2], progress=False, log=lambda m: None)
sys.exit(128 + res.signal if res.stopped_by == "signal" else 0)
"""

_SIGKILL_SCRIPT = """
import sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
from arlm.config import RunConfig
from arlm.training import checkpoint as ck, train
orig = ck._save_optimizer
def hang(path, optimizer):  # the second save stalls halfway, so it can be killed mid-write
    if path.parent.name.startswith(".tmp-step-8-"):
        path.write_bytes(b"partial")
        Path(sys.argv[3]).write_text("saving")
        time.sleep(120)
    return orig(path, optimizer)
ck._save_optimizer = hang
train(RunConfig.from_yaml(sys.argv[1]), sys.argv[2], progress=False, log=lambda m: None)
"""




def test_sigterm_checkpoints_and_resume_continues_the_curve(tmp_path, corpus):
    cfg = tiny_cfg(corpus, model=DROPOUT, max_steps=40, ckpt_every=0, eval_every=10)
    out = tmp_path / "run"
    proc = spawn_script(tmp_path, _SIGTERM_SCRIPT, cfg, out)
    wait_for(lambda: len(losses(out)) >= 3 if (out / "metrics.jsonl").exists() else False, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM, proc.stdout.read().decode()
    ckpt = latest_checkpoint(out)
    stopped = int(ckpt.name.split("-")[1])
    assert 3 <= stopped < 40 and [s for s, _, _ in losses(out)][-1] == stopped
    res = train(cfg, out, resume="auto", **QUIET)
    assert res.step == 40
    ref = tmp_path / "ref"
    train(cfg, ref, **QUIET)
    assert losses(out) == losses(ref)


def test_sigkill_during_save_resumes_from_previous_checkpoint(tmp_path, corpus):
    cfg = tiny_cfg(corpus, model=DROPOUT, max_steps=12)
    out, marker = tmp_path / "run", tmp_path / "saving"
    proc = spawn_script(tmp_path, _SIGKILL_SCRIPT, cfg, out, marker)
    wait_for(marker.exists, proc)
    proc.kill()
    proc.wait(timeout=30)
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == [f".tmp-step-8-{proc.pid}", "step-4"]
    assert latest_checkpoint(out) == root / "step-4"
    assert (out / ".lock").read_text().split("\n")[0] == str(proc.pid)  # killed: the lock file stays, unheld
    logs = []
    res = train(cfg, out, resume="auto", progress=False, log=logs.append)
    assert res.step == 12 and any(f".tmp-step-8-{proc.pid}" in m and "removed" in m for m in logs)
    assert any(f"left by pid {proc.pid}" in m and "taking it over" in m for m in logs)
    assert not (out / ".lock").exists()
    assert sorted(p.name for p in root.iterdir()) == ["step-12", "step-4", "step-8"]
    ref = tmp_path / "ref"
    train(cfg, ref, **QUIET)
    assert losses(out) == losses(ref)  # the steps the killed run repeated were logged once
    assert_same_state(root / "step-12", ref / "checkpoints" / "step-12")


# ---- loading never executes code ------------------------------------------------------------------


class _Payload:
    """Unpickling this opens (creates) a file: stands in for arbitrary code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_in_checkpoint_is_refused(tmp_path, corpus):
    out = tmp_path / "run"
    cfg = tiny_cfg(corpus)
    train(cfg, out, **QUIET)
    ckpt = out / "checkpoints" / "step-8"
    marker = tmp_path / "pwned"
    torch.save({"state": _Payload(str(marker)), "param_groups": []}, ckpt / "optimizer.pt")
    recommit(ckpt)
    verify_checkpoint(ckpt)  # the checksums vouch for the file: only safe loading protects us
    with pytest.raises(CheckpointError, match=r"refusing to load .*optimizer\.pt"):
        train(tiny_cfg(corpus, max_steps=12), out, resume="auto", **QUIET)
    assert not marker.exists()
    run = load_run(out)  # weights come from safetensors; optimizer.pt is never read
    assert run.step == 8 and not marker.exists()
    # control: the payload is live, so the checks above could have failed
    torch.load(ckpt / "optimizer.pt", weights_only=False)
    assert marker.exists()

"""The run folder's one owner: the training lock, atomic run files, a cut-short config.yaml, a full
disk, and ``arlm.run`` loading without the trainer."""

import contextlib
import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from arlm.cli.main import main
from arlm.config import ConfigError, RunConfig
from arlm.rundir import (CONFIG, LOCK, RunBusyError, RunLock, latest_checkpoint, read_config, run_config,
                         write_atomic)
from arlm.training import train
from arlm.training.metrics import read_metrics
from conftest import spawn_script, wait_for

QUIET = dict(progress=False, log=lambda m: None)

pytestmark = pytest.mark.usefixtures("one_thread")  # curves compared bit for bit with a subprocess's


def tiny_cfg(corpus, **train_kw):
    t = dict(batch_size=4, max_steps=8, lr=3e-3, min_lr=3e-4, warmup_steps=2, eval_every=0, eval_batches=2,
             ckpt_every=4, sample_tokens=8, keep_last=3)
    t.update(train_kw)
    m = dict(max_seq_len=16, dim=32, depth=1, heads=2, pos_emb="rotary")
    return RunConfig.from_dict({"model": m, "data": dict(path=str(corpus)), "train": t})


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def scratch(run_dir: Path) -> list[str]:
    """Temporary files and folders anywhere in a run (none may survive a failed write)."""
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob(".*") if p.name != LOCK)


def snapshot(run_dir: Path) -> dict:
    return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


# ---- arlm.run without the trainer -------------------------------------------------------------------


def test_importing_arlm_run_does_not_import_the_trainer():
    code = ("import sys, arlm.run, arlm.rundir; "
            "print(sorted(m for m in sys.modules if m.startswith('arlm.training')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


# ---- the lock ------------------------------------------------------------------------------------------


def test_a_held_lock_refuses_a_second_holder_and_a_released_one_leaves_nothing(tmp_path):
    run = tmp_path / "run"
    with RunLock(run, log=lambda m: None):
        assert (run / LOCK).read_text().split("\n")[0] == str(os.getpid())
        with pytest.raises(RunBusyError, match=rf"{run} is being trained by pid {os.getpid()}"):
            RunLock(run).acquire()  # a second open file description conflicts, even in one process
    assert not run.exists()  # the lock made the folder, nothing was written into it, so it goes again


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, corpus):
    out = tmp_path / "run"
    train(tiny_cfg(corpus, max_steps=4), out, **QUIET)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    (out / LOCK).write_text(f"{pid}\nsomehost\n")  # a file, but no process holds its flock
    logs = []
    assert train(tiny_cfg(corpus, max_steps=6), out, resume="auto", progress=False, log=logs.append).step == 6
    assert any(f"left by pid {pid} on somehost" in m and "taking it over" in m for m in logs), logs
    assert not (out / LOCK).exists()


_HELD_SCRIPT = """
import sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
from arlm.config import RunConfig
from arlm.data import ChunkSampler
from arlm.training import train
hold = Path(sys.argv[3])
orig = ChunkSampler.next_batch
def held(self):  # after two steps, wait until the test lets go
    while self.batches >= 2 and hold.exists():
        time.sleep(0.02)
    return orig(self)
ChunkSampler.next_batch = held
train(RunConfig.from_yaml(sys.argv[1]), sys.argv[2], progress=False, log=lambda m: None)
"""




def test_a_second_trainer_is_refused_and_the_first_run_finishes_intact(tmp_path, corpus):
    cfg = tiny_cfg(corpus, max_steps=8)
    out, hold = tmp_path / "run", tmp_path / "hold"
    hold.write_text("")
    proc = spawn_script(tmp_path, _HELD_SCRIPT, cfg, out, hold)
    try:
        wait_for(lambda: len(losses(out)) >= 2, proc)
        # the README's command while the first trainer is between steps 2 and 3 (no checkpoint yet,
        # so an unguarded resume would set its files aside and start over beside it)
        rc, _, err = cli("train", "--out", out, "--resume", "auto", "--no-progress")
        assert rc == 2 and f"arlm: error: {out} is being trained by pid {proc.pid}" in err, err
        rc, _, err = cli("train", "--preset", "tiny", "--data", corpus, "--out", out, "--no-progress")
        assert rc == 2 and f"being trained by pid {proc.pid}" in err, err
        assert sorted(p.name for p in out.iterdir()) == [LOCK, CONFIG, "metrics.jsonl", "tokenizer.json"]
    finally:
        hold.unlink()
    assert proc.wait(timeout=120) == 0, proc.stdout.read().decode()
    ref = tmp_path / "ref"
    train(cfg, ref, **QUIET)
    assert losses(out) == losses(ref) and [s for s, _ in losses(out)] == list(range(1, 9))
    assert latest_checkpoint(out).name == "step-8" and not (out / LOCK).exists()


# ---- atomic writes -------------------------------------------------------------------------------------


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("old\n")

    def disk_full(tmp):
        tmp.write_text("half of the new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=rf"cannot write {path}: No space left on device; the disk is full") as e:
        write_atomic(path, disk_full)
    assert e.value.errno == errno.ENOSPC and "[Errno" not in str(e.value)
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
    write_atomic(path, "new\n")
    assert path.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_disk_full_while_resuming_names_the_file_and_loses_nothing(tmp_path, corpus, monkeypatch):
    out = tmp_path / "run"
    train(tiny_cfg(corpus, max_steps=4), out, **QUIET)
    before = snapshot(out)
    import arlm.rundir.atomic as atomic

    real = atomic.fsync_path

    def full(path):
        if path.name.startswith(".config.yaml.tmp-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path)

    monkeypatch.setattr(atomic, "fsync_path", full)
    with pytest.raises(OSError, match=rf"cannot write {out / CONFIG}: .*disk is full"):
        train(tiny_cfg(corpus, max_steps=8), out, resume="auto", **QUIET)
    assert snapshot(out) == before and scratch(out) == []
    monkeypatch.setattr(atomic, "fsync_path", real)
    assert train(tiny_cfg(corpus, max_steps=8), out, resume="auto", **QUIET).step == 8


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str):
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_really_full_disk_on_resume(tmp_path, corpus):
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        out = disk / "run"
        rc, _, err = cli("train", "--preset", "tiny", "--data", corpus, "--out", out, "--no-progress",
                         "--max-steps", "4", "--train.eval_every", "0", "--train.sample_every", "0")
        assert rc == 0, err
        before = snapshot(out)
        with open(disk / "filler", "wb", buffering=0) as f:  # fill the disk to the last byte
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 4096)
        rc, _, err = cli("train", "--out", out, "--resume", "auto", "--max-steps", "8", "--no-progress")
        assert rc != 0 and f"cannot write {out / CONFIG}" in err and "disk is full" in err, err
        assert "Traceback" not in err and snapshot(out) == before and scratch(out) == []
        (disk / "filler").unlink()
        rc, _, err = cli("train", "--out", out, "--resume", "auto", "--max-steps", "8", "--no-progress")
        assert rc == 0 and latest_checkpoint(out).name == "step-8", err


# ---- a cut-short config.yaml ---------------------------------------------------------------------------

_KILLED_WRITE_SCRIPT = """
import sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
from arlm.config import RunConfig
import arlm.rundir.atomic as atomic
from arlm.training import train
real = atomic.fsync_path
def stall(path):  # the new config.yaml is half written when the process is killed
    if path.name.startswith(".config.yaml.tmp-"):
        path.write_text(path.read_text()[:40])
        Path(sys.argv[3]).write_text("writing")
        time.sleep(120)
    real(path)
atomic.fsync_path = stall
train(RunConfig.from_yaml(sys.argv[1]), sys.argv[2], resume="auto", progress=False, log=lambda m: None)
"""


def test_a_kill_while_config_yaml_is_written_loses_nothing(tmp_path, corpus):
    out, marker = tmp_path / "run", tmp_path / "writing"
    train(tiny_cfg(corpus, max_steps=4), out, **QUIET)
    old = (out / CONFIG).read_bytes()
    proc = spawn_script(tmp_path, _KILLED_WRITE_SCRIPT, tiny_cfg(corpus, max_steps=8), out, marker)
    wait_for(marker.exists, proc)
    proc.kill()
    proc.wait(timeout=30)
    assert (out / CONFIG).read_bytes() == old and scratch(out) == [f".config.yaml.tmp-{proc.pid}"]
    rc, said, err = cli("train", "--out", out, "--resume", "auto", "--max-steps", "8", "--no-progress")
    assert rc == 0, err
    assert f"left by pid {proc.pid}" in said and f".config.yaml.tmp-{proc.pid}: an unfinished write" in said
    assert scratch(out) == [] and latest_checkpoint(out).name == "step-8"


@pytest.mark.parametrize("damage, says", [
    (lambda text: "", "is empty"),
    (lambda text: text[: len(text) // 2].rsplit("\n", 1)[0] + "\n", "has no data, train section"),  # valid YAML
    (lambda text: "".join(text.splitlines(keepends=True)[:-3]), "lacks train."),  # the last lines lost
    (lambda text: text[: len(text) // 2], ""),  # cut mid-line
    (lambda text: "model: [\n", "not valid YAML"),
])
def test_a_cut_short_run_config_resumes_from_the_checkpoints_own(tmp_path, corpus, damage, says):
    """An older arlm wrote RUN/config.yaml in place; a kill or a full disk left it cut short."""
    out, ref = tmp_path / "run", tmp_path / "ref"
    common = ("--preset", "tiny", "--data", corpus, "--no-progress", "--train.eval_every", "0",
              "--train.schedule", "constant", "--train.warmup_steps", "0", "--train.ckpt_every", "3")
    assert cli("train", *common, "--out", out, "--max-steps", "3")[0] == 0
    (out / CONFIG).write_text(damage((out / CONFIG).read_text()))
    rc, _, err = cli("train", "--out", out, "--resume", "auto", "--max-steps", "6", "--no-progress")
    assert rc == 0, err
    assert f"{out / CONFIG}" in err and says in err and "using the config of checkpoint step-3" in err
    assert cli("train", *common, "--out", ref, "--max-steps", "6")[0] == 0
    assert losses(out) == losses(ref)
    assert read_config(out / CONFIG) == read_config(ref / CONFIG)  # rewritten whole


def test_an_empty_config_yaml_is_an_error_naming_the_file_not_all_defaults(tmp_path):
    (tmp_path / CONFIG).write_text("")
    with pytest.raises(ConfigError, match=rf"{tmp_path / CONFIG} is empty"):
        read_config(tmp_path / CONFIG)
    (tmp_path / CONFIG).write_text("train: {lr: [1\n")
    with pytest.raises(ConfigError, match=rf"{tmp_path / CONFIG} is not valid YAML"):
        run_config(tmp_path)  # no checkpoint to fall back to: the error names the file


# ---- validated once -------------------------------------------------------------------------------------

# every config the trainer refuses before work for a reason the config alone decides
TRAINER_REFUSALS = [
    (("--train.keep_last", "1"), "train.keep_last=1: keep at least 2 checkpoints"),
    (("--train.sample_prompt", ""), "train.sample_prompt is empty"),
    (("--train.precision", "bf16", "--device", "cpu"), "train.precision='bf16' needs a CUDA device"),
    (("--data.seq_len", "64", "--model.max_seq_len", "32"), "data.seq_len=64 is above model.max_seq_len=32"),
]


@pytest.mark.parametrize("flags, message", TRAINER_REFUSALS)
def test_arlm_config_refuses_what_arlm_train_refuses(tmp_path, corpus, flags, message):
    rc_cfg, printed, err_cfg = cli("config", "--preset", "tiny", *flags)
    out = tmp_path / "run"
    rc_train, _, err_train = cli("train", "--preset", "tiny", "--data", corpus, "--out", out, "--no-progress", *flags)
    assert (rc_cfg, rc_train) == (2, 2) and printed == ""
    assert message in err_cfg and err_cfg == err_train
    assert not out.exists()
    # the library API refuses the same config with the same words
    cfg = RunConfig.from_yaml(cli("config", "--preset", "tiny")[1])
    for key, value in zip(flags[::2], flags[1::2]):
        cfg.override({"--device": "train.device"}.get(key, key[2:]), value)
    with pytest.raises(ConfigError, match=message.replace("'", ".").replace("[", r"\[")):
        train(cfg, out, **QUIET)
    assert not out.exists()


# ---- one answer to "is this a run / a checkpoint" ------------------------------------------------------


def test_generate_and_train_agree_on_what_is_a_checkpoint(tmp_path, corpus):
    from arlm.cli.main import build_parser
    from arlm.cli.train import resolve
    from arlm.rundir import CheckpointError
    from arlm.run import RunError, load_run

    out = tmp_path / "run"
    train(tiny_cfg(corpus, max_steps=4), out, **QUIET)
    half = out / "checkpoints" / "step-9"  # a save that never committed
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half")
    stray = tmp_path / "step-3"  # named like a checkpoint, but not one: no COMMIT, not in a run
    stray.mkdir()
    with pytest.raises(RunError, match="step-9 is not usable: .* no COMMIT marker"):
        load_run(half)
    with pytest.raises(CheckpointError, match="step-9 has no COMMIT marker"):
        train(None, tmp_path / "fork", resume=half, **QUIET)
    with pytest.raises(RunError, match="step-3 is not a run folder"):
        load_run(stray)
    with pytest.raises(CheckpointError, match="step-3 is neither a checkpoint .* nor a run folder"):
        train(None, tmp_path / "fork", resume=stray, **QUIET)
    assert not (tmp_path / "fork").exists()
    # `arlm train --resume CKPT` without --out continues in the checkpoint's run, and only there
    for path, run_dir in ((half, out), (out / "checkpoints" / "step-4", out), (stray, stray)):
        args, _ = build_parser().parse_known_args(["train", "--resume", str(path)])
        assert resolve(args)[1] == run_dir

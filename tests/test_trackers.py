"""train.tracker: TensorBoard event files and W&B (offline) runs carry what metrics.jsonl holds."""

from __future__ import annotations

import json
import shutil
import struct
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from arlm.cli.main import main as cli_main
from arlm.config import ConfigError, RunConfig
from arlm.training import train
from arlm.training.metrics import read_metrics
from arlm.training.resume import merge_resume_config
from arlm.training.trackers import TAGS, TENSORBOARD_DIR, WANDB_ID_FILE, TrackerError, scalars


def tiny_cfg(corpus, **train):
    t = dict(batch_size=4, max_steps=8, lr=3e-3, warmup_steps=2, eval_every=4, eval_batches=2, ckpt_every=0,
             sample_tokens=4, keep_last=2, progress=False)
    t.update(train)
    return RunConfig.from_dict({"model": dict(max_seq_len=16, dim=32, depth=1, heads=2),
                                "data": dict(path=str(corpus)), "train": t})


def expected_scalars(run_dir) -> dict[str, dict[int, float]]:
    """tag -> {step: value} from metrics.jsonl, the way every tracker should have them."""
    out: dict[str, dict[int, float]] = {}
    for rec in read_metrics(run_dir / "metrics.jsonl"):
        for tag, value in scalars(rec).items():
            out.setdefault(tag, {})[rec["step"]] = value
    return out


def tensorboard_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# ---- the config field --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["none", "tensorboard", "wandb", "tensorboard,wandb", "wandb, tensorboard"])
def test_tracker_values_accepted_and_round_trip(value):
    cfg = RunConfig()
    cfg.train.tracker = value
    cfg.validate()
    assert RunConfig.from_yaml(cfg.to_yaml()).train.tracker == value


@pytest.mark.parametrize("value, says", [
    ("tensorbord", "unknown tracker(s) 'tensorbord'"), ("mlflow,wandb", "'mlflow'"),
    ("wandb,wandb", "named twice"), ("none,wandb", "'none'"), ("", "''"),
])
def test_bad_tracker_names_are_refused(value, says):
    cfg = RunConfig()
    cfg.train.tracker = value
    with pytest.raises(ConfigError, match="train.tracker") as e:
        cfg.validate()
    assert says in str(e.value) and "tensorboard, wandb" in str(e.value)


def test_bad_tracker_on_the_command_line_exits_2(tmp_path, capsys):
    rc = cli_main(["train", "--preset", "tiny", "--out", str(tmp_path / "r"), "--train.tracker", "tensorbord"])
    assert rc == 2 and "train.tracker='tensorbord'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_resumed_run_may_change_its_tracker():
    saved, new = RunConfig(), RunConfig()
    new.train.tracker = "tensorboard"
    assert merge_resume_config(saved, new).train.tracker == "tensorboard"


def test_a_missing_extra_is_refused_before_any_work(corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # importing it raises ImportError
    with pytest.raises(TrackerError, match=r"pip install 'arlm\[track\]'"):
        train(tiny_cfg(corpus, tracker="tensorboard"), tmp_path / "r")
    assert not (tmp_path / "r").exists()


# ---- TensorBoard -------------------------------------------------------------------------------


def test_tensorboard_scalars_equal_metrics_jsonl_and_a_resume_replaces_recomputed_steps(corpus, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(corpus, tracker="tensorboard", max_steps=8, ckpt_every=4), run, log=lambda m: None)
    want = expected_scalars(run)
    assert set(want) == set(TAGS.values()) - {"train/mfu"}  # MFU is null on a CPU
    got = tensorboard_scalars(run)
    assert set(got) == set(want)
    for tag, by_step in want.items():
        assert [s for s, _ in got[tag]] == sorted(by_step), tag
        assert [v for _, v in got[tag]] == pytest.approx([by_step[s] for s in sorted(by_step)], rel=1e-6), tag

    # as if a crash lost the step-8 checkpoint after its metrics were logged: the resumed session
    # recomputes steps 5-8, and TensorBoard must hold each step once, as metrics.jsonl does
    shutil.rmtree(run / "checkpoints" / "step-8")
    train(None, run, resume=run / "checkpoints" / "step-4", log=lambda m: None)
    again = expected_scalars(run)
    assert sorted(again["train/loss"]) == list(range(1, 9))
    got = tensorboard_scalars(run)
    for tag, by_step in again.items():
        assert [s for s, _ in got[tag]] == sorted(by_step), tag  # each step once
        assert [v for _, v in got[tag]] == pytest.approx([by_step[s] for s in sorted(by_step)], rel=1e-6), tag


# ---- Weights & Biases, offline -----------------------------------------------------------------


def wandb_records(path):
    """The protobuf records of an offline W&B run file (a LevelDB-style log: a 7-byte header, then
    32 KiB blocks of records, each with a crc32, a length and a type: full, first, middle, last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            out.append(rec)
    return out


def wandb_history(path) -> tuple[dict[str, dict[int, float]], list]:
    """(tag -> {step: value}, run records) of an offline W&B run file."""
    import wandb

    wandb.teardown()  # run.finish() may return before W&B's service has flushed the file; this waits
    history, runs = {}, []
    for rec in wandb_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item}
            for tag, value in row.items():
                if not tag.startswith("_"):
                    history.setdefault(tag, {})[row["_step"]] = value
        elif kind == "run":
            runs.append(rec.run)
    return history, runs


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "wandb-home").mkdir()
    return tmp_path / "wandb-home" / "wandb"


def test_wandb_offline_logs_metrics_and_config_and_resume_reuses_the_id(corpus, tmp_path, wandb_offline):
    run = tmp_path / "my-run"
    train(tiny_cfg(corpus, tracker="wandb", max_steps=4), run, log=lambda m: None)
    run_id = json.loads((run / WANDB_ID_FILE).read_text())["id"]
    (first,) = sorted(wandb_offline.glob("offline-run-*"))
    assert first.name.endswith(f"-{run_id}")
    history, runs = wandb_history(first / f"run-{run_id}.wandb")
    assert history == expected_scalars(run)
    assert runs[0].run_id == run_id and runs[0].display_name == "my-run"
    config = {u.key: json.loads(u.value_json) for u in runs[0].config.update}
    saved = RunConfig.from_yaml(run / "config.yaml").to_dict()
    assert {k: config[k] for k in saved} == saved  # the resolved config (vocab_size included)

    train(tiny_cfg(corpus, tracker="wandb", max_steps=7), run, resume="auto", log=lambda m: None)
    assert json.loads((run / WANDB_ID_FILE).read_text())["id"] == run_id
    first_run, second = sorted(wandb_offline.glob("offline-run-*"))
    assert second.name.endswith(f"-{run_id}")
    history2, runs2 = wandb_history(second / f"run-{run_id}.wandb")
    assert runs2[0].run_id == run_id
    steps = {t: {s: v for s, v in by_step.items() if s > 4} for t, by_step in expected_scalars(run).items()}
    assert history2 == {t: v for t, v in steps.items() if v}

    # a new run in another folder gets a W&B run of its own
    train(tiny_cfg(corpus, tracker="wandb", max_steps=2), tmp_path / "other", log=lambda m: None)
    assert json.loads((tmp_path / "other" / WANDB_ID_FILE).read_text())["id"] != run_id

"""The wsd (warmup-stable-decay) schedule, and extending runs with --resume auto --max-steps N."""

import math

import pytest

from arlm.config import ConfigError, RunConfig
from arlm.training import lr_at, train
from arlm.training.checkpoint import committed_steps
from arlm.training.metrics import read_metrics
from arlm.training.schedule import decay_start

pytestmark = pytest.mark.usefixtures("one_thread")  # bit-for-bit comparisons


def wsd(**kw):
    t = RunConfig().train
    t.schedule, t.lr, t.min_lr, t.warmup_steps, t.max_steps = "wsd", 1e-3, 1e-4, 10, 100
    for k, v in kw.items():
        setattr(t, k, v)
    return t


def test_wsd_warms_up_holds_then_decays_over_the_last_fraction():
    t = wsd(decay_fraction=0.2)
    assert decay_start(t) == 80
    assert lr_at(5, t) == pytest.approx(5e-4)
    assert [lr_at(s, t) for s in (10, 11, 50, 80)] == [1e-3] * 4
    assert lr_at(90, t) == pytest.approx(1e-4 + 0.5 * 9e-4)  # linear: halfway at the decay's middle
    assert lr_at(100, t) == pytest.approx(1e-4) and lr_at(150, t) == pytest.approx(1e-4)
    decay = [lr_at(s, t) for s in range(80, 101)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    t.decay_shape = "1-sqrt"
    assert lr_at(90, t) == pytest.approx(1e-4 + (1 - math.sqrt(0.5)) * 9e-4)
    assert lr_at(100, t) == pytest.approx(1e-4) and lr_at(80, t) == 1e-3


def test_wsd_stable_phase_does_not_depend_on_max_steps():
    short, long = wsd(max_steps=20, warmup_steps=2), wsd(max_steps=40, warmup_steps=2)
    start = decay_start(short)
    assert start == 16 and decay_start(long) == 32
    assert [lr_at(s, short) for s in range(1, start + 1)] == [lr_at(s, long) for s in range(1, start + 1)]
    assert lr_at(start + 1, short) < lr_at(start + 1, long)
    assert decay_start(wsd(max_steps=5, warmup_steps=10)) == 4  # never past the last step
    assert decay_start(RunConfig().train) is None  # cosine has no stable phase


@pytest.mark.parametrize("key,value,match", [
    ("decay_fraction", 0.0, r"train\.decay_fraction must be in \(0, 1\]"),
    ("decay_fraction", 1.5, r"train\.decay_fraction must be in \(0, 1\]"),
    ("decay_shape", "cosine", r"train\.decay_shape='cosine' is not one of: linear, 1-sqrt"),
    ("schedule", "wsdd", r"train\.schedule='wsdd' is not one of: cosine, constant, wsd"),
])
def test_wsd_settings_are_validated(key, value, match):
    cfg = RunConfig()
    setattr(cfg.train, key, value)
    with pytest.raises(ConfigError, match=match):
        cfg.validate()


def test_wsd_settings_round_trip_through_yaml():
    cfg = RunConfig()
    cfg.train.schedule, cfg.train.decay_fraction, cfg.train.decay_shape = "wsd", 0.35, "1-sqrt"
    back = RunConfig.from_yaml(cfg.validate().to_yaml())
    assert back == cfg and back.train.decay_shape == "1-sqrt"


# ---- extending a run -----------------------------------------------------------------------------


def run_cfg(corpus, **train):
    t = dict(batch_size=4, max_steps=20, lr=3e-3, min_lr=3e-4, warmup_steps=2, schedule="wsd", eval_every=0,
             eval_batches=2, ckpt_every=0, sample_tokens=4, keep_last=2, progress=False)
    t.update(train)
    m = dict(max_seq_len=16, dim=32, depth=1, heads=2, pos_emb="rotary", ff_dropout=0.1)
    return RunConfig.from_dict({"model": m, "data": {"path": str(corpus)}, "train": t})


def curve(run_dir):
    return [(r["step"], r["loss"], r["lr"]) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def test_an_extended_wsd_run_equals_the_longer_run_from_the_start(tmp_path, corpus):
    train(run_cfg(corpus, max_steps=40), tmp_path / "long", log=lambda m: None)
    out = tmp_path / "extended"
    train(run_cfg(corpus, max_steps=20), out, log=lambda m: None)
    assert committed_steps(out) == [16, 20]  # the decay's start is saved even with ckpt_every=0
    said = []
    res = train(run_cfg(corpus, max_steps=40), out, resume="auto", log=said.append)
    assert res.step == 40
    assert any("continuing from step-16" in m and "before its decay began" in m for m in said), said
    # every step, loss and lr, bit for bit (dropout included: the RNG resumes from step 16)
    assert curve(out) == curve(tmp_path / "long") and len(curve(out)) == 40
    # the old decay is kept, not lost
    assert (out / "decayed-1" / "checkpoints" / "step-20" / "COMMIT").is_file()
    assert [r["step"] for r in read_metrics(out / "decayed-1" / "metrics.jsonl") if "loss" in r][-1] == 20


def test_pruning_keeps_the_checkpoint_before_the_decay(tmp_path, corpus):
    out = tmp_path / "run"
    train(run_cfg(corpus, max_steps=20, ckpt_every=3), out, log=lambda m: None)
    assert committed_steps(out) == [16, 18, 20]  # keep_last=2 would have pruned 16
    said = []
    train(run_cfg(corpus, max_steps=30, ckpt_every=3), out, resume="auto", log=said.append)
    assert any("continuing from step-16" in m for m in said), said
    assert sorted(p.name for p in (out / "decayed-1" / "checkpoints").iterdir()) == ["step-18", "step-20"]


def test_extending_a_cosine_run_says_the_past_schedule_changes(tmp_path, corpus):
    out = tmp_path / "run"
    train(run_cfg(corpus, max_steps=6, schedule="cosine"), out, log=lambda m: None)
    said = []
    res = train(run_cfg(corpus, max_steps=8, schedule="cosine"), out, resume="auto", log=said.append)
    assert res.step == 8 and any("past schedule changes" in m for m in said), said


def test_a_wsd_run_resumed_to_the_same_length_continues_from_its_newest_checkpoint(tmp_path, corpus):
    out = tmp_path / "run"
    train(run_cfg(corpus, max_steps=20, max_minutes=None), out, log=lambda m: None)
    said = []
    res = train(run_cfg(corpus, max_steps=20), out, resume="auto", log=said.append)
    assert res.step == 20 and any("nothing to train" in m for m in said)
    assert not (out / "decayed-1").exists()


def test_the_readme_command_extends_a_wsd_run(tmp_path, corpus):
    import contextlib
    import io

    from arlm.cli.main import main

    def cli(*argv):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            rc = main([str(a) for a in argv])
        return rc, out.getvalue()

    cfg_file = tmp_path / "wsd.yaml"
    run_cfg(corpus, max_steps=10).to_yaml(cfg_file)
    run = tmp_path / "run"
    assert cli("train", "--config", cfg_file, "--out", run)[0] == 0
    rc, said = cli("train", "--out", run, "--resume", "auto", "--max-steps", "14")
    assert rc == 0, said
    assert "continuing from step-8, the newest checkpoint before its decay began" in said
    assert "finished: step 14" in said and [s for s, _, _ in curve(run)] == list(range(1, 15))

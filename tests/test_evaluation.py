"""Evaluation (loss, bits per byte, perplexity) and opening run folders with load_run."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from arlm.config import ModelConfig, RunConfig
from arlm.data import DataError
from arlm.evaluation import evaluate, evaluate_run
from arlm.model import Transformer
from arlm.run import RunError, load_run
from arlm.training import train
from arlm.training.metrics import read_metrics
from conftest import write_corpus

QUIET = dict(progress=False, log=lambda m: None)


def tiny_cfg(corpus, data=None, **train_kw):
    t = dict(batch_size=4, max_steps=8, lr=3e-3, min_lr=3e-4, warmup_steps=2, eval_every=0, eval_batches=3,
             ckpt_every=4, sample_tokens=8, keep_last=3)
    t.update(train_kw)
    d = dict(path=str(corpus))
    d.update(data or {})
    return RunConfig.from_dict({"model": dict(max_seq_len=16, dim=32, depth=1, heads=2, pos_emb="rotary"),
                                "data": d, "train": t})


pytestmark = pytest.mark.usefixtures("one_thread")  # exact comparisons with subprocesses


@pytest.fixture
def run_dir(tmp_path, corpus):
    out = tmp_path / "run"
    train(tiny_cfg(corpus), out, **QUIET)
    return out


# ---- evaluate ----------------------------------------------------------------------------------------


def test_evaluate_is_the_mean_over_tokens_not_batches():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, max_seq_len=8, dim=16, depth=1, heads=2)).train()
    tokens = np.random.default_rng(0).integers(0, 50, size=8 * 7 + 1).astype(np.uint16)  # 7 windows
    r = evaluate(model, tokens, seq_len=8, batch_size=3, max_batches=None, bytes_per_token=1.5)
    assert model.training  # the mode is given back
    with torch.no_grad():  # independent reference: all 7 windows in one batch, eval mode
        windows = torch.from_numpy(tokens[np.arange(7)[:, None] * 8 + np.arange(9)].astype(np.int64))
        model.eval()
        logits = model(windows[:, :-1])
        ref = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten()).item()
    assert r["tokens"] == 7 * 8  # batches of 3, 3, 1 windows
    assert r["loss"] == pytest.approx(ref, rel=1e-6)
    assert r["bpb"] == pytest.approx(ref / math.log(2) / 1.5, rel=1e-6)
    assert r["ppl"] == pytest.approx(math.exp(ref), rel=1e-6)
    limited = evaluate(model, tokens, seq_len=8, batch_size=3, max_batches=1, bytes_per_token=1.5)
    assert limited["tokens"] == 3 * 8
    with pytest.raises(ValueError, match="bytes_per_token"):
        evaluate(model, tokens, 8, 3, None, bytes_per_token=0)


def test_evaluate_sums_the_models_own_loss_without_full_logits(monkeypatch):
    """Large vocabulary: evaluation scores in row chunks (Transformer.forward(targets=...,
    loss_reduction="sum")), equal to cross-entropy on the full logits, which are never built."""
    from test_loss import LargestOutput

    V = 8192
    monkeypatch.setattr("arlm.model.loss.AUTO_CHUNK_ELEMENTS", 256 * V)  # 256-row chunks (the least)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=V, max_seq_len=32, dim=16, depth=1, heads=2))
    tokens = np.random.default_rng(0).integers(0, V, size=32 * 24 + 1).astype(np.int64)  # 24 windows
    with LargestOutput() as seen:
        r = evaluate(model, tokens, seq_len=32, batch_size=16, max_batches=None, bytes_per_token=1.0)
    assert seen.largest < 16 * 32 * V  # never one batch's (B, T, V) logits
    with torch.no_grad():
        windows = torch.from_numpy(tokens[np.arange(24)[:, None] * 32 + np.arange(33)])
        ref = F.cross_entropy(model.eval()(windows[:, :-1]).flatten(0, 1), windows[:, 1:].flatten()).item()
    assert r["tokens"] == 24 * 32 and r["loss"] == pytest.approx(ref, rel=1e-6)


def test_evaluate_run_reproduces_the_trainers_validation(run_dir):
    run = load_run(run_dir)
    last = [r for r in read_metrics(run_dir / "metrics.jsonl") if "val_loss" in r][-1]
    r = evaluate_run(run, max_batches=run.cfg.train.eval_batches)
    assert last["step"] == run.step == 8
    assert r["loss"] == pytest.approx(last["val_loss"], rel=1e-6)
    assert r["bpb"] == pytest.approx(last["val_bpb"], rel=1e-6)
    full = evaluate_run(run)  # the whole validation split
    assert full["tokens"] > r["tokens"] == 3 * 4 * 16


def test_evaluate_run_on_a_file_uses_all_of_it(tmp_path, corpus):
    out = tmp_path / "bpe"
    train(tiny_cfg(corpus, data=dict(tokenizer="bpe", bpe_vocab_size=300), max_steps=4), out, **QUIET)
    run = load_run(out)
    other = write_corpus(tmp_path / "other.txt", n_bytes=3000, seed=7)
    data = other.read_bytes()
    n_tok = len(run.tokenizer.encode_bytes(data))
    r = evaluate_run(run, data_path=other)
    assert r["tokens"] == (n_tok - 1) // 16 * 16  # every full window of the file, not a split of it
    assert r["bpb"] == pytest.approx(r["loss"] / math.log(2) / (len(data) / n_tok), rel=1e-9)
    (tmp_path / "short.txt").write_text("too short")
    with pytest.raises(DataError, match="fewer than one evaluation window"):
        evaluate_run(run, data_path=tmp_path / "short.txt")


# ---- load_run ----------------------------------------------------------------------------------------


def test_load_run_latest_step_and_checkpoint_folder(run_dir):
    run = load_run(run_dir)
    assert run.step == 8 and run.checkpoint_dir == run_dir / "checkpoints" / "step-8" and run.run_dir == run_dir
    assert not run.model.training and run.tokenizer.kind == "byte" and run.cfg.model.vocab_size == 256
    older = load_run(run_dir, step=4)
    same = load_run(run_dir / "checkpoints" / "step-4")
    assert older.step == same.step == 4 and same.run_dir == run_dir
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(older.model(ids), same.model(ids))
        assert not torch.equal(older.model(ids), run.model(ids))  # different weights were loaded


def test_load_run_errors(tmp_path, run_dir):
    with pytest.raises(RunError, match="does not exist"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="no config.yaml"):
        load_run(tmp_path / "empty")
    with pytest.raises(RunError, match=r"no checkpoint at step 5; committed steps: \[4, 8\]"):
        load_run(run_dir, step=5)
    with pytest.raises(RunError, match="is a file"):
        load_run(run_dir / "config.yaml")
    (run_dir / "checkpoints" / "step-8" / "COMMIT").unlink()
    logs = []
    assert load_run(run_dir, log=logs.append).step == 4  # falls back, and says so
    assert "step-8" in logs[0] and "step-4" in logs[0]
    with pytest.raises(RunError, match="not usable"):
        load_run(run_dir / "checkpoints" / "step-8")
    (run_dir / "checkpoints" / "step-4" / "COMMIT").unlink()
    with pytest.raises(RunError, match="no committed checkpoint"):
        load_run(run_dir)


def test_bits_per_byte_on_text_that_is_not_utf8_agree_between_training_and_eval_data(tmp_path, capsys):
    """A BPE run on text with bytes that are not UTF-8: its validation (as the trainer logs it and
    as `arlm eval` re-derives it) and `arlm eval --data` on the same text divide by the same
    original bytes, so the same model and text give the same bits per byte."""
    import json

    from arlm.cli.main import main
    from arlm.data import split_tokens

    lines = write_corpus(tmp_path / "words.txt", n_bytes=24_000).read_bytes().split(b"\n")
    corpus = b"\n".join(line + (b" \xff\xfe\xe9" if i % 4 == 0 else b"") for i, line in enumerate(lines))
    (tmp_path / "bad.txt").write_bytes(corpus)
    logged = []
    cfg = tiny_cfg(tmp_path / "bad.txt", data=dict(tokenizer="bpe", bpe_vocab_size=300), eval_every=8, eval_batches=1000)
    train(cfg, tmp_path / "run", progress=False, log=logged.append)
    replaced = 3 * len(lines[::4])
    assert any(f"{replaced:,} byte(s) of the corpus are not valid UTF-8" in m for m in logged), logged
    run = load_run(tmp_path / "run")
    split = evaluate_run(run)
    val = [m for m in read_metrics(tmp_path / "run" / "metrics.jsonl") if "val_bpb" in m][-1]
    assert val["val_bpb"] == pytest.approx(split["bpb"], rel=1e-6)
    # the validation text as a file of its own: the same tokens, the same figure
    splits = split_tokens(corpus, run.tokenizer, cfg.data.val_fraction, cfg.seq_len + 1)
    (tmp_path / "val.bin.txt").write_bytes(corpus[len(corpus) - splits.val_bytes:])
    assert main(["eval", str(tmp_path / "run"), "--data", str(tmp_path / "val.bin.txt"), "--json"]) == 0
    out, err = capsys.readouterr()
    on_file = json.loads(out)
    assert on_file["tokens"] == split["tokens"] and on_file["replaced_bytes"] > 0
    assert on_file["bpb"] == pytest.approx(split["bpb"], rel=1e-9) and on_file["loss"] == pytest.approx(split["loss"])
    assert f"{on_file['replaced_bytes']:,} byte(s) of {tmp_path / 'val.bin.txt'} are not valid UTF-8" in err

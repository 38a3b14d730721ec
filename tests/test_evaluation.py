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

"""Trainer: schedule, optimizer groups, gradient accumulation, metrics, NaN skipping, input errors."""

import json
import math
import signal

import pytest
import torch
from safetensors.torch import load_file

from arlm.config import ConfigError, ModelConfig, RunConfig
from arlm.data import DataError, split_tokens
from arlm.model import Transformer
from arlm.rundir import latest_checkpoint
from arlm.tokenizers import load_tokenizer
from arlm.training import (MAX_CONSECUTIVE_SKIPS, CheckpointError, NonFiniteLossError, forward_backward, lr_at,
                           train)
from arlm.training import trainer as trainer_mod
from arlm.training.metrics import flops_per_token, matmul_params, peak_flops, peak_flops_for_name, read_metrics
from arlm.training.optim import build_optimizer


def tiny_cfg(corpus, model=None, data=None, **train):
    t = dict(batch_size=4, max_steps=12, lr=3e-3, min_lr=3e-4, warmup_steps=3, eval_every=0, eval_batches=2,
             ckpt_every=0, sample_tokens=8, keep_last=2, progress=False)
    t.update(train)
    m = dict(max_seq_len=16, dim=32, depth=1, heads=2, pos_emb="rotary")
    m.update(model or {})
    d = dict(path=str(corpus))
    d.update(data or {})
    return RunConfig.from_dict({"model": m, "data": d, "train": t})


pytestmark = pytest.mark.usefixtures("one_thread")  # exact comparisons with subprocesses


def step_lines(run_dir):
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def val_lines(run_dir):
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "val_loss" in r]


# ---- schedule and optimizer --------------------------------------------------------------------


def test_lr_schedule_warmup_then_cosine_to_min_lr():
    cfg = RunConfig().train
    cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps = 1e-3, 1e-4, 10, 110
    assert lr_at(1, cfg) == pytest.approx(1e-4)  # linear warmup starts above zero
    assert lr_at(5, cfg) == pytest.approx(5e-4)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx((1e-3 + 1e-4) / 2)  # cosine midpoint
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    assert lr_at(500, cfg) == pytest.approx(1e-4)  # an extended run stays at min_lr
    decay = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    cfg.schedule = "constant"
    assert lr_at(3, cfg) == pytest.approx(3e-4) and lr_at(50, cfg) == lr_at(110, cfg) == 1e-3
    with pytest.raises(ValueError, match="step"):
        lr_at(0, cfg)


def test_weight_decay_on_matrices_and_embeddings_only():
    mcfg = ModelConfig(vocab_size=50, max_seq_len=8, dim=16, depth=2, heads=2, pos_emb="absolute")
    model = Transformer(mcfg)
    tcfg = RunConfig().train
    opt = build_optimizer(model, tcfg, torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == tcfg.weight_decay and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decayed | kept == set(names.values()) and not decayed & kept
    assert "token_emb.weight" in decayed and "pos_emb.emb.weight" in decayed and "head.weight" in decayed
    assert all(model.get_parameter(n).dim() >= 2 for n in decayed)
    assert all(n.endswith(("bias", "norm.weight")) for n in kept) and any(n.endswith("bias") for n in kept)
    tcfg.optimizer = "adam"
    assert type(build_optimizer(model, tcfg, torch.device("cpu"))) is torch.optim.Adam


def test_grad_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, max_seq_len=16, dim=32, depth=1, heads=2))
    batch = torch.randint(0, 64, (8, 17))
    full = forward_backward(model, [batch], bf16=False)
    g_full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    acc = forward_backward(model, [batch[:4], batch[4:]], bf16=False)
    for g, p in zip(g_full, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)
    assert float(acc) == pytest.approx(float(full), rel=1e-6)
    model.zero_grad()
    chunked = forward_backward(model, [batch[:4], batch[4:]], bf16=False, loss_chunk=5)  # 5 rows at a time
    for g, p in zip(g_full, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    assert float(chunked) == pytest.approx(float(full), rel=1e-6)


def test_mfu_flops_and_device_peaks():
    assert peak_flops_for_name("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_for_name("NVIDIA H200") == 989e12
    assert peak_flops_for_name("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_for_name("Tesla T4") is None  # unknown GPUs get no invented peak
    assert peak_flops_for_name("NVIDIA H100 80GB HBM3", "fp32") is None
    assert peak_flops("cpu", "bf16") is None and peak_flops("cpu", "fp32") is None
    cfg = ModelConfig(vocab_size=100, max_seq_len=16, dim=32, depth=2, heads=4, tie_embedding=True, ff_bias=False)
    model = Transformer(cfg)
    # per layer: qkv + out (4 d^2, bias-free) + ff (8 d^2) -> 12 d^2; tied head adds V d
    n = matmul_params(model)
    assert n == model.num_params(exclude_embedding=True) + 100 * 32
    assert flops_per_token(cfg, n, 16) == 6 * n + 12 * 2 * 4 * 8 * 16


# ---- the run folder ------------------------------------------------------------------------------


def test_train_writes_run_metrics_and_samples(tmp_path, corpus):
    out = tmp_path / "run"
    logs = []
    cfg = tiny_cfg(corpus, max_steps=20, eval_every=5, ckpt_every=5, sample_every=10)
    res = train(cfg, out, log=logs.append)
    assert res.step == 20 and res.stopped_by == "max_steps" and res.signal is None and res.run_dir == out
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-15", "step-20"]  # keep_last=2
    assert latest_checkpoint(out) == res.checkpoint == out / "checkpoints" / "step-20"
    saved = RunConfig.from_yaml(out / "config.yaml")
    assert saved.model.vocab_size == 256 and load_tokenizer(out / "tokenizer.json").kind == "byte"

    lines = step_lines(out)
    assert [r["step"] for r in lines] == list(range(1, 21))
    for r in lines:
        assert set(r) == {"step", "loss", "lr", "grad_norm", "tokens_per_sec", "elapsed_s", "mfu", "tokens", "skipped"}
        assert r["lr"] == pytest.approx(lr_at(r["step"], cfg.train)) and r["mfu"] is None and not r["skipped"]
        assert r["tokens"] == r["step"] * 4 * 16 and r["grad_norm"] > 0 and r["tokens_per_sec"] > 0
    assert [r["elapsed_s"] for r in lines] == sorted(r["elapsed_s"] for r in lines)
    vals = val_lines(out)
    assert [v["step"] for v in vals] == [5, 10, 15, 20]  # no duplicate validation at the end
    for v in vals:  # byte tokenizer: one byte per token
        assert v["val_bpb"] == pytest.approx(v["val_loss"] / math.log(2))
        assert v["val_ppl"] == pytest.approx(math.exp(v["val_loss"]))
    assert vals[-1]["val_loss"] < vals[0]["val_loss"] < math.log(256)  # it learns
    assert res.val_loss == vals[-1]["val_loss"] and res.val_bpb == vals[-1]["val_bpb"]

    samples = [m for m in logs if "sample at step" in m]
    assert len(samples) == 2 and "step 10" in samples[0] and "step 20" in samples[1]
    compact = [m for m in logs if m.startswith("step ") and "/20 |" in m]
    assert [m.split("/")[0] for m in compact] == [f"step {s}" for s in range(2, 21, 2)]  # every 10%
    assert all("eta" in m and "tok/s" in m for m in compact)

    # the same config and seed give the same run: losses, weights and the sampled text
    logs2 = []
    train(cfg, tmp_path / "run2", log=logs2.append)
    assert [r["loss"] for r in step_lines(tmp_path / "run2")] == [r["loss"] for r in lines]
    assert [m for m in logs2 if "sample at" in m] == samples
    a = load_file(out / "checkpoints/step-20/model.safetensors")
    b = load_file(tmp_path / "run2/checkpoints/step-20/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bpe_run_sets_vocab_and_bits_per_byte(tmp_path, corpus):
    out = tmp_path / "run"
    cfg = tiny_cfg(corpus, data=dict(tokenizer="bpe", bpe_vocab_size=300), max_steps=4, grad_accum=2)
    train(cfg, out, log=lambda m: None)
    tok = load_tokenizer(out / "tokenizer.json")
    assert tok.kind == "bpe" and RunConfig.from_yaml(out / "config.yaml").model.vocab_size == tok.vocab_size
    assert step_lines(out)[-1]["tokens"] == 4 * 2 * 4 * 16  # steps * accum * batch * seq
    splits = split_tokens(corpus.read_bytes(), tok, 0.1, 17)
    assert splits.val_bytes_per_token > 1.5  # BPE merges bytes, so the conversion matters
    (v,) = val_lines(out)
    assert v["val_bpb"] == pytest.approx(v["val_loss"] / math.log(2) / splits.val_bytes_per_token)


class _Poisoned(Transformer):
    """Returns NaN logits on the chosen forward calls (counted over training forwards)."""

    calls = 0
    poison: set = set()

    def forward(self, ids, *args, **kwargs):
        logits = super().forward(ids, *args, **kwargs)
        if self.training:
            type(self).calls += 1
            if type(self).calls in self.poison:
                return logits * float("nan")
        return logits


def test_nan_step_is_skipped_leaving_params_and_optimizer_unchanged(tmp_path, corpus, monkeypatch):
    monkeypatch.setattr(_Poisoned, "calls", 0)
    monkeypatch.setattr(_Poisoned, "poison", {3})
    monkeypatch.setattr(trainer_mod, "Transformer", _Poisoned)
    out, logs = tmp_path / "run", []
    res = train(tiny_cfg(corpus, max_steps=5, ckpt_every=1, keep_last=10), out, log=logs.append)
    assert res.step == 5 and res.skipped_steps == 1
    lines = step_lines(out)
    assert [r["skipped"] for r in lines] == [False, False, True, False, False]
    assert lines[2]["loss"] is None and lines[1]["loss"] is not None
    assert any("step 3: non-finite loss" in m and "skipped" in m for m in logs)
    ck = out / "checkpoints"
    assert json.loads((ck / "step-3/trainer_state.json").read_text())["skipped_steps"] == 1

    def weights(step):
        return load_file(ck / f"step-{step}/model.safetensors")

    def opt_state(step):
        return torch.load(ck / f"step-{step}/optimizer.pt", weights_only=True)["state"]

    w2, w3, w4 = weights(2), weights(3), weights(4)
    assert all(torch.equal(w2[k], w3[k]) for k in w2)  # the poisoned step changed nothing
    assert not all(torch.equal(w3[k], w4[k]) for k in w3)  # the next one trains again
    s2, s3 = opt_state(2), opt_state(3)
    for i in s2:
        for key in s2[i]:
            assert torch.equal(s2[i][key], s3[i][key]), (i, key)
    assert int(opt_state(4)[0]["step"]) == 3  # three real updates in four steps


def test_consecutive_nan_steps_stop_the_run(tmp_path, corpus, monkeypatch):
    monkeypatch.setattr(_Poisoned, "calls", 0)
    monkeypatch.setattr(_Poisoned, "poison", set(range(3, 1000)))
    monkeypatch.setattr(trainer_mod, "Transformer", _Poisoned)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=f"{MAX_CONSECUTIVE_SKIPS} consecutive steps"):
        train(tiny_cfg(corpus, max_steps=50), out, log=lambda m: None)
    lines = step_lines(out)
    assert len(lines) == 2 + MAX_CONSECUTIVE_SKIPS and all(r["skipped"] for r in lines[2:])


def test_max_minutes_stops_with_a_checkpoint(tmp_path, corpus):
    out = tmp_path / "run"
    res = train(tiny_cfg(corpus, max_steps=10_000, max_minutes=1e-5), out, log=lambda m: None)
    assert res.stopped_by == "max_minutes" and 1 <= res.step < 10_000
    assert res.checkpoint == out / "checkpoints" / f"step-{res.step}" and (res.checkpoint / "COMMIT").is_file()
    assert val_lines(out)[-1]["step"] == res.step  # validated at the end


def test_signal_stops_after_the_step_and_restores_handlers(tmp_path, corpus, monkeypatch):
    from arlm.data import ChunkSampler

    orig = ChunkSampler.next_batch

    def next_batch(self):
        batch = orig(self)
        if self.batches == 3:
            signal.raise_signal(signal.SIGINT)
        return batch

    monkeypatch.setattr(ChunkSampler, "next_batch", next_batch)
    before = signal.getsignal(signal.SIGINT)
    res = train(tiny_cfg(corpus, max_steps=50), tmp_path / "run", log=lambda m: None)
    assert res.stopped_by == "signal" and res.signal == signal.SIGINT and res.step == 3
    assert (res.checkpoint / "COMMIT").is_file() and res.checkpoint.name == "step-3"
    assert signal.getsignal(signal.SIGINT) is before


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("change, error, match", [
    (dict(train=dict(keep_last=1)), ConfigError, "keep_last"),
    (dict(train=dict(lr=-1.0)), ConfigError, "train.lr"),
    (dict(train=dict(sample_prompt="")), ConfigError, "sample_prompt"),
    (dict(train=dict(precision="bf16", device="cpu")), ConfigError, "precision"),
    (dict(model=dict(dim=30, heads=4)), ConfigError, "model.dim"),
    (dict(data=dict(path="/nonexistent/corpus.txt")), DataError, "does not exist"),
    (dict(data=dict(seq_len=4096), model=dict(max_seq_len=4096)), DataError, "too small"),
])
def test_bad_input_fails_before_writing(tmp_path, corpus, change, error, match):
    cfg = tiny_cfg(corpus, model=change.get("model"), data=change.get("data"), **change.get("train", {}))
    out = tmp_path / "run"
    with pytest.raises(error, match=match):
        train(cfg, out, log=lambda m: None)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_fails_before_writing(tmp_path, corpus):
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train(tiny_cfg(corpus, device="cuda"), tmp_path / "run", log=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_existing_run_is_never_overwritten(tmp_path, corpus):
    out = tmp_path / "run"
    cfg = tiny_cfg(corpus, max_steps=4)
    train(cfg, out, log=lambda m: None)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match="--resume auto"):
        train(cfg, out, log=lambda m: None)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(ConfigError, match="not a folder"):
        train(cfg, corpus, log=lambda m: None)


def test_muon_and_activation_checkpointing_train_and_resume(tmp_path):
    """Muon (hidden matrices) + AdamW (the rest) lowers the loss and resumes exactly; activation
    checkpointing gives the same losses as storing activations."""
    from arlm.config import preset
    from arlm.training import train
    from arlm.training.optim import Combined, build_optimizer

    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"line {i % 17} says {i * 7 % 13}\n" for i in range(1500)))

    def cfg(**train_kw):
        c = preset("tiny")
        c.data.path = str(corpus)
        c.train.eval_every = 0
        c.train.schedule = "constant"
        c.train.warmup_steps = 0
        for k, v in train_kw.items():
            setattr(c.train, k, v)
        return c

    def losses(run):
        return [json.loads(l)["loss"] for l in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]

    if not hasattr(torch.optim, "Muon"):
        pytest.skip("this torch has no torch.optim.Muon")
    train(cfg(optimizer="muon", max_steps=16), tmp_path / "full", progress=False, log=lambda m: None)
    full = losses(tmp_path / "full")
    assert sum(full[-4:]) < sum(full[:4])
    train(cfg(optimizer="muon", max_steps=8), tmp_path / "split", progress=False, log=lambda m: None)
    train(cfg(optimizer="muon", max_steps=16), tmp_path / "split", resume="auto", progress=False, log=lambda m: None)
    assert losses(tmp_path / "split") == full
    m = Transformer(cfg().model)
    assert isinstance(build_optimizer(m, cfg(optimizer="muon").train, torch.device("cpu")), Combined)

    train(cfg(max_steps=6), tmp_path / "plain", progress=False, log=lambda m: None)
    train(cfg(max_steps=6, activation_checkpointing=True), tmp_path / "ckpt", progress=False, log=lambda m: None)
    a, b = losses(tmp_path / "plain"), losses(tmp_path / "ckpt")
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5


def test_a_non_finite_validation_is_logged_as_null_and_the_run_still_checkpoints(tmp_path, corpus, monkeypatch):
    import json

    from arlm.training import trainer

    real = trainer.evaluate
    calls = []

    def nan_at_first(*args, **kwargs):  # the first validation diverges, later ones do not
        r = real(*args, **kwargs)
        calls.append(1)
        return {**r, "loss": float("nan"), "bpb": float("nan"), "ppl": float("nan")} if len(calls) == 1 else r

    monkeypatch.setattr(trainer, "evaluate", nan_at_first)
    out = tmp_path / "run"
    res = train(tiny_cfg(corpus, max_steps=10, eval_every=5, ckpt_every=5), out, log=lambda _: None)
    assert res.step == 10 and (out / "checkpoints" / "step-10" / "COMMIT").is_file()
    vals = val_lines(out)
    assert vals[0]["step"] == 5 and vals[0]["val_loss"] is None and vals[0]["val_ppl"] is None
    assert vals[1]["val_loss"] is not None and math.isfinite(vals[1]["val_loss"])
    state = json.loads((out / "checkpoints" / "step-5" / "trainer_state.json").read_text())
    assert state["last_val"]["val_loss"] is None and state["best_val_loss"] is None


# ---- messages -------------------------------------------------------------------------------------


def _cli(*argv) -> tuple[int, str, str]:
    import contextlib
    import io

    from arlm.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def test_without_a_terminal_progress_is_plain_periodic_lines(tmp_path, corpus, capsys):
    said = []
    train(tiny_cfg(corpus, max_steps=20, progress=True), tmp_path / "run", progress=True, log=said.append)
    err = capsys.readouterr().err
    assert "\r" not in err and "it/s" not in err and "step/s" not in err  # no tqdm redraws in a log file
    steps = [m.split(" |")[0] for m in said if m.startswith("step ") and "/20 |" in m]
    assert steps == [f"step {n}/20" for n in range(2, 21, 2)]  # every tenth of the run


def test_a_max_minutes_stop_says_how_to_continue(tmp_path, corpus):
    out = tmp_path / "my run"
    rc, stdout, err = _cli("train", "--preset", "tiny", "--data", corpus, "--out", out, "--no-progress",
                           "--max-steps", "10000", "--train.max_minutes", "1e-5", "--train.eval_batches", "1")
    assert rc == 0, err
    assert "(max minutes)" in stdout and "train.max_minutes=1e-05 reached at step" in stdout
    assert f"continue with: arlm train --out '{out}' --resume auto" in err
    step = int(stdout.split("finished: step ")[1].split()[0])
    assert "validation: val_loss " in stdout and f" at step {step} (nats/token)" in stdout


def test_the_summary_names_the_step_of_a_stale_validation(tmp_path, corpus, monkeypatch, capsys):
    from arlm.cli.train import _print_summary
    from arlm.data import ChunkSampler

    orig = ChunkSampler.next_batch

    def next_batch(self):
        batch = orig(self)
        if self.batches == 6:
            signal.raise_signal(signal.SIGTERM)
        return batch

    monkeypatch.setattr(ChunkSampler, "next_batch", next_batch)
    res = train(tiny_cfg(corpus, max_steps=50, eval_every=4), tmp_path / "run", log=lambda m: None)
    assert res.stopped_by == "signal" and res.step == 6 and res.val_step == 4
    _print_summary(res)
    assert f"validation: val_loss {res.val_loss:.4f} at step 4 (nats/token)" in capsys.readouterr().out


def test_run_state_reads_and_writes_the_trainer_state_keys_checkpoints_have_always_had():
    from arlm.training.state import RunState

    keys = {"format", "step", "sampler", "schedule", "skipped_steps", "consecutive_skips", "tokens_seen",
            "elapsed_s", "best_val_loss", "last_val", "corpus"}
    st = RunState(step=7, tokens_seen=448, skipped_steps=1, consecutive_skips=0, elapsed_s=3.5, best_val_loss=2.5,
                  last_val={"step": 6, "val_loss": 2.5, "val_bpb": 3.6, "val_ppl": 12.2}, sampler={"batches": 7},
                  corpus={"sha256": "ab", "bytes": 10})
    d = st.to_dict(schedule={"name": "cosine"})
    assert set(d) == keys and d["elapsed_s"] >= 3.5
    back = RunState.from_dict(json.loads(json.dumps(d)))
    assert (back.step, back.tokens_seen, back.skipped_steps, back.best_val_loss, back.last_val, back.sampler,
            back.corpus) == (7, 448, 1, 2.5, st.last_val, st.sampler, st.corpus)
    old = RunState.from_dict({"step": 3, "sampler": {"batches": 3}})  # a checkpoint from before some keys existed
    assert (old.step, old.tokens_seen, old.skipped_steps, old.last_val) == (3, 0, 0, None)

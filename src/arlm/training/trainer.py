"""The training loop: ``train(cfg, out_dir)`` turns a config into a run folder.

Order of work: every input is checked (config, output folder, checkpoint, corpus, tokenizer,
device) before anything is written; then the loop runs until ``max_steps``, ``max_minutes`` or a
SIGTERM/SIGINT, and always ends with a committed checkpoint. Resuming restores weights,
optimizer, step, sampler position and RNG states, so on a CPU in fp32 the resumed loss curve is
bit-for-bit the uninterrupted one.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config import ConfigError, RunConfig
from ..data import ChunkSampler, TokenSplits, align_data_config, open_training_data
from ..evaluation import evaluate
from ..generation import AutoregressiveWrapper
from ..model import Transformer
from ..rundir import training_lock, write_run_files
from ..tokenizers import load_tokenizer, replaced_note
from . import checkpoint as ckpt_io
from . import distributed as ddp
from .checkpoint import CheckpointError
from .device import autocast_ctx, resolve_device, resolve_precision
from .metrics import MetricsWriter, finite_or_none, flops_per_token, matmul_params, peak_flops, truncate_metrics
from .optim import build_optimizer, checkpoint_activations
from .extend import set_aside_decay
from .progress import Progress
from .resume import RunPlan, plan_run
from .schedule import decay_start, schedule_state
from .signals import stop_signals
from .state import RunState, Session
from .step import StepOutcome, train_step
from .trackers import check_trackers, open_trackers

# A run stops with NonFiniteLossError after this many optimizer steps in a row were skipped
# because the loss or the gradient norm was NaN/inf.
MAX_CONSECUTIVE_SKIPS = 10
SAMPLE_TEMPERATURE = 0.8


class NonFiniteLossError(RuntimeError):
    """Training diverged: too many consecutive steps had a non-finite loss or gradient norm."""


@dataclass
class TrainResult:
    step: int
    val_loss: float | None
    val_bpb: float | None
    seconds: float  # wall time of this call
    tokens_per_sec: float  # training tokens per second over this call
    run_dir: Path
    stopped_by: str  # "max_steps" | "max_minutes" | "signal"
    signal: int | None = None  # the signal number when stopped_by == "signal"
    skipped_steps: int = 0
    checkpoint: Path | None = None
    val_step: int | None = None  # the step val_loss was measured at (earlier than ``step`` after a signal)


def _sample(model, tokenizer, cfg: RunConfig, device: torch.device, bf16: bool) -> str:
    prompt = torch.tensor(tokenizer.encode(cfg.train.sample_prompt), dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed)
    wrapper = AutoregressiveWrapper(model)
    with autocast_ctx(device, bf16):
        out = wrapper.generate(prompt, cfg.train.sample_tokens, temperature=SAMPLE_TEMPERATURE, generator=gen,
                               truncate_prompt=True)
    return tokenizer.decode(out.tolist())


# ---- set-up ------------------------------------------------------------------------------------


def _prepare(cfg: RunConfig | None, out_dir, resume, log: Callable[[str], None]):
    """Check every input and read the checkpoint's state; nothing is written yet. Returns the
    plan, the data and tokenizer, and the run state (a fresh one for a new run)."""
    if cfg is not None:
        cfg = RunConfig.from_dict(cfg.to_dict())  # never mutate the caller's config
        cfg.validate()
        _check_train_cfg(cfg)
        align_data_config(cfg.data, log)  # a prepared folder decides the tokenizer and split
    plan = plan_run(cfg, out_dir, resume, log, writer=ddp.from_env().is_main)
    cfg, resume_from = plan.cfg, plan.checkpoint
    cfg.validate()
    _check_train_cfg(cfg)
    tc = cfg.train
    device = resolve_device(tc.device)
    bf16 = resolve_precision(tc.precision, device)

    saved_tokenizer = None
    if resume_from is not None:
        try:
            saved_tokenizer = load_tokenizer(resume_from / "tokenizer.json")
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot load the tokenizer of {resume_from}: {e}") from None
    # the one place the trainer opens its data: raw text (tokenized now) or prepared shards (memory-mapped)
    splits: TokenSplits = open_training_data(cfg.data, cfg.seq_len, tokenizer=saved_tokenizer)
    tokenizer, corpus_id = splits.tokenizer, splits.corpus_id
    if splits.replaced_bytes:
        log(replaced_note(splits.replaced_bytes, "the corpus"))
    if saved_tokenizer is None and tokenizer.kind == "bpe" and tokenizer.vocab_size < cfg.data.bpe_vocab_size:
        log(f"note: data.bpe_vocab_size={cfg.data.bpe_vocab_size}, but the corpus ran out of pairs to merge "
            f"at {tokenizer.vocab_size} tokens; the tokenizer and model.vocab_size use {tokenizer.vocab_size}")
    if cfg.model.vocab_size != tokenizer.vocab_size:  # the model's vocabulary is the tokenizer's, said aloud
        log(f"note: model.vocab_size={cfg.model.vocab_size} is set to {tokenizer.vocab_size}, the size of the "
            f"{tokenizer.kind} tokenizer's vocabulary (the model always has one row per token id)")
    cfg.model.vocab_size = tokenizer.vocab_size
    if not tokenizer.encode(tc.sample_prompt):
        raise ConfigError("train.sample_prompt encodes to no tokens; give at least one character (default '\\n')")

    state = RunState.load(resume_from) if resume_from is not None else RunState(corpus=corpus_id)
    if resume_from is not None:
        saved_corpus = state.corpus or {}
        if saved_corpus and saved_corpus.get("sha256") != corpus_id["sha256"]:
            log(f"warning: the corpus ({cfg.data.path or 'built-in'}) differs from the one this run was trained on "
                f"({saved_corpus.get('bytes')} bytes then, {corpus_id['bytes']} now); training continues on the "
                "new text, so the resumed run will not repeat the original batches")
        state.corpus = corpus_id
    return plan, device, bf16, tokenizer, splits, state


def _build(plan: RunPlan, device: torch.device, bf16: bool, tokenizer, splits: TokenSplits, state: RunState,
           progress: bool, log: Callable[[str], None]) -> Session:
    """Model, optimizer and sampler, restored from the checkpoint; then the run folder is written."""
    cfg, run_dir, resume_from = plan.cfg, plan.run_dir, plan.checkpoint
    tc = cfg.train
    dinfo = ddp.from_env()
    fsdp = dinfo.enabled and tc.distributed == "fsdp"
    device, owns_group = ddp.setup(dinfo, device)
    model = Transformer(cfg.model)
    if resume_from is None:
        model.init_weights(torch.Generator().manual_seed(tc.seed))
        torch.manual_seed(tc.seed + dinfo.rank)  # dropout draws from the global generator, per rank
    model.to(device)
    if tc.activation_checkpointing:
        checkpoint_activations(model)
    optimizer = build_optimizer(model, tc, device)
    sampler = ChunkSampler(splits.train, cfg.seq_len, tc.batch_size, tc.seed, dinfo.rank, dinfo.world_size)
    if resume_from is not None:
        ckpt_io.load_weights(model, resume_from, device=device)
        ckpt_io.load_optimizer(optimizer, resume_from, device=device, model=model)
    fwd, optimizer = ddp.parallelize(model, optimizer, dinfo, device, tc.distributed,
                                     lambda m: build_optimizer(m, tc, device), restored=resume_from is not None)
    if resume_from is not None:
        try:
            sampler.load_state_dict(state.sampler)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{resume_from / 'trainer_state.json'} has no usable sampler state: {e}") from None
        ranks = state.rng.get("ranks") or []
        if dinfo.enabled and len(ranks) != dinfo.world_size:
            log(f"checkpoint has RNG states for {len(ranks) or 1} rank(s), this run has {dinfo.world_size}: "
                "dropout will not repeat the original run exactly")
        ckpt_io.restore_rng(ranks[dinfo.rank] if dinfo.rank < len(ranks) else state.rng, device, log)
    fwd = torch.compile(fwd) if tc.compile else fwd

    ddp.barrier(dinfo)  # every rank has checked its inputs: rank 0 writes the run folder
    metrics = _open_run_dir(plan, tokenizer, state.step, log) if dinfo.is_main else _NullWriter()
    return Session(
        cfg=cfg, run_dir=run_dir, resume_from=resume_from, device=device, bf16=bf16, dinfo=dinfo, fsdp=fsdp,
        owns_group=owns_group, model=model, fwd=fwd, optimizer=optimizer, sampler=sampler, tokenizer=tokenizer,
        splits=splits, state=state, metrics=metrics,
        progress=Progress(tc.max_steps, state.step, bar=progress and tc.progress, log=log if dinfo.is_main else None),
        params=[p for p in model.parameters() if p.requires_grad], clip=tc.grad_clip if tc.grad_clip > 0 else math.inf,
        tokens_per_step=tc.batch_size * tc.grad_accum * cfg.seq_len * dinfo.world_size,
        peak=peak_flops(device, "bf16" if bf16 else "fp32"),
        fpt=flops_per_token(cfg.model, matmul_params(model), cfg.seq_len),
        # evaluation and samples run on rank 0, or on every rank when the model is sharded (its
        # forward gathers parameters from all ranks); only rank 0 reports them
        every_rank=dinfo.is_main or fsdp, start_step=state.step,
        last_saved=state.step if resume_from is not None else None, last_ckpt=resume_from,
    )


def _open_run_dir(plan: RunPlan, tokenizer, start_step: int, log: Callable[[str], None]):
    """Write the run's config and tokenizer, cut metrics a resume recomputes, and open the
    metrics writer (the one place metrics are opened)."""
    run_dir, resume_from = plan.run_dir, plan.checkpoint
    metrics_path = run_dir / "metrics.jsonl"
    run_dir.mkdir(parents=True, exist_ok=True)
    set_aside_decay(run_dir, plan.set_aside, log)
    write_run_files(run_dir, config_yaml=plan.cfg.to_yaml(), tokenizer=tokenizer, log=log)
    if resume_from is not None and resume_from.parent.parent.resolve() == run_dir.resolve():
        dropped = truncate_metrics(metrics_path, start_step)
        if dropped:
            log(f"metrics.jsonl: dropped {dropped} line(s) after step {start_step}; they are recomputed now")
    return MetricsWriter(metrics_path, open_trackers(plan.cfg, run_dir, start_step))


# ---- after a step: log, evaluate, sample, save, stop (in this order) ---------------------------


def after_step(s: Session, o: StepOutcome) -> str | None:
    """The decisions after each step, in order; returns why the run stops now, or None."""
    tc, st = s.tc, s.state
    s.tok_s_avg = o.tokens_per_sec if s.tok_s_avg is None else 0.9 * s.tok_s_avg + 0.1 * o.tokens_per_sec
    # 1. log the step (and give up after too many non-finite steps in a row)
    s.metrics.write({
        "step": st.step, "loss": finite_or_none(o.loss), "lr": o.lr, "grad_norm": finite_or_none(o.grad_norm),
        "tokens_per_sec": o.tokens_per_sec, "elapsed_s": st.elapsed(),
        "mfu": s.fpt * o.tokens_per_sec / s.peak if s.peak else None, "tokens": st.tokens_seen, "skipped": not o.ok,
    })
    if not o.ok:
        _report_skip(s, o)
    eta = (tc.max_steps - st.step) * s.train_time / max(1, st.step - s.start_step)
    s.progress.step(st.step, o.loss, o.lr, s.tok_s_avg, eta)
    # 2. evaluate, 3. sample
    if tc.eval_every and st.step % tc.eval_every == 0 and s.every_rank:
        run_eval(s)
    if tc.sample_every and st.step % tc.sample_every == 0 and s.every_rank:
        run_sample(s)
    # 4. save, 5. stop. A run that ends by max_steps / max_minutes validates in finish() and then
    # saves, so its last checkpoint holds its final validation.
    stop = "signal" if o.signal else "max_minutes" if o.out_of_time else "max_steps" if st.step >= tc.max_steps else None
    periodic = tc.ckpt_every and st.step % tc.ckpt_every == 0
    if (periodic or st.step == decay_start(tc)) and stop in (None, "signal"):  # wsd: a checkpoint to extend from
        save(s)
    return stop


def _report_skip(s: Session, o: StepOutcome) -> None:
    st = s.state
    s.progress.say(f"step {st.step}: non-finite {'loss' if not math.isfinite(o.loss) else 'gradient norm'} "
                   f"(loss={o.loss}, grad_norm={o.grad_norm}); optimizer step skipped "
                   f"({st.consecutive_skips} in a row, {st.skipped_steps} in all)")
    if st.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
        where = f"the last committed checkpoint is {s.last_ckpt}" if s.last_ckpt else "no checkpoint was saved"
        raise NonFiniteLossError(
            f"training diverged: {st.consecutive_skips} consecutive steps (up to step {st.step}) had a "
            f"non-finite loss or gradient norm, so nothing was updated; {where}. Lower train.lr, "
            "raise train.warmup_steps or set train.grad_clip, and start a new run"
        )


def run_eval(s: Session) -> None:
    tc, st, say = s.tc, s.state, s.progress.say
    with torch.random.fork_rng(devices=s.rng_devices):  # evaluation never moves the training RNG
        r = evaluate(s.model, s.splits.val, s.cfg.seq_len, tc.batch_size, tc.eval_batches,
                     s.splits.val_bytes_per_token, autocast=autocast_ctx(s.device, s.bf16) if s.bf16 else None,
                     doc_separator=s.splits.doc_separator)
    # a non-finite validation is logged (and checkpointed) as null, as a non-finite training
    # loss is, and never becomes the best one; JSON has no NaN
    st.last_val = {"step": st.step, "val_loss": finite_or_none(r["loss"]), "val_bpb": finite_or_none(r["bpb"]),
                   "val_ppl": finite_or_none(r["ppl"])}
    if st.last_val["val_loss"] is not None:
        st.best_val_loss = r["loss"] if st.best_val_loss is None else min(st.best_val_loss, r["loss"])
    s.metrics.write({**st.last_val, "elapsed_s": st.elapsed()})
    if st.last_val["val_loss"] is None:
        say(f"step {st.step}: validation loss is not finite ({r['loss']}); logged as null")
    else:
        say(f"step {st.step}: val_loss {r['loss']:.4f} | val_bpb {r['bpb']:.4f} | val_ppl {r['ppl']:.2f}")


def run_sample(s: Session) -> None:
    with torch.random.fork_rng(devices=s.rng_devices):
        text = _sample(s.model, s.tokenizer, s.cfg, s.device, s.bf16)
    s.progress.say(f"---- sample at step {s.state.step} ----\n{s.tc.sample_prompt}{text}\n----")


def save(s: Session) -> None:
    """Checkpoint the run at its current step. A collective: every rank calls it."""
    st = s.state
    rngs = ddp.gather_objects(s.dinfo, ckpt_io.rng_state(s.device))
    full = ddp.full_state(s.model, s.optimizer) if s.fsdp else None
    s.last_saved = st.step
    if not s.dinfo.is_main:
        return
    st.sampler = s.sampler.state_dict()
    rng = {**rngs[0], "ranks": rngs} if s.dinfo.enabled else rngs[0]
    s.last_ckpt = ckpt_io.save_checkpoint(s.run_dir, st.step, model=s.model, optimizer=s.optimizer,
                                          trainer_state=st.to_dict(schedule_state(st.step, s.tc)), cfg=s.cfg,
                                          tokenizer=s.tokenizer, keep_last=s.tc.keep_last, rng=rng,
                                          log=s.progress.say, full_state=full, keep=_pre_decay(s))


def _pre_decay(s: Session) -> Callable[[int], bool] | None:
    """For a wsd run, pruning spares the newest checkpoint at or before the decay's start: the
    one an extension continues from."""
    start = decay_start(s.tc)
    if start is None:
        return None
    before = [x for x in ckpt_io.committed_steps(s.run_dir) + [s.state.step] if x <= start]
    return (lambda step: step == max(before)) if before else None


# ---- finish ------------------------------------------------------------------------------------


def finish(s: Session, stop: str) -> None:
    """End the run: a signal saves at once; any other stop validates, saves, and shows a sample."""
    st, tc = s.state, s.tc
    if stop == "signal":
        s.received = s.received or [signal.SIGTERM]  # another rank received it
        s.progress.say(f"received {signal.Signals(s.received[0]).name} at step {st.step}: "
                       "saving a checkpoint and stopping")
        if s.last_saved != st.step:
            save(s)
        return
    if stop == "max_minutes":
        s.progress.say(f"train.max_minutes={tc.max_minutes:g} reached at step {st.step} of {tc.max_steps}: "
                       "validating, saving a checkpoint and stopping")
    if s.every_rank and (st.last_val is None or st.last_val.get("step") != st.step):
        run_eval(s)
    if s.last_saved != st.step:
        save(s)
    if s.every_rank and not (tc.sample_every and st.step % tc.sample_every == 0 and st.step > s.start_step):
        run_sample(s)


def train(cfg: RunConfig | None, out_dir, resume=None, *, progress: bool = True,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train a model as ``cfg`` says and write the run folder ``out_dir``.

    ``resume``: None starts a new run (``out_dir`` must not hold one); ``"auto"`` continues the
    newest valid checkpoint in ``out_dir`` (or starts fresh if there is no run there); a path
    continues that checkpoint or run folder. On resume ``cfg`` may be None (use the saved config)
    or may change only the keys in ``resume.RESUMABLE_CHANGES``.

    The run folder's lock is held throughout (by rank 0 under torchrun): a second trainer on the
    same folder raises ``RunBusyError`` (a ``CheckpointError``) before anything is written.

    Raises ConfigError / DataError / CheckpointError before any work on bad input,
    NonFiniteLossError after ``MAX_CONSECUTIVE_SKIPS`` consecutive non-finite steps.
    """
    with training_lock(out_dir, log, enabled=ddp.from_env().is_main):
        return _train(cfg, out_dir, resume, progress=progress, log=log)


def _train(cfg: RunConfig | None, out_dir, resume, *, progress: bool, log: Callable[[str], None]) -> TrainResult:
    t_start = time.perf_counter()
    plan, device, bf16, tokenizer, splits, state = _prepare(cfg, out_dir, resume, log)
    if state.step >= plan.cfg.train.max_steps:
        log(f"{plan.checkpoint.name} is already at step {state.step} >= train.max_steps={plan.cfg.train.max_steps}; "
            "nothing to train (raise train.max_steps to extend the run)")
        return _result(state, plan.run_dir, "max_steps", None, plan.checkpoint, time.perf_counter() - t_start, 0.0)

    s = _build(plan, device, bf16, tokenizer, splits, state, progress, log)
    state.session_start = time.perf_counter()  # max_minutes and elapsed_s count from here
    stop = "max_steps"
    s.model.train()
    try:
        with stop_signals(s.received.append):
            while True:
                stop = after_step(s, train_step(s))
                if stop:
                    break
            finish(s, stop)
        ddp.barrier(s.dinfo)
    finally:
        s.progress.close()
        s.metrics.close()
        ddp.teardown(s.owns_group)

    done = state.step - s.start_step
    tok_s = done * s.tokens_per_step / s.train_time if s.train_time > 0 else 0.0
    return _result(state, plan.run_dir, stop, s.received[0] if stop == "signal" else None, s.last_ckpt,
                   time.perf_counter() - t_start, tok_s)


def _result(state: RunState, run_dir: Path, stopped_by: str, sig: int | None, ckpt: Path | None, seconds: float,
            tok_s: float) -> TrainResult:
    last = state.last_val or {}
    return TrainResult(step=state.step, val_loss=last.get("val_loss"), val_bpb=last.get("val_bpb"), seconds=seconds,
                       tokens_per_sec=tok_s, run_dir=run_dir, stopped_by=stopped_by, signal=sig,
                       skipped_steps=state.skipped_steps, checkpoint=ckpt, val_step=last.get("step"))


class _NullWriter:
    """Metrics sink for ranks other than 0."""

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _check_train_cfg(cfg: RunConfig) -> None:
    """Checks on top of ``cfg.validate()`` that depend on this machine, not on the config alone."""
    check_trackers(cfg)  # a missing extra is refused before any work

"""The training loop: ``train(cfg, out_dir)`` turns a config into a run folder.

Order of work: every input is checked (config, output folder, checkpoint, corpus, tokenizer,
device) before anything is written; then the loop runs until ``max_steps``, ``max_minutes`` or a
SIGTERM/SIGINT, and always ends with a committed checkpoint. Resuming restores weights,
optimizer, step, sampler position and RNG states, so on a CPU in fp32 the resumed loss curve is
bit-for-bit the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..config import ConfigError, RunConfig
from ..data import ChunkSampler, TokenSplits, load_corpus, split_tokens
from ..evaluation import evaluate
from ..generation import AutoregressiveWrapper
from ..model import Transformer
from ..tokenizers import build_tokenizer, load_tokenizer
from . import checkpoint as ckpt_io
from . import distributed as ddp
from .checkpoint import CheckpointError
from .device import autocast_ctx, resolve_device, resolve_precision
from .metrics import (MetricsWriter, finite_or_none, flops_per_token, format_duration, matmul_params, peak_flops,
                      truncate_metrics)
from .optim import build_optimizer, checkpoint_activations
from .resume import plan_run
from .schedule import lr_at, schedule_state

# A run stops with NonFiniteLossError after this many optimizer steps in a row were skipped
# because the loss or the gradient norm was NaN/inf.
MAX_CONSECUTIVE_SKIPS = 10
MIN_KEEP_LAST = 2
SAMPLE_TEMPERATURE = 0.8
LOG_SECONDS = 30.0  # without a progress bar, log at least this often (and every 10% of the run)


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


# ---- setup -------------------------------------------------------------------------------------


def forward_backward(model, micro_batches: list[torch.Tensor], bf16: bool, loss_chunk: int | None = 0) -> torch.Tensor:
    """Accumulate gradients over micro-batches (each (B, T+1)); returns the mean loss (0-dim).

    Each micro-batch's loss is divided by their number, so the gradient is that of the mean
    loss over all of them, the same as one batch of their concatenation. Under DDP only the
    last micro-batch all-reduces gradients. The model computes the loss itself (fp32, in
    ``loss_chunk`` rows at a time; see Transformer.loss), inside its forward, so DDP and
    compile see one module call.
    """
    n = len(micro_batches)
    total = None
    for i, batch in enumerate(micro_batches):
        device = batch.device
        with ddp.no_sync(model, last=i == n - 1):
            with autocast_ctx(device, bf16):
                loss = model(batch[:, :-1], targets=batch[:, 1:], loss_chunk=loss_chunk)
            (loss / n).backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total / n


def _sample(model, tokenizer, cfg: RunConfig, device: torch.device, bf16: bool) -> str:
    prompt = torch.tensor(tokenizer.encode(cfg.train.sample_prompt), dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed)
    wrapper = AutoregressiveWrapper(model)
    with autocast_ctx(device, bf16):
        out = wrapper.generate(prompt, cfg.train.sample_tokens, temperature=SAMPLE_TEMPERATURE, generator=gen,
                               truncate_prompt=True)
    return tokenizer.decode(out.tolist())


@contextlib.contextmanager
def _stop_signals(on_signal: Callable[[int], None]):
    """Route SIGTERM/SIGINT to ``on_signal`` for the duration (main thread only), then restore."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum, frame):
        if signum == signal.SIGINT and seen:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        seen.append(signum)
        on_signal(signum)

    seen: list[int] = []

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ---- the loop ---------------------------------------------------------------------------------


def train(cfg: RunConfig | None, out_dir, resume=None, *, progress: bool = True,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train a model as ``cfg`` says and write the run folder ``out_dir``.

    ``resume``: None starts a new run (``out_dir`` must not hold one); ``"auto"`` continues the
    newest valid checkpoint in ``out_dir`` (or starts fresh if there is no run there); a path
    continues that checkpoint or run folder. On resume ``cfg`` may be None (use the saved config)
    or may change only the keys in ``resume.RESUMABLE_CHANGES``.

    Raises ConfigError / DataError / CheckpointError before any work on bad input,
    NonFiniteLossError after ``MAX_CONSECUTIVE_SKIPS`` consecutive non-finite steps.
    """
    t_start = time.perf_counter()
    # ---- check everything before writing anything
    if cfg is not None:
        cfg = RunConfig.from_dict(cfg.to_dict())  # never mutate the caller's config
        cfg.validate()
        _check_train_cfg(cfg)
    plan = plan_run(cfg, out_dir, resume, log)
    cfg, run_dir, resume_from = plan.cfg, plan.run_dir, plan.checkpoint
    cfg.validate()
    _check_train_cfg(cfg)
    tc = cfg.train
    device = resolve_device(tc.device)
    bf16 = resolve_precision(tc.precision, device)
    dinfo = ddp.from_env()
    fsdp = dinfo.enabled and tc.distributed == "fsdp"

    corpus = load_corpus(cfg.data.path)
    corpus_id = {"sha256": hashlib.sha256(corpus).hexdigest(), "bytes": len(corpus)}
    if resume_from is not None:
        try:
            tokenizer = load_tokenizer(resume_from / "tokenizer.json")
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot load the tokenizer of {resume_from}: {e}") from None
    else:
        tokenizer = build_tokenizer(cfg.data.tokenizer, corpus, cfg.data.bpe_vocab_size)
    cfg.model.vocab_size = tokenizer.vocab_size
    seq_len = cfg.seq_len
    splits: TokenSplits = split_tokens(corpus, tokenizer, cfg.data.val_fraction, seq_len + 1)
    del corpus
    if not tokenizer.encode(tc.sample_prompt):
        raise ConfigError("train.sample_prompt encodes to no tokens; give at least one character (default '\\n')")

    state = ckpt_io.read_trainer_state(resume_from) if resume_from is not None else {}
    start_step = int(state.get("step", 0))
    if resume_from is not None:
        saved_corpus = state.get("corpus") or {}
        if saved_corpus and saved_corpus.get("sha256") != corpus_id["sha256"]:
            log(f"warning: the corpus ({cfg.data.path or 'built-in'}) differs from the one this run was trained on "
                f"({saved_corpus.get('bytes')} bytes then, {corpus_id['bytes']} now); training continues on the "
                "new text, so the resumed run will not repeat the original batches")
        if start_step >= tc.max_steps:
            log(f"{resume_from.name} is already at step {start_step} >= train.max_steps={tc.max_steps}; "
                "nothing to train (raise train.max_steps to extend the run)")
            last = state.get("last_val") or {}
            return TrainResult(step=start_step, val_loss=last.get("val_loss"), val_bpb=last.get("val_bpb"),
                               seconds=time.perf_counter() - t_start, tokens_per_sec=0.0, run_dir=run_dir,
                               stopped_by="max_steps", skipped_steps=int(state.get("skipped_steps", 0)),
                               checkpoint=resume_from)

    # ---- model, optimizer, sampler; restored from the checkpoint before any write
    device, owns_group = ddp.setup(dinfo, device)
    model = Transformer(cfg.model)
    if resume_from is None:
        model.init_weights(torch.Generator().manual_seed(tc.seed))
        torch.manual_seed(tc.seed + dinfo.rank)  # dropout draws from the global generator, per rank
    model.to(device)
    if tc.activation_checkpointing:
        checkpoint_activations(model)
    optimizer = build_optimizer(model, tc, device)
    sampler = ChunkSampler(splits.train, seq_len, tc.batch_size, tc.seed, dinfo.rank, dinfo.world_size)
    if resume_from is not None:
        ckpt_io.load_weights(model, resume_from, device=device)
        ckpt_io.load_optimizer(optimizer, resume_from, device=device, model=model)
    if fsdp:  # shard the restored model, then rebuild the optimizer over the shards with the same state
        moments = ddp.optimizer_state_by_name(model, optimizer) if resume_from is not None else None
        ddp.shard(model)
        optimizer = build_optimizer(model, tc, device)
        if moments is not None:
            ddp.load_full_optimizer_state(model, optimizer, moments)
    if resume_from is not None:
        rng = ckpt_io.load_rng(resume_from)
        try:
            sampler.load_state_dict(state["sampler"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{resume_from / 'trainer_state.json'} has no usable sampler state: {e}") from None
        ranks = rng.get("ranks") or []
        if dinfo.enabled and len(ranks) != dinfo.world_size:
            log(f"checkpoint has RNG states for {len(ranks) or 1} rank(s), this run has {dinfo.world_size}: "
                "dropout will not repeat the original run exactly")
        ckpt_io.restore_rng(ranks[dinfo.rank] if dinfo.rank < len(ranks) else rng, device, log)
    fwd = model if fsdp else ddp.wrap(model, dinfo, device)
    fwd = torch.compile(fwd) if tc.compile else fwd

    # ---- write the run folder (rank 0 only, once every rank has checked its inputs)
    ddp.barrier(dinfo)
    metrics_path = run_dir / "metrics.jsonl"
    if dinfo.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.to_yaml(run_dir / "config.yaml")
        tokenizer.save(run_dir / "tokenizer.json")
        if resume_from is not None and resume_from.parent.parent.resolve() == run_dir.resolve():
            dropped = truncate_metrics(metrics_path, start_step)
            if dropped:
                log(f"metrics.jsonl: dropped {dropped} line(s) after step {start_step}; they are recomputed now")
    metrics = MetricsWriter(metrics_path) if dinfo.is_main else _NullWriter()

    step = start_step
    skipped = int(state.get("skipped_steps", 0))
    consecutive = int(state.get("consecutive_skips", 0))
    tokens_seen = int(state.get("tokens_seen", 0))
    elapsed0 = float(state.get("elapsed_s", 0.0))
    best_val = state.get("best_val_loss")
    last_val = state.get("last_val")
    last_saved = start_step if resume_from is not None else None
    last_ckpt = resume_from
    tokens_per_step = tc.batch_size * tc.grad_accum * seq_len * dinfo.world_size
    peak = peak_flops(device, "bf16" if bf16 else "fp32")
    fpt = flops_per_token(cfg.model, matmul_params(model), seq_len)
    params = [p for p in model.parameters() if p.requires_grad]
    clip = tc.grad_clip if tc.grad_clip > 0 else math.inf
    rng_devices = [device] if device.type == "cuda" else []

    # evaluation and samples run on rank 0, or on every rank when the model is sharded (its
    # forward gathers parameters from all ranks); only rank 0 reports them
    every_rank = dinfo.is_main or fsdp
    show_bar = progress and tc.progress and dinfo.is_main
    if not dinfo.is_main:
        log = lambda m: None  # noqa: E731  (rank 0 speaks for the run)
    bar = tqdm(total=tc.max_steps, initial=start_step, disable=not show_bar, dynamic_ncols=True, unit="step")
    say = (lambda m: bar.write(m)) if show_bar and log is print else log
    every_log = max(1, round(tc.max_steps / 10))
    last_log = time.perf_counter()

    received: list[int] = []

    def run_eval() -> None:
        nonlocal best_val, last_val
        with torch.random.fork_rng(devices=rng_devices):  # evaluation never moves the training RNG
            r = evaluate(model, splits.val, seq_len, tc.batch_size, tc.eval_batches, splits.val_bytes_per_token,
                         autocast=autocast_ctx(device, bf16) if bf16 else None)
        # a non-finite validation is logged (and checkpointed) as null, as a non-finite training
        # loss is, and never becomes the best one; JSON has no NaN
        last_val = {"step": step, "val_loss": finite_or_none(r["loss"]), "val_bpb": finite_or_none(r["bpb"]),
                    "val_ppl": finite_or_none(r["ppl"])}
        if last_val["val_loss"] is not None:
            best_val = r["loss"] if best_val is None else min(best_val, r["loss"])
        metrics.write({**last_val, "elapsed_s": elapsed()})
        if last_val["val_loss"] is None:
            say(f"step {step}: validation loss is not finite ({r['loss']}); logged as null")
        else:
            say(f"step {step}: val_loss {r['loss']:.4f} | val_bpb {r['bpb']:.4f} | val_ppl {r['ppl']:.2f}")

    def run_sample() -> None:
        with torch.random.fork_rng(devices=rng_devices):
            text = _sample(model, tokenizer, cfg, device, bf16)
        say(f"---- sample at step {step} ----\n{tc.sample_prompt}{text}\n----")

    def save() -> None:
        nonlocal last_saved, last_ckpt
        rngs = ddp.gather_objects(dinfo, ckpt_io.rng_state(device))  # a collective: every rank calls save()
        full = ddp.full_state(model, optimizer) if fsdp else None  # a collective too
        last_saved = step
        if not dinfo.is_main:
            return
        rng = {**rngs[0], "ranks": rngs} if dinfo.enabled else rngs[0]
        trainer_state = {
            "format": ckpt_io.FORMAT, "step": step, "sampler": sampler.state_dict(),
            "schedule": schedule_state(step, tc), "skipped_steps": skipped, "consecutive_skips": consecutive,
            "tokens_seen": tokens_seen, "elapsed_s": elapsed(), "best_val_loss": best_val, "last_val": last_val,
            "corpus": corpus_id,
        }
        last_ckpt = ckpt_io.save_checkpoint(run_dir, step, model=model, optimizer=optimizer,
                                            trainer_state=trainer_state, cfg=cfg, tokenizer=tokenizer,
                                            keep_last=tc.keep_last, rng=rng, log=say, full_state=full)

    t_session = time.perf_counter()

    def elapsed() -> float:
        return elapsed0 + time.perf_counter() - t_session

    stopped_by = "max_steps"
    train_time = 0.0
    tok_s_avg = None
    model.train()
    try:
        with _stop_signals(received.append):
            while step < tc.max_steps:
                t0 = time.perf_counter()
                lr = lr_at(step + 1, tc)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                batches = [_to_device(sampler.next_batch(), device) for _ in range(tc.grad_accum)]
                loss_t = forward_backward(fwd, batches, bf16, cfg.train.loss_chunk)
                norm_t = torch.nn.utils.clip_grad_norm_(params, clip)
                out_of_time = tc.max_minutes is not None and time.perf_counter() - t_session >= tc.max_minutes * 60
                # one host sync per step; under DDP one all-reduce makes every decision unanimous
                loss, any_signal, any_timeout = ddp.reduce_step(dinfo, loss_t, bool(received), out_of_time)
                norm = ddp.grad_norm_value(norm_t)
                ok = math.isfinite(loss) and math.isfinite(norm)
                if ok:
                    optimizer.step()
                    consecutive = 0
                else:
                    skipped += 1
                    consecutive += 1
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens_seen += tokens_per_step
                dt = time.perf_counter() - t0
                train_time += dt
                tok_s = tokens_per_step / dt if dt > 0 else 0.0
                tok_s_avg = tok_s if tok_s_avg is None else 0.9 * tok_s_avg + 0.1 * tok_s
                metrics.write({
                    "step": step, "loss": finite_or_none(loss), "lr": lr, "grad_norm": finite_or_none(norm),
                    "tokens_per_sec": tok_s, "elapsed_s": elapsed(),
                    "mfu": fpt * tok_s / peak if peak else None, "tokens": tokens_seen, "skipped": not ok,
                })
                if not ok:
                    say(f"step {step}: non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} "
                        f"(loss={loss}, grad_norm={norm}); optimizer step skipped "
                        f"({consecutive} in a row, {skipped} in all)")
                    if consecutive >= MAX_CONSECUTIVE_SKIPS:
                        where = f"the last committed checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was saved"
                        raise NonFiniteLossError(
                            f"training diverged: {consecutive} consecutive steps (up to step {step}) had a "
                            f"non-finite loss or gradient norm, so nothing was updated; {where}. Lower train.lr, "
                            "raise train.warmup_steps or set train.grad_clip, and start a new run"
                        )
                eta = (tc.max_steps - step) * train_time / max(1, step - start_step)
                if show_bar:
                    bar.update(1)
                    bar.set_postfix_str(f"loss {loss:.4f} | {tok_s_avg:,.0f} tok/s | lr {lr:.2e}", refresh=False)
                elif step % every_log == 0 or step == tc.max_steps or time.perf_counter() - last_log >= LOG_SECONDS:
                    last_log = time.perf_counter()
                    log(f"step {step}/{tc.max_steps} | loss {loss:.4f} | lr {lr:.2e} | {tok_s_avg:,.0f} tok/s "
                        f"| eta {format_duration(eta)}")
                if tc.eval_every and step % tc.eval_every == 0 and every_rank:
                    run_eval()
                if tc.sample_every and step % tc.sample_every == 0 and every_rank:
                    run_sample()
                stop = None
                if any_signal:
                    stop = "signal"
                elif any_timeout:
                    stop = "max_minutes"
                elif step >= tc.max_steps:
                    stop = "max_steps"
                # a run that ends here validates first and then saves, so the last checkpoint holds its val loss
                if tc.ckpt_every and step % tc.ckpt_every == 0 and stop in (None, "signal"):
                    save()
                if stop:
                    stopped_by = stop
                    break

            if stopped_by == "signal":
                received = received or [signal.SIGTERM]  # another rank received it
                name = signal.Signals(received[0]).name
                say(f"received {name} at step {step}: saving a checkpoint and stopping")
                if last_saved != step:
                    save()
            else:
                if every_rank and (last_val is None or last_val.get("step") != step):
                    run_eval()
                if last_saved != step:
                    save()
                if every_rank and not (tc.sample_every and step % tc.sample_every == 0 and step > start_step):
                    run_sample()
        ddp.barrier(dinfo)
    finally:
        bar.close()
        metrics.close()
        ddp.teardown(owns_group)

    seconds = time.perf_counter() - t_start
    done = step - start_step
    return TrainResult(
        step=step,
        val_loss=last_val["val_loss"] if last_val else None,
        val_bpb=last_val["val_bpb"] if last_val else None,
        seconds=seconds,
        tokens_per_sec=done * tokens_per_step / train_time if train_time > 0 else 0.0,
        run_dir=run_dir,
        stopped_by=stopped_by,
        signal=received[0] if stopped_by == "signal" else None,
        skipped_steps=skipped,
        checkpoint=last_ckpt,
    )


def _to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host batch to the device; on CUDA through pinned memory so the copy overlaps compute."""
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


class _NullWriter:
    """Metrics sink for ranks other than 0."""

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _check_train_cfg(cfg: RunConfig) -> None:
    """Trainer-specific checks on top of ``cfg.validate()``."""
    if cfg.train.keep_last < MIN_KEEP_LAST:
        raise ConfigError(
            f"train.keep_last={cfg.train.keep_last}: keep at least {MIN_KEEP_LAST} checkpoints, so a corrupt "
            "newest one always has a committed one to fall back to"
        )

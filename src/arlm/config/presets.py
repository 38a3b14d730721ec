"""Presets: a small table of starting points. Values not named keep the dataclass defaults."""

from __future__ import annotations

import copy
from typing import Any

from .checks import ConfigError
from .run import RunConfig


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # CI-sized: seconds on a CPU.
    "tiny": {
        "model": dict(max_seq_len=32, dim=32, depth=2, heads=2, pos_emb="rotary"),
        "data": dict(),
        "train": dict(batch_size=4, max_steps=20, lr=3e-3, min_lr=3e-4, warmup_steps=2,
                      eval_every=10, eval_batches=2, ckpt_every=10, sample_tokens=16),
    },
    # The README demo: a few minutes on 2 CPU cores, byte-level, on the built-in corpus.
    "default": {
        "model": dict(max_seq_len=128, dim=192, depth=4, heads=6, pos_emb="rotary"),
        "data": dict(),
        # ~6,000 tokens/s on 2 cores: 700 steps of 2,048 tokens take about 4 minutes; the time
        # cap only guards slower machines (the schedule then stops part-way)
        "train": dict(batch_size=16, max_steps=700, max_minutes=8.0, lr=2e-3, min_lr=2e-4,
                      warmup_steps=50, beta2=0.99, eval_every=175, eval_batches=20,
                      sample_every=350, ckpt_every=350),
    },
    # x-transformers' enwik8 example (train_enwik8.py).
    "enwik8": {
        "model": dict(max_seq_len=1024, dim=512, depth=6, heads=8, dim_head=64, pos_emb="rotary"),
        "data": dict(),
        "train": dict(batch_size=4, grad_accum=4, max_steps=100_000, optimizer="adam", lr=1e-4,
                      min_lr=1e-4, warmup_steps=0, schedule="constant", weight_decay=0.0,
                      beta2=0.999, grad_clip=0.5, eval_every=100, eval_batches=1,
                      sample_every=500, ckpt_every=1000),
    },
    # nanoGPT's shakespeare-char recipe (config/train_shakespeare_char.py).
    "shakespeare-char": {
        "model": dict(max_seq_len=256, dim=384, depth=6, heads=6, pos_emb="absolute",
                      emb_dropout=0.2, attn_dropout=0.2, ff_dropout=0.2),
        "data": dict(),
        "train": dict(batch_size=64, max_steps=5000, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                      beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_every=250,
                      eval_batches=200, ckpt_every=1000),
    },
    # GPT-2 small (124M): BPE vocabulary padded to a multiple of 64 (50257 -> 50304).
    "gpt2-small": {
        "model": dict(max_seq_len=1024, dim=768, depth=12, heads=12, pos_emb="absolute",
                      tie_embedding=True, vocab_pad_multiple=64),
        "data": dict(tokenizer="bpe", bpe_vocab_size=50257),
        "train": dict(batch_size=12, grad_accum=40, max_steps=600_000, lr=6e-4, min_lr=6e-5,
                      warmup_steps=2000, weight_decay=0.1, beta2=0.95, grad_clip=1.0,
                      eval_every=1000, eval_batches=200, ckpt_every=1000),
    },
}


def preset(name: str) -> RunConfig:
    """A fresh ``RunConfig`` for a named preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return RunConfig.from_dict(copy.deepcopy(PRESETS[name]))

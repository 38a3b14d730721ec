"""``arlm presets``: the named starting configurations, one line each."""

from __future__ import annotations

import argparse

from arlm.config import PRESETS, RunConfig, preset

from .common import out

DESCRIPTIONS = {
    "tiny": "CI-sized; trains in seconds on a CPU",
    "default": "the README demo: a few minutes on 2 CPU cores, byte-level, built-in corpus",
    "enwik8": "x-transformers' enwik8 example (Adam 1e-4, batch 4 x accumulation 4, clip 0.5)",
    "shakespeare-char": "nanoGPT's shakespeare-char recipe (dropout 0.2, lr 1e-3 -> 1e-4)",
    "gpt2-small": "GPT-2 small (124M), BPE 50257 padded to 50304, context 1024",
}

COLUMNS = ("name", "params", "dim", "depth", "heads", "context", "tokenizer", "batch", "steps", "description")


def presets(args: argparse.Namespace) -> int:
    """List the presets with their sizes; `arlm config --preset NAME` prints one in full.

    params counts every weight, embeddings included; for BPE presets the vocabulary is taken
    as data.bpe_vocab_size (the trained tokenizer may end up slightly smaller).
    batch is sequences per optimizer step: batch_size x grad_accum.
    """
    rows = [preset_row(name) for name in PRESETS]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    out(fmt.format(*COLUMNS))
    for r in rows:
        out(fmt.format(*r))
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def preset_row(name: str) -> tuple[str, ...]:
    """The table row of one preset (strings, in ``COLUMNS`` order)."""
    cfg = preset(name)
    m, t = cfg.model, cfg.train
    return (name, _human(count_params(cfg)), str(m.dim), str(m.depth), str(m.heads), str(cfg.seq_len),
            cfg.data.tokenizer, f"{t.batch_size}x{t.grad_accum}", f"{t.max_steps:,}",
            DESCRIPTIONS.get(name, "-"))


def count_params(cfg: RunConfig) -> int:
    """Parameters of the preset's model, counted on the meta device (no memory, no init)."""
    import copy

    import torch

    from arlm.model import Transformer

    mcfg = copy.deepcopy(cfg.model)
    if cfg.data.tokenizer == "bpe":
        mcfg.vocab_size = cfg.data.bpe_vocab_size
    with torch.device("meta"):
        return Transformer(mcfg).num_params()


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)

"""A lower bound on the memory a config needs, checked by ``validate()`` so an impossible size
(``model.max_seq_len 100000000``, a trillion-row vocabulary, a batch of 2**40 rows) is a
ConfigError naming the field before any work starts, not a process killed for memory or an
allocation traceback halfway through a run.

Only what the model and one training step cannot do without is counted (fp32 weights and the
position tables built beside them; for training their gradients and the activations one batch
keeps for the backward pass, and the end-of-run sample's token history), so the estimate stays
below the true need and nothing that fits is refused. It is compared with the machine's
physical memory (for training, plus the accelerators' memory); the model's weights alone must
fit in host memory, where they are built.
"""

from __future__ import annotations

import os

from .checks import ConfigError

FP32 = 4  # bytes per parameter, table entry and activation
COMPLEX64 = 8


def physical_memory() -> int | None:
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def accelerator_memory() -> int:
    """Bytes of memory on the visible CUDA devices (0 without CUDA)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return 0
        return sum(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
    except Exception:  # no torch, a broken driver: count the host only
        return 0


def shape_parts(m) -> list[tuple[str, float, tuple[str, ...]]]:
    """A cruder bound that reads only the sizes (not the layer layout, which is ``depth`` long):
    the token embedding and at least one ``dim``-wide weight row per layer."""
    return [("the token embedding", m.padded_vocab * m.embed_dim * FP32, ("model.vocab_size", "model.dim",
                                                                          "model.emb_dim", "model.vocab_pad_multiple")),
            ("the layers", m.depth * m.dim * FP32, ("model.depth", "model.dim"))]


def model_parts(m) -> list[tuple[str, float, tuple[str, ...]]]:
    """(what, bytes, the fields that set its size) for the weights and tables a model builds."""
    E, C, D = m.embed_dim, m.dim, m.head_dim
    P = m.max_seq_len + m.num_memory_tokens  # positions the relative tables cover
    shape = ("model.dim", "model.depth", "model.layers")
    parts = shape_parts(m)[:1]
    if not (m.tie_embedding or m.return_only_embed):
        parts.append(("the output head", m.num_output_heads * m.n_logits * C * FP32,
                      ("model.vocab_size", "model.logits_dim", "model.num_output_heads", "model.dim")))
    if m.token_pos_emb == "absolute":
        parts.append(("the absolute position table", m.max_seq_len * E * FP32, ("model.max_seq_len", "model.dim")))
    if m.pos_emb == "rotary":  # one complex rotation per position and pair (and an xPos scale)
        per = D // 2 * (COMPLEX64 + (FP32 if m.rotary_xpos else 0))
        parts.append(("the rotary table", P * per, ("model.max_seq_len", "model.num_memory_tokens")))
    if m.pos_emb == "polar":
        parts.append(("the polar phase table", P * D * FP32, ("model.max_seq_len", "model.num_memory_tokens")))
    types = m.layer_types
    n_attn, n_ff = types.count("a"), types.count("f")
    qkvo = C * D * (2 * m.heads + m.n_kv_heads) + m.heads * m.value_head_dim * (C + m.n_kv_heads)
    parts.append(("the attention weights", n_attn * qkvo * FP32,
                  shape + ("model.heads", "model.dim_head", "model.kv_heads", "model.attn_value_dim_head")))
    # in floats: dim * ff_mult may pass any integer (ff_mult 1e300)
    parts.append(("the feed-forward weights", n_ff * float(C) * C * m.ff_mult * (3 if m.ff_glu else 2) * FP32,
                  shape + ("model.ff_mult",)))
    if m.num_memory_tokens:
        parts.append(("the memory tokens", m.num_memory_tokens * C * FP32, ("model.num_memory_tokens",)))
    if m.attn_num_mem_kv:
        parts.append(("the memory key-values", n_attn * 2 * m.heads * m.attn_num_mem_kv * D * FP32,
                      ("model.attn_num_mem_kv",)))
    if m.embed_num_tokens:
        rows = sum(int(v) for v in m.embed_num_tokens.values())
        parts.append(("the extra embedding tables", rows * E * FP32, ("model.embed_num_tokens",)))
    return parts


def run_parts(cfg) -> list[tuple[str, float, tuple[str, ...]]]:
    """The model's parts, their gradients, one micro-batch's saved activations and the sample."""
    m, t = cfg.model, cfg.train
    parts = model_parts(m)
    weights = sum(b for _, b, _ in parts)
    parts.append(("their gradients", weights, ()))
    # every residual branch keeps at least its (B, T, C) input for the backward pass (with
    # activation checkpointing every block keeps its input: at least one per two branches)
    kept = len(m.layer_types) if not t.activation_checkpointing else max(1, len(m.layer_types) // 2)
    parts.append(("one batch's activations", t.batch_size * cfg.seq_len * m.dim * kept * FP32,
                  ("train.batch_size", "data.seq_len", "model.max_seq_len", "model.dim", "model.depth")))
    parts.append(("the sample's token history", (t.sample_tokens + m.max_seq_len) * 8, ("train.sample_tokens",)))
    return parts


def check_memory(parts: list[tuple[str, float, tuple[str, ...]]], values: dict, subject: str = "the model") -> None:
    """ConfigError when the parts together exceed this machine's memory, naming the fields behind
    the largest part and their values (``values``: dotted key -> value). A model is built in host
    memory; training may also use the accelerators' memory, so its limit is both together."""
    limit = physical_memory()
    total = sum(b for _, b, _ in parts)
    if limit is None or total <= limit:
        return
    if subject != "the model":
        limit += accelerator_memory()
        if total <= limit:
            return
    what, size, keys = max((p for p in parts if p[2]), key=lambda p: p[1])
    keys = [k for k in keys if values.get(k) not in (None, 0)] or [k for k in keys if k in values]
    named = ", ".join(f"{k}={values[k]}" for k in keys)
    raise ConfigError(f"{named}: {subject} needs at "
                      f"least {_gib(total)} of memory ({what}: {_gib(size)}), more than this machine's "
                      f"{_gib(limit)}; lower {' or '.join(keys)}")


def values_of(obj, section: str) -> dict:
    """``section.field`` -> value for a config section (for naming fields in the message)."""
    import dataclasses

    return {f"{section}.{f.name}": getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**70 else f"{n / 2**30:.3g} GiB"

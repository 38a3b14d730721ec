"""Which Hugging Face transformers architecture expresses an arlm ``ModelConfig``, both ways.

``from_hf(config)`` reads a transformers config (GPT-2 or the Llama family) as the ``ModelConfig``
that computes the same function; ``to_hf(cfg)`` picks the architecture for an arlm config and
writes its transformers config. Export checks its choice by reading that config back with
``from_hf`` and comparing every ``ModelConfig`` field with the run's own: a field that differs
(beyond what the weight mapping absorbs: biases filled with zeros, a scaled tied embedding written
as its own head, vocabulary padding cut off) is an option no architecture here expresses, and the
error names it. So a field added to ``ModelConfig`` later is refused until this file maps it.

Layouts the weight maps fix (hf.py, hf_import.py): arlm rotates adjacent pairs of each head's first
R dims and transformers rotates halves; arlm's query head h reads key/value head h % K, Llama's
reads h // (H / K). Both are permutations of weight rows and columns, so they are exact.
"""

from __future__ import annotations

import math
from dataclasses import fields

import torch

from ..config import ModelConfig

# arlm ff_activation -> transformers' ACT2FN name (the exact same function)
TO_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "swish": "silu", "relu": "relu",
             "relu_squared": "relu2", "tanh": "tanh", "sigmoid": "sigmoid", "mish": "mish"}
# transformers' names -> arlm (gelu_new is GPT-2's tanh formula: the same values to float rounding)
FROM_HF_ACT = {**{v: k for k, v in TO_HF_ACT.items()}, "gelu_new": "gelu_tanh", "swish": "swish"}
LLAMA_FAMILY = ("llama", "mistral", "qwen2")
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM", "llama": "LlamaForCausalLM",
                 "mistral": "MistralForCausalLM"}
# the RMSNorm epsilon standing for arlm's l2-normalised RMSNorm (norm_eps None): x / ||x|| * sqrt(C)
# equals x * rsqrt(mean(x^2) + eps) to about eps / mean(x^2)
L2_RMS_EPS = 1e-12
# fields that act only in training or at initialisation: any value exports
_INERT = frozenset((
    "emb_dropout", "attn_dropout", "ff_dropout", "layer_dropout", "attn_sublayer_dropout", "ff_sublayer_dropout",
    "init_std", "zero_init_branch_output", "attn_zero_init_output", "attn_output_proj_depth", "ff_zero_init_output",
    "ff_output_proj_depth", "depth_scale_residual", "emb_frac_gradient", "norm_add_unit_offset",
))
# fields the weight maps absorb: the tied embedding (written as a head when scaled), padded rows (cut)
_ABSORBED = frozenset(("tie_embedding", "tie_embedding_scale", "vocab_pad_multiple"))
_BIASES = ("attn_bias", "norm_bias", "ff_bias", "ff_glu_bias")


def needs_transformers():
    """The transformers module (the 'hf' extra, version 5 or newer), or an ImportError saying what to install."""
    try:
        import transformers
    except ImportError:
        raise ImportError("Hugging Face export and import need the 'hf' extra: pip install 'arlm[hf]'") from None
    if int(transformers.__version__.split(".")[0]) < 5:
        # older configs keep rope_theta / rope_scaling elsewhere: a mapping here would be silently wrong
        raise ImportError(f"Hugging Face export and import need transformers 5 or newer (found "
                          f"{transformers.__version__}): pip install 'arlm[hf]'")
    return transformers


class HFConfigError(ValueError):
    """A config one side cannot express; the message names the option and what is allowed."""


def _base(c: ModelConfig) -> float:
    """The rotary base after "NTK-aware" rescaling (what transformers calls rope_theta)."""
    R = c.rotary_emb_dim
    if c.rotary_base_rescale_factor == 1:
        return c.rotary_base
    return c.rotary_base * c.rotary_base_rescale_factor ** (R / (R - 2))


def _eps(c: ModelConfig) -> float:
    if c.norm_eps is not None:
        return c.norm_eps
    return 1e-5 if c.norm == "layernorm" else L2_RMS_EPS


# fields compared by what they mean rather than how they are spelled (None = the derived default)
_EFFECTIVE = {
    "dim_head": lambda c: c.head_dim,
    "kv_heads": lambda c: c.n_kv_heads,
    "rotary_dim": lambda c: c.rotary_emb_dim if c.pos_emb == "rotary" else None,
    "rotary_base": lambda c: _base(c) if c.pos_emb == "rotary" else None,
    "rotary_base_rescale_factor": lambda c: _base(c) if c.pos_emb == "rotary" else None,
    "ff_mult": lambda c: c.ff_inner_dim,
    "norm_eps": _eps,
    "attn_value_dim_head": lambda c: c.value_head_dim,
    "attn_project_out": lambda c: c.attn_project_out is not False,
    "emb_dim": lambda c: c.embed_dim,
    "logits_dim": lambda c: c.n_logits,
    # a window reaching back over the whole context hides nothing
    "max_attend_past": lambda c: (c.max_attend_past if (c.max_attend_past or c.max_seq_len) < c.max_seq_len - 1
                                  else None),
}


def _biases(c: ModelConfig) -> dict[str, bool]:
    """Which projections have biases: attention, norms, the feed-forward output, its input."""
    return {"attn_bias": c.attn_bias, "norm_bias": c.norm_bias, "ff_bias": c.ff_bias,
            "ff_glu_bias": c.ff_bias or (c.ff_glu and c.ff_glu_bias)}


def unexpressed(cfg: ModelConfig, ref: ModelConfig) -> list[str]:
    """Fields of ``cfg`` that ``ref`` (an architecture read back as arlm) computes differently,
    as 'model.FIELD=VALUE (ARCH needs VALUE)' phrases without the architecture."""
    problems = []
    mine, theirs = _biases(cfg), _biases(ref)
    for f in fields(ModelConfig):
        name = f.name
        if name in _INERT or name in _ABSORBED:
            continue
        if name in _BIASES:  # fewer biases than the architecture has: the rest are written as zeros
            if mine[name] and not theirs[name]:
                problems.append(f"model.{name}=true (needs false)")
            continue
        if name == "per_layer":
            varying = sorted(set(cfg.per_layer or {}) - _INERT)
            if varying:
                problems.append(f"model.per_layer varies {', '.join(varying)} (needs one value for every layer)")
            continue
        get = _EFFECTIVE.get(name, lambda c, n=name: getattr(c, n))
        a, b = get(cfg), get(ref)
        same = math.isclose(a, b, rel_tol=1e-9) if isinstance(a, float) and isinstance(b, float) else a == b
        if not same:
            problems.append(f"model.{name}={getattr(cfg, name)!r} (needs {getattr(ref, name)!r})")
    return problems


def _ratio(n: int, d: int) -> float:
    """A float r with int(d * r) exactly n, as ff_mult and partial_rotary_factor are used (n / d
    can round below)."""
    r = n / d
    while int(d * r) < n:
        r = math.nextafter(r, math.inf)
    return r


def _activation(name: str, field: str) -> str:
    if name not in FROM_HF_ACT:
        raise HFConfigError(f"{field}={name!r} has no exact arlm activation; supported: "
                            f"{', '.join(sorted(FROM_HF_ACT))}")
    return FROM_HF_ACT[name]


def _refuse(model_type: str, **settings) -> None:
    """Refuse transformers settings arlm cannot compute: name -> (value, allowed values)."""
    bad = [f"{k}={v!r} (arlm computes {allowed})" for k, (v, allowed) in settings.items() if v not in allowed]
    if bad:
        raise HFConfigError(f"this {model_type} config has settings arlm does not compute: {'; '.join(bad)}")


def from_hf(hf, max_seq_len: int | None = None) -> ModelConfig:
    """The ``ModelConfig`` computing what the transformers config ``hf`` (a PretrainedConfig or
    anything with its attributes) computes. ``max_seq_len`` shortens the context (the default is
    the model's whole ``max_position_embeddings`` / ``n_positions``, which sizes the KV cache)."""
    kind = getattr(hf, "model_type", None)
    if kind == "gpt2":
        _refuse("gpt2", scale_attn_weights=(hf.scale_attn_weights, (True,)),
                scale_attn_by_inverse_layer_idx=(hf.scale_attn_by_inverse_layer_idx, (False,)),
                add_cross_attention=(hf.add_cross_attention, (False,)))
        inner = hf.n_inner if hf.n_inner is not None else 4 * hf.n_embd
        tied = bool(hf.tie_word_embeddings)
        cfg = ModelConfig(
            vocab_size=hf.vocab_size, max_seq_len=_context(hf.n_positions, max_seq_len), dim=hf.n_embd,
            depth=hf.n_layer, heads=hf.n_head, pos_emb="absolute", norm="layernorm", norm_bias=True,
            norm_eps=float(hf.layer_norm_epsilon), attn_bias=True, ff_bias=True,
            ff_activation=_activation(hf.activation_function, "activation_function"), ff_mult=_ratio(inner, hf.n_embd),
            tie_embedding=tied, tie_embedding_scale=1.0 if tied else None)
    elif kind == "gpt_neox":
        rope = dict(getattr(hf, "rope_parameters", None) or {})
        rope_type = rope.get("rope_type", "default")
        _refuse("gpt_neox", use_parallel_residual=(hf.use_parallel_residual, (False,)),
                **{"rope_parameters.rope_type": (rope_type, ("default", "linear"))})
        D = hf.hidden_size // hf.num_attention_heads
        tied = bool(hf.tie_word_embeddings)
        cfg = ModelConfig(
            vocab_size=hf.vocab_size, max_seq_len=_context(hf.max_position_embeddings, max_seq_len),
            dim=hf.hidden_size, depth=hf.num_hidden_layers, heads=hf.num_attention_heads, pos_emb="rotary",
            rotary_dim=int(D * rope.get("partial_rotary_factor", 1.0)),  # transformers' own rounding
            rotary_base=float(rope.get("rope_theta", 10000.0)),
            rotary_interpolation_factor=float(rope.get("factor", 1.0)) if rope_type == "linear" else 1.0,
            norm="layernorm", norm_bias=True, norm_eps=float(hf.layer_norm_eps), attn_bias=bool(hf.attention_bias),
            ff_bias=True, ff_activation=_activation(hf.hidden_act, "hidden_act"),
            ff_mult=_ratio(hf.intermediate_size, hf.hidden_size), tie_embedding=tied,
            tie_embedding_scale=1.0 if tied else None)
    elif kind in LLAMA_FAMILY:
        rope = dict(getattr(hf, "rope_parameters", None) or {})
        rope_type = rope.get("rope_type", "default")
        window = getattr(hf, "sliding_window", None) if kind == "mistral" else None
        context = _context(hf.max_position_embeddings, max_seq_len)
        if window is not None and window >= context:  # a window as long as the context hides nothing
            window = None
        _refuse(kind, **{"rope_parameters.rope_type": (rope_type, ("default", "linear")),
                         "rope_parameters.partial_rotary_factor": (rope.get("partial_rotary_factor", 1.0), (1.0,)),
                         # Qwen2 slides the window over some layers only
                         "use_sliding_window": (getattr(hf, "use_sliding_window", False), (False,))})
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        kv = hf.num_key_value_heads or hf.num_attention_heads
        tied = bool(hf.tie_word_embeddings)
        # Qwen2's query/key/value projections carry biases, its output projection none (a zero bias here)
        attn_bias = True if kind == "qwen2" else bool(getattr(hf, "attention_bias", False))
        mlp_bias = bool(getattr(hf, "mlp_bias", False))
        cfg = ModelConfig(
            vocab_size=hf.vocab_size, max_seq_len=context,
            dim=hf.hidden_size, depth=hf.num_hidden_layers, heads=hf.num_attention_heads,
            dim_head=head_dim if head_dim != hf.hidden_size // hf.num_attention_heads else None,
            kv_heads=kv if kv != hf.num_attention_heads else None, pos_emb="rotary", rotary_dim=head_dim,
            rotary_base=float(rope.get("rope_theta", 10000.0)),
            rotary_interpolation_factor=float(rope.get("factor", 1.0)) if rope_type == "linear" else 1.0,
            norm="rmsnorm", norm_eps=float(hf.rms_norm_eps), attn_bias=attn_bias, ff_glu=True,
            ff_activation=_activation(hf.hidden_act, "hidden_act"), ff_bias=mlp_bias, ff_glu_bias=False,
            ff_mult=_ratio(hf.intermediate_size, hf.hidden_size), max_attend_past=window - 1 if window else None,
            tie_embedding=tied, tie_embedding_scale=1.0 if tied else None)
    else:
        raise HFConfigError(f"model_type {kind!r} is not supported; arlm reads gpt2, gpt_neox and the Llama "
                            f"family ({', '.join(LLAMA_FAMILY)})")
    cfg.validate()
    return cfg


def _context(n_positions: int, max_seq_len: int | None) -> int:
    if max_seq_len is None:
        return n_positions
    if not 0 < max_seq_len <= n_positions:
        raise HFConfigError(f"--max-seq-len {max_seq_len} must be in [1, {n_positions}] (the model's context)")
    return max_seq_len


def _hf_config(cfg: ModelConfig, arch: str):
    """The transformers config of architecture ``arch`` closest to ``cfg`` (checked by the caller)."""
    transformers = needs_transformers()

    V, act = cfg.vocab_size, TO_HF_ACT.get(cfg.ff_activation, cfg.ff_activation)
    tied = cfg.tie_embedding and (cfg.tie_embedding_scale or cfg.dim**-0.5) == 1.0
    common = dict(vocab_size=V, tie_word_embeddings=tied, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if arch == "gpt2":
        return transformers.GPT2Config(
            n_positions=cfg.max_seq_len, n_embd=cfg.dim, n_layer=cfg.depth, n_head=cfg.heads,
            n_inner=cfg.ff_inner_dim, activation_function=act, layer_norm_epsilon=_eps(cfg), resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0, **common)
    rope = {"rope_type": "default", "rope_theta": _base(cfg)}
    if cfg.rotary_interpolation_factor != 1.0:
        rope = {"rope_type": "linear", "rope_theta": _base(cfg), "factor": cfg.rotary_interpolation_factor}
    if arch == "gpt_neox":  # sequential residual, LayerNorm, plain MLP, rotary on the first R dims
        rope["partial_rotary_factor"] = _ratio(cfg.rotary_emb_dim, cfg.head_dim)
        return transformers.GPTNeoXConfig(
            hidden_size=cfg.dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads,
            intermediate_size=cfg.ff_inner_dim, hidden_act=act, max_position_embeddings=cfg.max_seq_len,
            layer_norm_eps=_eps(cfg), use_parallel_residual=False, rope_parameters=rope, attention_bias=cfg.attn_bias,
            hidden_dropout=0.0, attention_dropout=0.0, **common)
    llama = dict(hidden_size=cfg.dim, intermediate_size=cfg.ff_inner_dim, num_hidden_layers=cfg.depth,
                 num_attention_heads=cfg.heads, num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
                 hidden_act=act, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=_eps(cfg), rope_parameters=rope,
                 **common)
    if arch == "mistral":  # Llama with a sliding window (its W keys include the query's own)
        window = cfg.max_attend_past + 1 if cfg.max_attend_past is not None else None
        return transformers.MistralConfig(sliding_window=window, **llama)
    return transformers.LlamaConfig(attention_bias=cfg.attn_bias, mlp_bias=_biases(cfg)["ff_glu_bias"], **llama)


def to_hf(cfg: ModelConfig):
    """(architecture, transformers config) expressing ``cfg`` exactly, or HFConfigError naming
    every option that keeps the closest architecture from it."""
    tried = []
    rotary = ("llama", "mistral", "gpt_neox")
    for arch in (*rotary, "gpt2") if cfg.pos_emb == "rotary" else ("gpt2", *rotary):
        try:
            hf = _hf_config(cfg, arch)
            problems = unexpressed(cfg, from_hf(hf, cfg.max_seq_len))
        except (HFConfigError, ValueError) as e:  # e.g. a shape the architecture cannot take
            problems = [str(e)]
        if not problems:
            return arch, hf
        tried.append((len(problems), arch, problems))
    _, arch, problems = min(tried)
    raise HFConfigError(
        f"no transformers architecture expresses this model exactly; the closest, {arch} "
        f"({ARCHITECTURES[arch]}), differs in: {'; '.join(problems)}. Export covers GPT-2 (learned absolute "
        "positions, LayerNorm, plain MLP), GPT-NeoX (rotary, LayerNorm, plain MLP), Llama (full-head rotary, "
        "RMSNorm, GLU feed-forward, grouped-query attention) and Mistral (Llama with a sliding window); train "
        "with those options to export")


def rotary_order(head_dim: int, rot_dim: int) -> torch.Tensor:
    """Row order taking arlm's rotary layout of one head to transformers': the adjacent pairs
    (2i, 2i+1) of the first R dims become (i, i + R/2); dims past R stay."""
    return torch.cat((torch.arange(0, rot_dim, 2), torch.arange(1, rot_dim, 2), torch.arange(rot_dim, head_dim)))


def llama_head_order(heads: int, kv_heads: int) -> torch.Tensor:
    """For each Llama query head j (reading KV head j // G, G = H / K), the arlm head that reads
    the same KV head: arlm's head h reads KV head h % K, so j = kv * G + g is arlm's g * K + kv."""
    G = heads // kv_heads
    j = torch.arange(heads)
    return (j % G) * kv_heads + j // G

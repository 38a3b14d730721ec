"""arlm -> Hugging Face transformers: a folder ``AutoModelForCausalLM.from_pretrained`` loads.

``export_hf(model, tokenizer, out_dir)`` writes config.json, generation_config.json and
model.safetensors through transformers' own ``save_pretrained`` (so the files are what it expects),
plus tokenizer.json and tokenizer_config.json for ``AutoTokenizer``. The architecture comes from
hf_config.py (GPT-2, GPT-NeoX, Llama or Mistral); a model neither expresses exactly is refused before anything is
written, naming the options in the way. Weights are permuted (rotary pairs to halves, grouped-query
heads to Llama's grouping), transposed (GPT-2's Conv1D), scaled (arlm's absolute positions and tied
logits carry a scale transformers does not) and padded with zero biases, all exactly.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .hf_config import HFConfigError, llama_head_order, needs_transformers, rotary_order, to_hf


def _bias(sd: dict, name: str, rows: int, like: torch.Tensor) -> torch.Tensor:
    """arlm's bias ``name``, or zeros where arlm has none (the architecture always has one)."""
    return sd[name] if name in sd else torch.zeros(rows, dtype=like.dtype)


def _embeddings(model, sd: dict, out: dict, wte: str, head: str, tied: bool) -> None:
    """Token embedding and head, cut to the vocabulary; a tied head scaled by arlm becomes its own."""
    cfg = model.cfg
    V = cfg.vocab_size
    out[wte] = sd["token_emb.weight"][:V]
    if "head.weight" in sd:
        out[head] = sd["head.weight"][:V]
    elif not tied:
        out[head] = sd["token_emb.weight"][:V] * model.tied_scale
    else:
        out[head] = out[wte]


def _gpt2(model, sd: dict, tied: bool) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    C, I = cfg.dim, cfg.ff_inner_dim
    out: dict[str, torch.Tensor] = {}
    _embeddings(model, sd, out, "transformer.wte.weight", "lm_head.weight", tied)
    out["transformer.wpe.weight"] = sd["pos_emb.emb.weight"] * model.pos_emb.scale  # arlm scales on the way out
    for i in range(cfg.depth):
        a, h = f"blocks.{i}.", f"transformer.h.{i}."
        qkv, o = sd[a + "attn.qkv.weight"], sd[a + "attn.out.weight"]
        fc, proj = sd[a + "ff.proj_in.weight"], sd[a + "ff.proj_out.weight"]
        # GPT-2's Conv1D stores (in, out): the transpose of a Linear weight
        out.update({
            h + "ln_1.weight": sd[a + "attn_norm.weight"], h + "ln_1.bias": _bias(sd, a + "attn_norm.bias", C, qkv),
            h + "attn.c_attn.weight": qkv.t(), h + "attn.c_attn.bias": _bias(sd, a + "attn.qkv.bias", 3 * C, qkv),
            h + "attn.c_proj.weight": o.t(), h + "attn.c_proj.bias": _bias(sd, a + "attn.out.bias", C, o),
            h + "ln_2.weight": sd[a + "ff_norm.weight"], h + "ln_2.bias": _bias(sd, a + "ff_norm.bias", C, fc),
            h + "mlp.c_fc.weight": fc.t(), h + "mlp.c_fc.bias": _bias(sd, a + "ff.proj_in.bias", I, fc),
            h + "mlp.c_proj.weight": proj.t(), h + "mlp.c_proj.bias": _bias(sd, a + "ff.proj_out.bias", C, proj),
        })
    out["transformer.ln_f.weight"] = sd["norm.weight"]
    out["transformer.ln_f.bias"] = _bias(sd, "norm.bias", C, sd["norm.weight"])
    return out


def _neox(model, sd: dict, tied: bool) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    C, I, H, D = cfg.dim, cfg.ff_inner_dim, cfg.heads, cfg.head_dim
    dims = rotary_order(D, cfg.rotary_emb_dim)
    out: dict[str, torch.Tensor] = {}
    _embeddings(model, sd, out, "gpt_neox.embed_in.weight", "lm_head.weight", tied)

    def fused(t):  # arlm's [queries; keys; values] -> NeoX's per head [q_h; k_h; v_h], rotate-half q and k
        q, k, v = (x.unflatten(0, (H, D)) for x in t.chunk(3))
        return torch.stack((q[:, dims], k[:, dims], v), dim=1).flatten(0, 2)

    for i in range(cfg.depth):
        a, h = f"blocks.{i}.", f"gpt_neox.layers.{i}."
        qkv, o = sd[a + "attn.qkv.weight"], sd[a + "attn.out.weight"]
        fc, proj = sd[a + "ff.proj_in.weight"], sd[a + "ff.proj_out.weight"]
        out.update({
            h + "input_layernorm.weight": sd[a + "attn_norm.weight"],
            h + "input_layernorm.bias": _bias(sd, a + "attn_norm.bias", C, qkv),
            h + "post_attention_layernorm.weight": sd[a + "ff_norm.weight"],
            h + "post_attention_layernorm.bias": _bias(sd, a + "ff_norm.bias", C, qkv),
            h + "attention.query_key_value.weight": fused(qkv), h + "attention.dense.weight": o,
            h + "mlp.dense_h_to_4h.weight": fc, h + "mlp.dense_h_to_4h.bias": _bias(sd, a + "ff.proj_in.bias", I, fc),
            h + "mlp.dense_4h_to_h.weight": proj,
            h + "mlp.dense_4h_to_h.bias": _bias(sd, a + "ff.proj_out.bias", C, proj),
        })
        if cfg.attn_bias:
            out[h + "attention.query_key_value.bias"] = fused(sd[a + "attn.qkv.bias"])
            out[h + "attention.dense.bias"] = sd[a + "attn.out.bias"]
    out["gpt_neox.final_layer_norm.weight"] = sd["norm.weight"]
    out["gpt_neox.final_layer_norm.bias"] = _bias(sd, "norm.bias", C, sd["norm.weight"])
    return out


def _llama(model, sd: dict, tied: bool, mlp_bias: bool) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    C, I, H, K, D = cfg.dim, cfg.ff_inner_dim, cfg.heads, cfg.n_kv_heads, cfg.head_dim
    heads, dims = llama_head_order(H, K), rotary_order(D, cfg.rotary_emb_dim)
    out: dict[str, torch.Tensor] = {}
    _embeddings(model, sd, out, "model.embed_tokens.weight", "lm_head.weight", tied)

    def q_rows(t):  # (H*D, ...) -> Llama's query heads, each in rotate-half order
        return t.unflatten(0, (H, D))[heads][:, dims].flatten(0, 1)

    def k_rows(t):  # (K*D, ...) -> keys in rotate-half order
        return t.unflatten(0, (K, D))[:, dims].flatten(0, 1)

    for i in range(cfg.depth):
        a, h = f"blocks.{i}.", f"model.layers.{i}."
        qkv = sd[a + "attn.qkv.weight"]
        q, k, v = qkv.split((H * D, K * D, K * D))
        o = sd[a + "attn.out.weight"]  # (C, H*D): its columns are the heads
        out.update({
            h + "input_layernorm.weight": sd[a + "attn_norm.weight"],
            h + "self_attn.q_proj.weight": q_rows(q), h + "self_attn.k_proj.weight": k_rows(k),
            h + "self_attn.v_proj.weight": v,
            h + "self_attn.o_proj.weight": o.unflatten(1, (H, D))[:, heads].flatten(1),
            h + "post_attention_layernorm.weight": sd[a + "ff_norm.weight"],
        })
        if cfg.attn_bias:
            qb, kb, vb = sd[a + "attn.qkv.bias"].split((H * D, K * D, K * D))
            out.update({h + "self_attn.q_proj.bias": q_rows(qb), h + "self_attn.k_proj.bias": k_rows(kb),
                        h + "self_attn.v_proj.bias": vb, h + "self_attn.o_proj.bias": sd[a + "attn.out.bias"]})
        up, gate = sd[a + "ff.proj_in.weight"].chunk(2)  # arlm's GLU: hidden = up * act(gate)
        down = sd[a + "ff.proj_out.weight"]
        out.update({h + "mlp.gate_proj.weight": gate, h + "mlp.up_proj.weight": up, h + "mlp.down_proj.weight": down})
        if mlp_bias:
            up_b, gate_b = _bias(sd, a + "ff.proj_in.bias", 2 * I, up).chunk(2)
            out.update({h + "mlp.gate_proj.bias": gate_b, h + "mlp.up_proj.bias": up_b,
                        h + "mlp.down_proj.bias": _bias(sd, a + "ff.proj_out.bias", C, down)})
    out["model.norm.weight"] = sd["norm.weight"]
    return out


def hf_state_dict(model) -> tuple[object, dict[str, torch.Tensor]]:
    """(transformers config, its model's state dict) for an arlm ``Transformer``, or
    HFConfigError naming the options no architecture expresses."""
    arch, hf_cfg = to_hf(model.cfg)
    sd = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    tied = bool(hf_cfg.tie_word_embeddings)
    if arch == "gpt2":
        state = _gpt2(model, sd, tied)
    elif arch == "gpt_neox":
        state = _neox(model, sd, tied)
    else:
        state = _llama(model, sd, tied, getattr(hf_cfg, "mlp_bias", False))
    return hf_cfg, {k: v.contiguous() for k, v in state.items()}


def export_hf(model, tokenizer, out_dir: str | Path) -> Path:
    """Write ``model`` (an arlm ``Transformer``) and ``tokenizer`` as a transformers folder."""
    transformers = needs_transformers()
    out_dir = Path(out_dir)
    hf_cfg, state = hf_state_dict(model)  # refuses before anything is written
    dtype = next(model.parameters()).dtype
    hf_model = transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype)
    hf_model.load_state_dict(state, strict=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out_dir)
    save_hf_tokenizer(tokenizer, out_dir, model.cfg.max_seq_len)
    return out_dir


def save_hf_tokenizer(tokenizer, out_dir: Path, max_len: int) -> None:
    """tokenizer.json (the arlm tokenizer's own file) with tokenizer_config.json, which
    ``AutoTokenizer`` needs, written by transformers' fast tokenizer class."""
    transformers = needs_transformers()
    with tempfile.TemporaryDirectory() as tmp:
        path = tokenizer.save(Path(tmp) / "tokenizer.json")
        fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), model_max_length=max_len)
    fast.save_pretrained(out_dir)


def export_run(run_dir: str | Path, out_dir: str | Path, step: int | None = None) -> Path:
    """Export the latest (or ``step``) checkpoint of an arlm run folder; see ``export_hf``."""
    from ..run import load_run

    run = load_run(run_dir, step=step)
    return export_hf(run.model, run.tokenizer, out_dir)


__all__ = ["HFConfigError", "export_hf", "export_run", "hf_state_dict", "save_hf_tokenizer"]

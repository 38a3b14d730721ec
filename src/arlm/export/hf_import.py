"""Hugging Face transformers -> arlm: a local GPT-2, GPT-NeoX or Llama-family folder as an arlm model.

``import_hf(folder)`` reads config.json (through transformers' ``AutoConfig``, which parses JSON
and never runs code from the folder) and the safetensors weights (one file or an indexed set of
shards; pickled ``.bin`` weights are refused), and returns an arlm ``Transformer`` whose logits equal
the original's, with the folder's tokenizer.json when arlm can read it. The inverse of hf.py's maps.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from .hf_config import HFConfigError, from_hf, llama_head_order, needs_transformers, rotary_order


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's model.safetensors, or of the shards its index lists."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / s for s in shards]
    else:
        files = [folder / "model.safetensors"]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        pickled = sorted(p.name for p in folder.glob("*.bin"))
        hint = (f"; {', '.join(pickled)} is a pickle, which arlm never loads (it can run code): save the model "
                "with save_pretrained() (safetensors) first" if pickled else "")
        raise HFConfigError(f"{folder} has no {', '.join(missing)}{hint}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _strip(state: dict, prefixes: tuple[str, ...]) -> dict:
    """Keys without the base-model prefix (GPT-2's original files have none)."""
    out = {}
    for k, v in state.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
                break
        out[k] = v
    return out


class _Taker:
    """Takes source tensors by name, so that every one left over can be named at the end."""

    def __init__(self, state: dict[str, torch.Tensor], ignore: tuple[str, ...] = ()):
        self.state = {k: v for k, v in state.items() if not k.endswith(ignore)}

    def __call__(self, name: str) -> torch.Tensor:
        if name not in self.state:
            raise HFConfigError(f"the weights have no {name!r}, which the config implies")
        return self.state.pop(name).float()

    def maybe(self, name: str) -> torch.Tensor | None:
        return self(name) if name in self.state else None

    def done(self) -> None:
        if self.state:
            raise HFConfigError(f"weights the config does not explain: {', '.join(sorted(self.state)[:8])}")


def _gpt2(cfg, take: _Taker, scale: float) -> dict[str, torch.Tensor]:
    V, T = cfg.vocab_size, cfg.max_seq_len
    sd = {"token_emb.weight": take("wte.weight")[:V], "pos_emb.emb.weight": take("wpe.weight")[:T] / scale}
    for i in range(cfg.depth):
        h, a = f"h.{i}.", f"blocks.{i}."
        for src, dst in (("ln_1", "attn_norm"), ("ln_2", "ff_norm")):
            sd[a + dst + ".weight"], sd[a + dst + ".bias"] = take(h + src + ".weight"), take(h + src + ".bias")
        for src, dst in (("attn.c_attn", "attn.qkv"), ("attn.c_proj", "attn.out"), ("mlp.c_fc", "ff.proj_in"),
                         ("mlp.c_proj", "ff.proj_out")):
            sd[a + dst + ".weight"] = take(h + src + ".weight").t()  # Conv1D (in, out) -> Linear (out, in)
            sd[a + dst + ".bias"] = take(h + src + ".bias")
    sd["norm.weight"], sd["norm.bias"] = take("ln_f.weight"), take("ln_f.bias")
    return sd


def _neox(cfg, take: _Taker) -> dict[str, torch.Tensor]:
    H, D = cfg.heads, cfg.head_dim
    dims = torch.argsort(rotary_order(D, cfg.rotary_emb_dim))
    sd = {"token_emb.weight": take("embed_in.weight")}

    def fused(t):  # NeoX's per head [q_h; k_h; v_h] -> arlm's [queries; keys; values], pairs for q and k
        t = t.unflatten(0, (H, 3, D))
        return torch.cat((t[:, 0][:, dims].flatten(0, 1), t[:, 1][:, dims].flatten(0, 1), t[:, 2].flatten(0, 1)))

    for i in range(cfg.depth):
        h, a = f"layers.{i}.", f"blocks.{i}."
        for src, dst in (("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ff_norm"),
                         ("mlp.dense_h_to_4h", "ff.proj_in"), ("mlp.dense_4h_to_h", "ff.proj_out")):
            sd[a + dst + ".weight"], sd[a + dst + ".bias"] = take(h + src + ".weight"), take(h + src + ".bias")
        sd[a + "attn.qkv.weight"] = fused(take(h + "attention.query_key_value.weight"))
        sd[a + "attn.out.weight"] = take(h + "attention.dense.weight")
        if cfg.attn_bias:
            sd[a + "attn.qkv.bias"] = fused(take(h + "attention.query_key_value.bias"))
            sd[a + "attn.out.bias"] = take(h + "attention.dense.bias")
    sd["norm.weight"], sd["norm.bias"] = take("final_layer_norm.weight"), take("final_layer_norm.bias")
    return sd


def _llama(cfg, take: _Taker) -> dict[str, torch.Tensor]:
    H, K, D, C = cfg.heads, cfg.n_kv_heads, cfg.head_dim, cfg.dim
    # inverse permutations of hf.py's: Llama head j is arlm head order[j]; rotate-half -> pairs
    heads = torch.argsort(llama_head_order(H, K))
    dims = torch.argsort(rotary_order(D, cfg.rotary_emb_dim))
    sd = {"token_emb.weight": take("embed_tokens.weight")}

    def q_rows(t):
        return t.unflatten(0, (H, D))[heads][:, dims].flatten(0, 1)

    def k_rows(t):
        return t.unflatten(0, (K, D))[:, dims].flatten(0, 1)

    for i in range(cfg.depth):
        h, a = f"layers.{i}.", f"blocks.{i}."
        at = h + "self_attn."
        sd[a + "attn_norm.weight"] = take(h + "input_layernorm.weight")
        sd[a + "ff_norm.weight"] = take(h + "post_attention_layernorm.weight")
        sd[a + "attn.qkv.weight"] = torch.cat((q_rows(take(at + "q_proj.weight")), k_rows(take(at + "k_proj.weight")),
                                               take(at + "v_proj.weight")))
        o = take(at + "o_proj.weight")
        sd[a + "attn.out.weight"] = o.unflatten(1, (H, D))[:, heads].flatten(1)
        if cfg.attn_bias:
            sd[a + "attn.qkv.bias"] = torch.cat((q_rows(take(at + "q_proj.bias")), k_rows(take(at + "k_proj.bias")),
                                                 take(at + "v_proj.bias")))
            ob = take.maybe(at + "o_proj.bias")  # Qwen2 has none
            sd[a + "attn.out.bias"] = ob if ob is not None else torch.zeros(C)
        ml = h + "mlp."
        sd[a + "ff.proj_in.weight"] = torch.cat((take(ml + "up_proj.weight"), take(ml + "gate_proj.weight")))
        sd[a + "ff.proj_out.weight"] = take(ml + "down_proj.weight")
        if cfg.ff_bias:
            sd[a + "ff.proj_in.bias"] = torch.cat((take(ml + "up_proj.bias"), take(ml + "gate_proj.bias")))
            sd[a + "ff.proj_out.bias"] = take(ml + "down_proj.bias")
    sd["norm.weight"] = take("norm.weight")
    return sd


def import_hf(folder: str | Path, max_seq_len: int | None = None):
    """(arlm ``Transformer`` in eval mode, tokenizer or None) from a local transformers folder.

    ``max_seq_len`` shortens the context (default: the model's own). The tokenizer is the folder's
    tokenizer.json when it is a byte-level BPE arlm reads (or the byte tokenizer's), else None."""
    transformers = needs_transformers()
    from ..model import Transformer

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise HFConfigError(f"{folder} has no config.json; give a folder written by save_pretrained()")
    try:
        hf = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (ValueError, KeyError, OSError) as e:
        raise HFConfigError(f"{folder}/config.json cannot be read by transformers: {e}") from None
    cfg = from_hf(hf, max_seq_len)
    state = read_safetensors(folder)
    with torch.device("meta"):  # no init: every weight comes from the folder (derived tables stay on the CPU)
        model = Transformer(cfg)
    kind = hf.model_type
    if kind == "gpt2":
        take = _Taker(_strip(state, ("transformer.",)), ignore=(".attn.bias", ".attn.masked_bias"))
        sd, emb, head = _gpt2(cfg, take, model.pos_emb.scale), "wte.weight", "lm_head.weight"
    elif kind == "gpt_neox":
        take = _Taker(_strip(state, ("gpt_neox.",)), ignore=(".attention.bias", ".attention.masked_bias", "inv_freq"))
        sd, emb, head = _neox(cfg, take), "embed_in.weight", "embed_out.weight"  # its name on disk
    else:
        take = _Taker(_strip(state, ("model.",)), ignore=("rotary_emb.inv_freq",))
        sd, emb, head = _llama(cfg, take), "embed_tokens.weight", "lm_head.weight"
    lm_head = take.maybe(head)
    if lm_head is None and head != "lm_head.weight":
        lm_head = take.maybe("lm_head.weight")  # the name transformers gives it in memory
    if not cfg.tie_embedding:
        if lm_head is None:
            raise HFConfigError(f"{folder}: tie_word_embeddings is false but the weights have no {head}")
        sd["head.weight"] = lm_head
    elif lm_head is not None and not torch.equal(lm_head, sd["token_emb.weight"]):
        raise HFConfigError(f"{folder}: tie_word_embeddings is true but {head} differs from {emb}")
    take.done()
    try:
        model.load_state_dict({k: v.contiguous() for k, v in sd.items()}, strict=True, assign=True)
    except RuntimeError as e:  # shapes that do not fit the config
        raise HFConfigError(f"{folder}: the weights do not fit config.json: {e}") from None
    return model.eval(), _tokenizer(folder)


def narrow_vocab(model, vocab_size: int):
    """``model`` sampling only the first ``vocab_size`` ids (a tokenizer smaller than the model's
    embedding, as many transformers models pad theirs): the other rows stay as padding
    (``vocab_pad_multiple``), so the weights and the logits of those ids are unchanged."""
    from ..model import Transformer

    cfg = model.cfg
    if vocab_size == cfg.vocab_size:
        return model
    if not 0 < vocab_size < cfg.padded_vocab or cfg.vocab_pad_multiple != 1:
        raise HFConfigError(f"the tokenizer has {vocab_size} ids but the model {cfg.vocab_size}; a tokenizer "
                            "may have fewer ids than the model (its extra rows are never sampled), not more")
    narrowed = replace(cfg, vocab_size=vocab_size, vocab_pad_multiple=cfg.vocab_size)
    with torch.device("meta"):
        out = Transformer(narrowed)
    out.load_state_dict(model.state_dict(), strict=True, assign=True)
    return out.eval()


def _tokenizer(folder: Path):
    from ..tokenizers import load_tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        return load_tokenizer(path)
    except ValueError:
        return None


__all__ = ["import_hf", "narrow_vocab", "read_safetensors"]

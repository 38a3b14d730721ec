"""x-transformers -> arlm weights.

``convert_state_dict(xt.state_dict(), model)`` maps an x-transformers ``TransformerWrapper`` (built
with a ``Decoder`` and the same keyword arguments as the arlm ``model``) to arlm's parameter
names: to_q/to_k/to_v are stacked into the fused ``qkv`` (and per-head query/key norm gains
likewise), GLU/MLP layers become ``proj_in``/``proj_out``, norm and LayerScale gains lose
x-transformers' unit offset (with ``norm_add_unit_offset`` it stores gain - 1), and the vocabulary
rows are padded when ``vocab_pad_multiple`` asks for it. Every source key must be
used and every arlm key filled, or a ``ValueError`` names what is left over.
"""

from __future__ import annotations

import re

import torch

# Buffers x-transformers saves that arlm derives from the config.
_DERIVED = re.compile(r"^attn_layers\.(rotary_pos_emb\.(inv_freq|scale)|polar_pos_emb\.inv_freq)$")

# Inside an attention sublayer: x-transformers name -> arlm name (under blocks.N.attn.).
_ATTN = {
    "mem_k": "mem_k",
    "mem_v": "mem_v",
    "to_v_gate.weight": "value_gate.weight",
    "to_value_residual_mix.0.weight": "value_mix.weight",
    "to_value_residual_mix.0.bias": "value_mix.bias",
    "to_out.weight": "out.weight",
    "to_out.0.weight": "out.weight",  # attention on attention: Linear then GLU
    "to_v_gate.down.weight": "value_gate.down.weight",  # low-rank gates
    "to_v_gate.up.weight": "value_gate.up.weight",
    "to_output_gate.weight": "output_gate.weight",
    "to_output_gate.down.weight": "output_gate.down.weight",
    "to_output_gate.up.weight": "output_gate.up.weight",
    "to_v_head_gate.weight": "head_gate.weight",
    "to_v_head_gate.bias": "head_gate.bias",
    "attend.head_attn_sink": "sink.logit",
    # multi-head latent attention keeps separate projections (no fused qkv)
    "to_latent_q.weight": "latent.latent_q.weight",
    "to_latent_kv.weight": "latent.latent_kv.weight",
    "to_rotateable_k.weight": "latent.rope_k.weight",
    # per-layer position biases (model/positional_bias.py)
    "data_dependent_alibi.to_forget_gates.0.weight": "layer_bias.forget.{gates}.weight",
    "data_dependent_alibi.to_forget_gates.0.bias": "layer_bias.forget.to_gates.bias",
    "rel_proj_pos_bias.to_distance_weights.0.weight": "layer_bias.distance.to_weights.weight",
    "rel_proj_pos_bias.to_distance_weights.0.bias": "layer_bias.distance.to_weights.bias",
    "rel_proj_pos_bias.distance_bank": "layer_bias.distance.distance_bank",
    "attend.cope.pos_emb": "cope.pos_emb",
}

# Several residual streams and layer integration (model/streams.py). A stream mixer (slot 2 of a
# layer) keeps x-transformers' parameter names under blocks.N.route.<kind>.mixer.
_MIXER = re.compile(r"^(norm\.weight|static_(alpha|beta)|dynamic_(alpha|beta)_(fn|scale)|read_gain|"
                    r"static_(read|write)_logit|dynamic_gate_scale|to_(bottleneck|read_gate|write_gate)\.weight)$")
# attn_layers.layer_integrators.J.<name> -> blocks.N.route.<kind>.integrate.<name>
_INTEGRATOR = {
    "to_weights.0.g": "norm.weight",  # LIMe: RMSNorm (no unit offset) -> Linear -> softmax
    "to_weights.1.weight": "proj.weight",
    "to_weights.1.bias": "proj.bias",
    "to_keys.weight": "key_norm.weight",  # attention over depth
    "to_query.0.weight": "query_in_norm.weight",
    "to_query.1.down.weight": "query_down.weight",
    "to_query.1.up.weight": "query_up.weight",
    "norm.weight": "query_norm.weight",
}


def convert_state_dict(state_dict: dict[str, torch.Tensor], model, *,
                       norm_unit_offset: bool | None = None) -> dict[str, torch.Tensor]:
    """Return ``model``'s state dict filled from an x-transformers ``TransformerWrapper`` state dict.

    ``norm_unit_offset``: x-transformers' ``norm_add_unit_offset`` (True by default there), under
    which norm and LayerScale gains are stored minus their unit offset; None takes what the arlm
    model's config records (``model.cfg.norm_add_unit_offset``, set from the same keyword).
    """
    cfg = model.cfg
    unit = cfg.norm_add_unit_offset if norm_unit_offset is None else norm_unit_offset
    offset = 1.0 if unit else 0.0
    out: dict[str, torch.Tensor] = {}
    # arlm tensor name -> {part: tensor}: per-head x-transformers tensors stacked in q, k, v order
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    unused = []

    def put(name: str, value: torch.Tensor) -> None:
        if name in out:
            raise ValueError(f"two x-transformers tensors map to {name!r}")
        out[name] = value

    for key, value in state_dict.items():
        value = value.detach()
        if _DERIVED.match(key):
            continue
        m = re.match(r"^attn_layers\.layers\.(\d+)\.(\d)\.(.+)$", key)
        if m:
            if not _layer_param(model, int(m.group(1)), int(m.group(2)), m.group(3), value, offset, put, qkv):
                unused.append(key)
            continue
        m = re.match(r"^attn_layers\.layer_integrators\.(\d+)\.(.+)$", key)
        if m and int(m.group(1)) < len(model.layer_map) and m.group(2) in _INTEGRATOR:
            block, kind = model.layer_map[int(m.group(1))]
            put(f"blocks.{block}.route.{kind}.integrate.{_INTEGRATOR[m.group(2)]}", value)
            continue
        name = _top_level(key, value, cfg, offset) or _residual_top_level(key, value, model)
        if name is None:
            unused.append(key)
        else:
            put(*name)

    for name, parts in qkv.items():
        if name.endswith(".qkv.weight") and set(parts) != {"q", "k", "v"}:
            raise ValueError(f"attention at {name!r} is missing {sorted({'q', 'k', 'v'} - set(parts))} projections")
        put(name, torch.cat([parts[p] for p in "qkv" if p in parts], dim=0))

    target = model.state_dict()
    for name, t in target.items():
        if name.endswith("attn.out.weight") and name not in out and cfg.heads == 1 and not cfg.attn_on_attn:
            # x-transformers drops the output projection for a single head (an identity)
            if t.shape[0] != t.shape[1]:
                raise ValueError(f"one head of size {cfg.head_dim} cannot map to dim={cfg.dim} without an output projection")
            out[name] = torch.eye(t.shape[0], dtype=t.dtype)
    if unused:
        raise ValueError(f"x-transformers tensors with no arlm counterpart: {', '.join(unused)}; "
                         "build the arlm model with the same keyword arguments")
    missing = sorted(set(target) - set(out))
    extra = sorted(set(out) - set(target))
    if missing or extra:
        raise ValueError(f"state dicts do not line up; arlm keys not filled: {missing}; unexpected: {extra}. "
                         "Build the arlm model with the same keyword arguments as the x-transformers one")
    for name, t in target.items():
        v = out[name]
        if v.dim() == 0 and t.shape == (1,):  # x-transformers' scalar parameters are (1,) in arlm (FSDP2)
            v = v.reshape(1)
        if v.shape != t.shape:
            raise ValueError(f"{name}: x-transformers gives shape {tuple(v.shape)}, arlm expects {tuple(t.shape)}; "
                             "build the arlm model with the same keyword arguments as the x-transformers one")
        out[name] = v.to(t.dtype)
    return out


def _pad_vocab(value: torch.Tensor, cfg) -> torch.Tensor:
    pad = cfg.padded_vocab - value.shape[0]
    return torch.cat((value, value.new_zeros(pad, value.shape[1]))) if pad > 0 else value


def _norm_param(module: str, name: str, value: torch.Tensor, cfg, offset: float):
    """One tensor of an x-transformers norm -> (arlm name, tensor) or None. Gains (and DynamicTanh's
    and Derf's alpha) carry the unit offset; DynamicTanh's alpha is offset by its init value."""
    if name in ("gamma", "g"):
        return f"{module}.weight", value + offset
    if name == "beta":
        return f"{module}.bias", value
    # DynamicTanh's and Derf's scalars are 0-dim there, (1,) in arlm
    if name == "pre_tanh_scale":  # DynamicTanh
        return f"{module}.alpha", (value + offset * cfg.dynamic_tanh_init_alpha).reshape(1)
    if name == "alpha":  # Derf
        return f"{module}.alpha", (value + offset).reshape(1)
    if name == "s":  # Derf
        return f"{module}.shift", value.reshape(1)
    return None


def _top_level(key: str, value: torch.Tensor, cfg, offset: float):
    """Embeddings, final norm, position bias and head -> (arlm name, tensor) or None."""
    if cfg.custom_token_emb and key.startswith("token_emb."):
        return key, value  # the same Python module on both sides
    if cfg.custom_to_logits and key.startswith("to_logits."):
        return "head." + key[len("to_logits."):], value
    if key == "token_emb.emb.weight":
        return "token_emb.weight", _pad_vocab(value, cfg)
    if key == "to_logits.weight":
        return "head.weight", _pad_vocab(value, cfg) if cfg.logits_dim is None else value
    m = re.match(r"^to_logits\.(\d+)\.weight$", key)
    if m:  # num_output_heads
        return f"output_heads.{m.group(1)}.weight", value if cfg.logits_dim is not None else _pad_vocab(value, cfg)
    if key in ("to_mixture.0.weight", "combine_mixture.weight"):
        return f"mixture.{'to_mixture' if key.startswith('to_') else 'combine'}.weight", value
    if key in ("pos_emb.emb.weight", "pos_emb.scale", "memory_tokens", "ff_deep_embed", "project_emb.weight",
               "project_emb.bias", "to_next_embed_pred.0.weight", "to_next_embed_pred.2.weight"):
        return key, value
    if re.match(r"^embeds\.\w+_embed\.weight$", key):  # embed_num_tokens tables
        return key, value
    if key == "attn_layers.stream_emb":
        return "streams.emb", value
    if key == "post_emb_norm.gamma":  # plain LayerNorm there, no unit offset
        return "post_emb_norm.weight", value
    if key.startswith("attn_layers.final_norm."):
        return _norm_param("norm", key.rsplit(".", 1)[1], value, cfg, offset)
    if key == "attn_layers.polar_pos_emb.learned_bias":  # (H, 1, D) -> (H, D)
        return "polar.learned_bias", value[:, 0]
    if key == "attn_layers.rel_pos.relative_attention_bias.weight":
        return "pos_bias.relative_attention_bias.weight", value
    m = re.match(r"^attn_layers\.rel_pos\.mlp\.(\d+)\.(?:(\d)\.)?(weight|bias|gamma)$", key)
    if m:  # their mlp is [Sequential(Linear, [LayerNorm,] SiLU)] * depth + [Linear]; ours is flat
        stride = 3 if cfg.dynamic_pos_bias_norm else 2
        return f"pos_bias.mlp.{stride * int(m.group(1)) + int(m.group(2) or 0)}.{m.group(3).replace('gamma', 'weight')}", value
    return None


def _residual_top_level(key: str, value: torch.Tensor, model):
    """Stack-level residual options (input reinjection, U-Net skips) -> (arlm name, tensor) or None."""
    if key == "attn_layers.reinject_input_proj.weight":
        return "reinject.proj.weight", value
    if key == "attn_layers.learned_reinject_input_gate.weight":
        return "reinject.gate.weight", value
    m = re.match(r"^attn_layers\.skip_combines\.(\d+)\.combine\.weight$", key)
    if m and int(m.group(1)) < len(model.layer_map):  # keyed by layer index; arlm by block
        return f"unet.combines.{model.layer_map[int(m.group(1))][0]}.weight", value
    return None


def _layer_param(model, j: int, slot: int, rest: str, value, offset: float, put, qkv) -> bool:
    """One tensor of x-transformers layer j; slot 0 norms, 1 the branch, 2 the residual."""
    if j >= len(model.layer_map):
        return False
    block, kind = model.layer_map[j]
    prefix = f"blocks.{block}"
    if slot == 0:
        m = re.match(r"^(\d)\.(\w+)$", rest)
        if not m:
            return False
        # 0: pre-branch norm, 1: sandwich norm, 2: norm after the residual sum -- arlm's {kind}_norm
        # in a post-norm stack, {kind}_residual_norm with pre_and_post_norm
        # (gated multi-residual blocks are post-norm: model/streams.py)
        after = f"{kind}_residual_norm" if model.cfg.pre_norm and not model.cfg.gated_multi_residual else f"{kind}_norm"
        which = {"0": f"{kind}_norm", "1": f"{kind}_post_norm", "2": after}[m.group(1)]
        name = _norm_param(f"{prefix}.{which}", m.group(2), value, model.cfg, offset)
        if name is None:
            return False
        put(*name)
        return True
    if slot == 2:
        if rest == "residual_scale":
            put(f"{prefix}.{kind}_residual_scale", value)
            return True
        if re.match(r"^(alpha|beta|to_(alpha|beta)\.(weight|bias))$", rest):  # mean/variance split update
            put(f"{prefix}.{kind}_mv_split.{rest}", value)
            return True
        m = re.match(r"^gru\.(weight_ih|weight_hh|bias_ih|bias_hh)$", rest)
        if m:
            put(f"{prefix}.{kind}_gate.{m.group(1)}", value)
            return True
        if _MIXER.match(rest):
            put(f"{prefix}.route.{kind}.mixer.{rest}", value)
            return True
        return False
    if rest == "gamma":  # LayerScale wraps the branch
        put(f"{prefix}.{kind}_layerscale.gain", value + offset)
        return True
    while rest.startswith("fn."):  # LayerScale / ShiftTokens / Scale (macaron) wrappers
        rest = rest[3:]
    if kind == "attn":
        m = re.match(r"^to_([qkv])\.weight$", rest)
        if m and model.blocks[block].attn.latent is not None:
            put(f"{prefix}.attn.latent.{m.group(1)}.weight", value)
            return True
        if m:
            qkv.setdefault(f"{prefix}.attn.qkv.weight", {})[m.group(1)] = value
            return True
        if rest in _ATTN:
            gates = "to_qk" if model.cfg.data_dependent_alibi_per_row else "to_gates"  # per-row: small q and k
            put(f"{prefix}.attn.{_ATTN[rest].format(gates=gates)}", value)
            return True
        m = re.match(r"^(?:qk_norm_([qk])_scale|([qk])_rmsnorm\.gamma|value_rmsnorm\.gamma)$", rest)
        if m:  # per-head gains (N, 1, D), stacked flat in q, k order (MultiheadRMSNorm always stores gain - 1)
            part = m.group(1) or m.group(2) or "v"
            module = "qk_norm" if m.group(1) else "value_rmsnorm" if part == "v" else "qk_rmsnorm"
            qkv.setdefault(f"{prefix}.attn.{module}.gain", {})[part] = value.reshape(-1) + (0.0 if m.group(1) else 1.0)
            return True
        if rest == "head_scale_params":
            put(f"{prefix}.attn.head_scale", value.reshape(-1))  # (1, H, 1, 1) -> (H,)
            return True
        if rest == "attend.cope.positions":  # derived: CoPE's soft one-hot grid
            return True
        if rest == "attend.cope.talking_heads.weight":
            put(f"{prefix}.attn.cope.talking_heads", value[:, :, 0, 0])
            return True
        m = re.match(r"^attend\.(pre|post)_softmax_talking_heads\.weight$", rest)
        if m:  # a 1x1 Conv2d over heads is an (H, H) matrix
            put(f"{prefix}.attn.{m.group(1)}_talking_heads", value[:, :, 0, 0])
            return True
        if rest == "attend.pre_scale_post_talking_heads.weight":  # (attention scores and kernels)
            put(f"{prefix}.attn.pre_scale_post_talking_heads", value[:, :, 0, 0])
            return True
        return False
    if rest == "ff.0.mult_bias":  # GLU output multiplier
        put(f"{prefix}.ff.mult_bias", value)
        return True
    if re.match(r"^ff\.0\.(?:act|\d+)\.norm\.gamma$", rest):  # SoLU's LayerNorm (no unit offset)
        put(f"{prefix}.ff.solu_norm.weight", value)
        return True
    m = re.match(r"^ff\.(\d+)\.(?:0\.|proj\.)?(weight|bias|gamma)$", rest)
    if not m:
        return False
    idx, what = int(m.group(1)), m.group(2)
    if idx == 0:
        put(f"{prefix}.ff.proj_in.{what}", value)
    elif what == "gamma":  # post-activation LayerNorm (no unit offset)
        put(f"{prefix}.ff.post_act_norm.weight", value)
    else:
        put(f"{prefix}.ff.proj_out.{what}", value)
    return True

"""The x-transformers keywords arlm understands, one table per option family, and what it does
with the others: ``REFUSED`` (not offered, with the reason), ``INERT`` (accepted only at the value
that changes nothing), ``keyword_status`` (the status docs/options.md lists for each keyword), and
the per-family translation of keywords that are not one-to-one with a ``ModelConfig`` field.
``facade.py`` builds the model from them.
"""

from __future__ import annotations

from typing import Any

from .feedforward import activation_name


def _int_or_none(v):
    return None if v is None else int(v)


def _execute_order(v) -> str:
    """layers_execute_order as x-transformers takes it (a tuple of ints) or as "0,1,0,1"."""
    return ",".join(str(int(i)) for i in v) if isinstance(v, (tuple, list)) else str(v)


def _layers(v) -> str:
    """custom_layers as x-transformers takes it (a tuple of 'a'/'f') or as a string."""
    return "".join(v) if isinstance(v, (tuple, list)) else str(v)


# Decoder keyword -> (ModelConfig field or None when handled in a *_fields function, converter),
# one table per option family.
_CORE_KWARGS: dict[str, tuple[str | None, Any]] = {
    "heads": ("heads", int),
    "attn_dim_head": ("dim_head", int),
    "attn_kv_heads": ("kv_heads", int),
    "attn_one_kv_head": (None, bool),
    "attn_flash": (None, bool),  # accepted for compatibility: arlm uses fused SDPA whenever the options allow
    "attn_dropout": ("attn_dropout", float),
    "ff_dropout": ("ff_dropout", float),
    "layer_dropout": ("layer_dropout", float),
}

_POSITION_KWARGS: dict[str, tuple[str | None, Any]] = {
    "rotary_pos_emb": (None, bool),
    "rotary_emb_dim": ("rotary_dim", int),
    "rotary_base": ("rotary_base", float),  # arlm addition (x-transformers fixes 10000)
    "rotary_xpos": ("rotary_xpos", bool),
    "rotary_xpos_scale_base": ("rotary_xpos_scale_base", float),
    "rotary_interpolation_factor": ("rotary_interpolation_factor", float),
    "rotary_base_rescale_factor": ("rotary_base_rescale_factor", float),
    "alibi_pos_bias": (None, bool),
    "alibi_num_heads": ("alibi_num_heads", _int_or_none),
    "rel_pos_bias": (None, bool),
    "rel_pos_num_buckets": ("rel_pos_num_buckets", int),
    "rel_pos_max_distance": ("rel_pos_max_distance", int),
    "dynamic_pos_bias": (None, bool),
    "dynamic_pos_bias_log_distance": ("dynamic_pos_bias_log_distance", bool),
    "dynamic_pos_bias_mlp_depth": ("dynamic_pos_bias_mlp_depth", int),
    "attn_max_attend_past": ("max_attend_past", _int_or_none),
    "disable_abs_pos_emb": (None, lambda v: bool(v)),
    "rotate_num_heads": ("rotary_num_heads", _int_or_none),
    "attn_rotate_num_heads": ("rotary_num_heads", _int_or_none),
    "dynamic_pos_bias_norm": ("dynamic_pos_bias_norm", bool),
    "rel_pos_kwargs": (None, dict),
    "polar_pos_emb": (None, bool),
    "polar_bias_uniform_init": ("polar_bias_uniform_init", bool),
    "attn_data_dependent_alibi": ("data_dependent_alibi", bool),
    "attn_data_dependent_alibi_per_row": ("data_dependent_alibi_per_row", bool),
    "attn_data_dependent_alibi_per_row_dim_head": ("data_dependent_alibi_per_row_dim_head", int),
    "attn_data_dependent_alibi_kwargs": (None, dict),
    "attn_use_cope": ("cope", bool),
    "attn_cope_max_pos": ("cope_max_pos", int),
    "attn_cope_soft_onehot_pos": ("cope_soft_onehot_pos", bool),
    "attn_cope_talking_heads": ("cope_talking_heads", bool),
    "attn_use_rel_proj_pos_bias": ("rel_proj_pos_bias", bool),
    "attn_rel_proj_num_distance_basis": ("rel_proj_num_distance_basis", int),
    "attn_rel_proj_max_dist": ("rel_proj_max_dist", int),
}

_NORM_KWARGS: dict[str, tuple[str | None, Any]] = {
    "use_rmsnorm": (None, bool),
    "use_scalenorm": (None, bool),
    "use_simple_rmsnorm": (None, bool),
    "attn_qk_norm": ("qk_norm", bool),
    "attn_qk_norm_scale": ("qk_norm_scale", float),
    "pre_norm": ("pre_norm", bool),
    "sandwich_norm": ("sandwich_norm", bool),
    "pre_and_post_norm": ("pre_and_post_norm", bool),
    "pre_norm_has_final_norm": ("pre_norm_has_final_norm", bool),
    "norm_add_unit_offset": ("norm_add_unit_offset", bool),
    "use_dynamic_tanh": (None, bool),
    "dynamic_tanh_init_alpha": ("dynamic_tanh_init_alpha", float),
    "use_derf": (None, bool),
    "use_layerscale": ("layerscale", bool),
    "layerscale_init_value": ("layerscale_init_value", float),
    "attn_qk_norm_groups": ("qk_norm_groups", int),
    "attn_qk_norm_dim_scale": ("qk_norm_dim_scale", bool),
    "attn_qk_rmsnorm": ("qk_rmsnorm", bool),
    "attn_k_rmsnorm": ("k_rmsnorm", bool),
    "attn_value_rmsnorm": ("value_rmsnorm", bool),
    "norm_bias": ("norm_bias", bool),  # arlm addition: LayerNorm biases (GPT-2 import)
    "norm_eps": ("norm_eps", lambda v: None if v is None else float(v)),  # arlm addition (Llama's rms_norm_eps)
}

_RESIDUAL_KWARGS: dict[str, tuple[str | None, Any]] = {
    "residual_attn": ("residual_attn", bool),
    "add_value_residual": ("add_value_residual", bool),
    "gate_residual": ("gate_residual", bool),
    "scale_residual": (None, lambda v: v),  # a bool, or a number: also a constant scale on every branch output
    "zero_init_branch_output": ("zero_init_branch_output", bool),
    "softclamp_output": ("softclamp_output", bool),
    "softclamp_output_value": ("softclamp_output_value", float),
    "shift_tokens": ("shift_tokens", int),
    "custom_layers": ("layers", _layers),
    "macaron": ("macaron", bool),
    "par_ratio": ("par_ratio", _int_or_none),
    "sandwich_coef": ("sandwich_coef", _int_or_none),
    "weight_tie_layers": ("weight_tie_layers", bool),
    "layers_execute_order": ("layers_execute_order", _execute_order),
    "only_attn": ("only_attn", bool),
    "scale_residual_constant": ("scale_residual_constant", float),
    "depth_scale_residual": (None, lambda v: v),  # a bool (depth-scaled init) or a number (branch output scale)
    "residual_fn_kwargs": (None, dict),
    "learned_value_residual_mix": ("learned_value_residual_mix", bool),
    "reinject_input": ("reinject_input", bool),
    "learned_reinject_input_gate": ("learned_reinject_input_gate", bool),
    "unet_skips": ("unet_skips", bool),
    "orthog_residual": ("orthog_residual", bool),
    "mv_split_residual": ("mv_split_residual", bool),
}

# residual_fn_kwargs key -> (the residual option it configures, ModelConfig field, converter)
_RESIDUAL_FN_KEYS: dict[str, tuple[str, str, Any]] = {
    "init_alpha": ("mv_split_residual", "mv_split_init_alpha", float),
    "init_beta": ("mv_split_residual", "mv_split_init_beta", float),
    "learned": ("mv_split_residual", "mv_split_learned", bool),
    "read_gate_rank": ("gated_multi_residual", "gated_multi_read_gate_rank", int),  # model/streams.py
}

# multi-stream residuals and layer integration (model/streams.py)
_STREAM_KWARGS: dict[str, tuple[str | None, Any]] = {
    "num_residual_streams": ("num_residual_streams", int),
    "hyper_conn_sinkhorn_iters": ("hyper_conn_sinkhorn_iters", int),
    "hyper_conn_residual_mix": ("hyper_conn_residual_mix", str),  # arlm addition: "sinkhorn" as the mHC paper
    "integrate_layers": ("integrate_layers", bool),
    "layer_integrate_use_softmax": ("layer_integrate_use_softmax", bool),
    "qkv_receive_diff_residuals": ("qkv_receive_diff_residuals", bool),
    "gated_multi_residual": ("gated_multi_residual", bool),  # + residual_fn_kwargs read_gate_rank
    "attn_aggregated_residuals": ("attn_aggregated_residuals", bool),
    "attn_aggregated_residual_kwargs": (None, dict),
}

_ATTN_PROJ_KWARGS: dict[str, tuple[str | None, Any]] = {
    "attn_gate_values": ("attn_gate_values", bool),
    "attn_head_scale": ("attn_head_scale", bool),
    "attn_num_mem_kv": ("attn_num_mem_kv", int),
    "attn_add_zero_kv": ("attn_add_zero_kv", bool),
    "attn_on_attn": ("attn_on_attn", bool),
    "attn_value_dim_head": ("attn_value_dim_head", _int_or_none),
    "attn_dim_out": (None, _int_or_none),
    "attn_project_out": ("attn_project_out", lambda v: None if v is None else bool(v)),
    "attn_bias": ("attn_bias", bool),  # arlm addition: query/key/value and output biases (GPT-2 import)
    "attn_zero_init_output": ("attn_zero_init_output", bool),
    "attn_output_proj_depth": ("attn_output_proj_depth", _int_or_none),
    "attn_sublayer_dropout": ("attn_sublayer_dropout", float),
    "attn_gate_values_rank": ("attn_gate_values_rank", _int_or_none),
    "attn_gate_values_headwise": ("attn_gate_values_headwise", bool),
    "attn_output_gate": ("attn_output_gate", bool),
    "attn_output_gate_rank": ("attn_output_gate_rank", _int_or_none),
    "attn_output_gate_headwise": ("attn_output_gate_headwise", bool),
    "attn_low_rank_silu_gates": ("attn_low_rank_silu_gates", bool),
    "attn_swiglu_values": ("attn_swiglu_values", bool),
    "attn_gate_value_heads": ("attn_gate_value_heads", bool),
    "attn_head_learned_sink": ("attn_head_learned_sink", bool),
    "attn_orthog_projected_values": ("attn_orthog_projected_values", bool),
    "attn_orthog_projected_values_per_head": ("attn_orthog_projected_values_per_head", bool),
    "attn_use_latent_q": ("attn_use_latent_q", bool),
    "attn_dim_latent_q": ("attn_dim_latent_q", _int_or_none),
    "attn_use_latent_kv": ("attn_use_latent_kv", bool),
    "attn_dim_latent_kv": ("attn_dim_latent_kv", _int_or_none),
    "attn_latent_rope_subheads": ("attn_latent_rope_subheads", _int_or_none),
}

_ATTN_SCORE_KWARGS: dict[str, tuple[str | None, Any]] = {
    "attn_softclamp_logits": ("attn_softclamp_logits", bool),
    "attn_logit_softclamp_value": ("attn_logit_softclamp_value", float),
    "attn_pre_talking_heads": ("attn_pre_talking_heads", bool),
    "attn_post_talking_heads": ("attn_post_talking_heads", bool),
    "attn_sparse_topk": ("attn_sparse_topk", _int_or_none),
    "attn_sparse_topk_straight_through": ("attn_sparse_topk_straight_through", bool),
    "attn_sigmoid": ("attn_sigmoid", bool),
    "attn_hard": ("attn_hard", bool),
    "attn_l2_distance": ("attn_l2_distance", bool),
    "attn_cog_signed": ("attn_cog_signed", bool),
    "attn_laser": ("attn_laser", bool),
    "attn_laser_softclamp_value": ("attn_laser_softclamp_value", float),
    "attn_pre_scale_post_talking_heads": ("attn_pre_scale_post_talking_heads", bool),
    "attn_gumbel_softmax": ("attn_gumbel_softmax", bool),
    "attn_gumbel_softmax_temp": ("attn_gumbel_softmax_temp", float),
    "attn_gumbel_softmax_hard": ("attn_gumbel_softmax_hard", bool),
    "attn_selective": ("attn_selective", bool),
}

_FF_KWARGS: dict[str, tuple[str | None, Any]] = {
    "ff_mult": ("ff_mult", float),
    "ff_glu": ("ff_glu", bool),
    "ff_swish": (None, bool),
    "ff_relu_squared": (None, bool),
    "ff_no_bias": (None, bool),
    "ff_post_act_ln": ("ff_post_act_ln", bool),
    "ff_solu": (None, bool),
    "ff_custom_activation": (None, activation_name),  # a torch activation module -> its ff_activation name
    "ff_glu_mult_bias": ("ff_glu_mult_bias", bool),
    "ff_glu_softclamp": ("ff_glu_softclamp", bool),
    "ff_glu_gate_softclamp_value": ("ff_glu_gate_softclamp_value", float),
    "ff_glu_up_softclamp_value": ("ff_glu_up_softclamp_value", float),
    "ff_softclamp_value": ("ff_softclamp_value", float),
    "ff_zero_init_output": ("ff_zero_init_output", bool),
    "ff_output_proj_depth": ("ff_output_proj_depth", int),
    "ff_sublayer_dropout": ("ff_sublayer_dropout", float),
    "ff_dim_out": (None, int),
    "ff_glu_bias": ("ff_glu_bias", bool),  # arlm addition: False drops the GLU input bias with ff_no_bias (Llama)
}

_DECODER_KWARGS: dict[str, tuple[str | None, Any]] = {
    **_CORE_KWARGS, **_POSITION_KWARGS, **_NORM_KWARGS, **_RESIDUAL_KWARGS, **_STREAM_KWARGS, **_ATTN_PROJ_KWARGS,
    **_ATTN_SCORE_KWARGS, **_FF_KWARGS,
}

# TransformerWrapper keyword -> ModelConfig field (None: handled in TransformerWrapper).
_WRAPPER_KWARGS: dict[str, tuple[str | None, Any]] = {
    "emb_dropout": ("emb_dropout", float),
    "tie_embedding": ("tie_embedding", bool),
    "use_abs_pos_emb": (None, bool),
    "scaled_sinu_pos_emb": (None, bool),
    "l2norm_embed": ("l2norm_embed", bool),
    "post_emb_norm": ("post_emb_norm", bool),
    "num_memory_tokens": ("num_memory_tokens", lambda v: int(v or 0)),
    "input_not_include_cache": (None, bool),  # forward-time default, read by facade_forward
    "emb_dim": ("emb_dim", _int_or_none),
    "emb_frac_gradient": ("emb_frac_gradient", float),
    "embed_num_tokens": ("embed_num_tokens", lambda v: dict(v) or None),
    "tie_embedding_scale": ("tie_embedding_scale", lambda v: None if v is None else float(v)),
    "ff_deep_embed": ("ff_deep_embed", bool),
    "logits_dim": ("logits_dim", _int_or_none),
    "num_output_heads": ("num_output_heads", int),
    "return_only_embed": ("return_only_embed", bool),
    "mixture_of_softmax": ("mixture_of_softmax", bool),
    "mixture_of_softmax_k": ("mixture_of_softmax_k", int),
    "sigsoftmax_logits": ("sigsoftmax_logits", bool),
    "squeeze_out_last_dim": ("squeeze_out_last_dim", bool),
    "add_continuous_pred_head": ("add_continuous_pred_head", bool),
    "token_emb": (None, lambda v: v),  # a Python module: the config records only that there is one
    "to_logits": (None, lambda v: v),
}

# x-transformers options refused on purpose: each breaks causality or cannot be reproduced
# exactly by a preallocated KV cache (or needs inputs a decoder-only LM does not have).
REFUSED: dict[str, str] = {
    "causal": "a Decoder is always causal",
    **dict.fromkeys(("use_adaptive_layernorm", "use_adaptive_rmsnorm", "use_adaptive_layerscale", "dim_condition",
                     "adaptive_condition_mlp", "adaptive_condition_mlp_expansion"),
                    "adaptive norms and layer scales are conditioned on a per-sequence condition tensor, an input "
                    "a decoder-only LM does not have"),
    "cross_attend": "arlm is decoder-only: there is no context to cross-attend to",
    "only_cross": "arlm is decoder-only: there is no context to cross-attend to",
    "attn_inverted_attention": "inverted attention normalises each key's weights over the queries, so a query's "
                               "output depends on later queries (not causal); x-transformers itself drops it "
                               "from self-attention layers",
    "memory_tokens_interspersed_every": "memory rows inside the sequence move with the chunk boundaries; "
                                        "the static cache layout keeps memory tokens only in front",
    "recycling": "recycled hidden states need one KV cache per recycling step",
    "looped": "looped depth with early exit needs one KV cache per loop step",
    "average_pool_embed": "pooling over the sequence lets earlier outputs see later tokens (not causal)",
    "use_cls_token": "a pooled cls token summarises the whole sequence (not causal)",
    "attn_pool": "attention pooling summarises the whole sequence (not causal)",
    "cross_residual_attn": "arlm is decoder-only: there is no cross-attention",
    "attn_hybrid_module": "an arbitrary hybrid module has no causality or cache guarantee",
    "attn_hybrid_mask_kwarg": "it configures attn_hybrid_module, which is refused",
    "attn_hybrid_fold_axial_dim": "it configures attn_hybrid_module, which is refused",
    "attn_hybrid_learned_mix": "it configures attn_hybrid_module, which is refused",
    "attn_custom_attn_fn": "an arbitrary attention function has no causality or cache guarantee",
    "attn_dim_context": "arlm is decoder-only: there is no context to cross-attend to",
    "cross_attn_tokens_dropout": "arlm is decoder-only: there is no cross-attention",
    "attn_flash_pack_seq": "packed variable-length sequences are not a decoder-only LM input; "
                           "give ragged batches with left padding (mask=) instead",
    "train_max_recycle_steps": "it configures recycling, which is refused",
    "max_looped_steps": "it configures looped, which is refused",
    "num_cls_tokens": "it configures use_cls_token, which is refused",
    "num_pooled_tokens": "it configures attn_pool, which is refused",
    "attn_pool_depth": "it configures attn_pool, which is refused",
    "dim_pooled_tokens": "it configures attn_pool, which is refused",
    "attn_heads": "x-transformers' Decoder passes its own heads= to every attention layer, so attn_heads "
                  "collides with it there (TypeError); set heads= instead",
    "max_mem_len": "Transformer-XL recurrence carries hidden states (mems) between segments beside the "
                   "attention; arlm's KV cache keeps every position's keys and values instead, so there are no mems",
    "shift_mem_down": "it rotates Transformer-XL mems between layers, and arlm has no mems (see max_mem_len)",
    "attn_learned_value_residual_mix": "x-transformers' Decoder sets each attention layer's mix from "
                                       "learned_value_residual_mix, so this collides with it there (TypeError); "
                                       "set learned_value_residual_mix instead",
}

_ANY = object()

# x-transformers keywords that change nothing at these values (their x-transformers defaults, or
# settings with no effect on the mathematics): accepted and dropped, so a script that spells out
# its defaults ports unchanged. Any other value of a keyword arlm does not implement is refused.
INERT: dict[str, Any] = {
    "causal": True,  # a Decoder is causal; x-transformers' Decoder sets it itself
    "cross_attend": False, "only_cross": False, "cross_residual_attn": False, "cross_attn_tokens_dropout": 0.0,
    "use_adaptive_layernorm": False, "use_adaptive_rmsnorm": False, "use_adaptive_layerscale": False,
    "dim_condition": None, "adaptive_condition_mlp": False, "adaptive_condition_mlp_expansion": 4,
    "attn_inverted_attention": False,
    "attn_hybrid_module": None, "attn_hybrid_mask_kwarg": None, "attn_hybrid_fold_axial_dim": None,
    "attn_hybrid_learned_mix": False, "attn_custom_attn_fn": None, "attn_dim_context": None,
    "attn_flash_pack_seq": False,
    "verbose": _ANY,  # x-transformers' warnings only
    "attn_onnxable": _ANY,  # an export-friendly spelling of the same attention
    "attn_attend_sdp_kwargs": _ANY,  # SDPA backend choice; arlm lets PyTorch choose
    # TransformerWrapper
    "memory_tokens_interspersed_every": None, "recycling": False, "train_max_recycle_steps": 4, "looped": False,
    "max_looped_steps": 4, "average_pool_embed": False, "use_cls_token": False, "num_cls_tokens": 1,
    "attn_pool": False, "num_pooled_tokens": 1, "attn_pool_depth": 1, "dim_pooled_tokens": None,
    "max_mem_len": 0, "shift_mem_down": 0,
    "attn_z_loss_weight": _ANY,  # x-transformers stores nothing from it: forward's attn_z_loss_weight decides
}


def _check_kwargs(where: str, kwargs: dict, supported: dict, named: list[str]) -> dict:
    """The keywords arlm acts on: unknown ones are refused (``_reject``), keywords arlm does not
    implement are dropped when given at an inert value (``INERT``)."""
    out = {}
    for name, value in kwargs.items():
        if name in supported:
            out[name] = value
        elif name in INERT and (INERT[name] is _ANY or _same(value, INERT[name])):
            continue
        else:
            _reject(where, name, [*named, *supported])
    return out


def keyword_status(name: str) -> tuple[str, str]:
    """(status, note) of an x-transformers keyword in arlm: ``yes`` (implemented; the note names
    the ModelConfig field), ``inert`` (accepted only at the value that changes nothing; the note
    says which and why other values are refused), or ``no`` (not accepted)."""
    for table in (_DECODER_KWARGS, _WRAPPER_KWARGS):
        if name in table:
            field = table[name][0]
            return "yes", f"`{field}`" if field else "see the option list above"
    if name in ("dim", "depth", "num_tokens", "max_seq_len", "attn_layers"):
        return "yes", "required"
    if name in INERT:
        value = "any value (no effect on the mathematics)" if INERT[name] is _ANY else f"only `{INERT[name]!r}`"
        return "inert", value + (f"; other values refused: {REFUSED[name]}" if name in REFUSED else "")
    if name in REFUSED:
        return "no", f"refused: {REFUSED[name]}"
    return "no", "not implemented"


def _same(value, inert) -> bool:
    if inert is None or isinstance(inert, bool):
        return value is inert or (isinstance(value, bool) and value == inert)
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value == inert


def _reject(where: str, name: str, supported) -> None:
    if name in REFUSED:
        raise TypeError(f"{where}() option {name!r} is refused: {REFUSED[name]}.")
    raise TypeError(
        f"{where}() got an unsupported keyword argument {name!r}. "
        f"arlm supports: {', '.join(sorted(supported))}. "
        "Options arlm does not implement are refused rather than silently ignored."
    )


def _exclusive(kw: dict, names: tuple[str, ...], what: str) -> None:
    on = [n for n in names if kw.get(n)]
    if len(on) > 1:
        raise TypeError(f"{' and '.join(on)} are exclusive; choose one {what}")


# Per-family translation of the keywords that do not map one-to-one onto a ModelConfig field.
# Each takes the Decoder's keywords and the fields built so far, and fills ``out``.

def _position_fields(kw: dict, out: dict) -> None:
    _exclusive(kw, ("alibi_pos_bias", "rel_pos_bias", "dynamic_pos_bias"), "position bias")
    _exclusive(kw, ("alibi_pos_bias", "rel_pos_bias", "attn_data_dependent_alibi"), "position bias")
    _exclusive(kw, ("rotary_pos_emb", "polar_pos_emb"), "query/key position embedding")
    if kw.get("rotate_num_heads") is not None and kw.get("attn_rotate_num_heads") is not None:
        raise TypeError("set either rotate_num_heads or attn_rotate_num_heads, not both")
    out["pos_bias"] = ("alibi" if kw.get("alibi_pos_bias") else "t5" if kw.get("rel_pos_bias")
                       else "dynamic" if kw.get("dynamic_pos_bias") else "none")
    # the position embedding applied to queries and keys (as x-transformers: xPos implies rotary)
    out["qk_pos_emb"] = ("rotary" if kw.get("rotary_pos_emb") or kw.get("rotary_xpos")
                         else "polar" if kw.get("polar_pos_emb") else None)
    # None: as x-transformers, T5 buckets, rotary and polar embeddings turn off absolute positions
    disable = kw.get("disable_abs_pos_emb")
    out["disable_abs_pos_emb"] = (bool(kw.get("rel_pos_bias")) or out["qk_pos_emb"] is not None
                                  if disable is None else disable)
    _forward_kwargs(kw.get("rel_pos_kwargs") or {}, "rel_pos_kwargs",
                    {"slopes": "alibi_slopes"} if out["pos_bias"] == "alibi" else {}, out,
                    f"the {out['pos_bias']} position bias" if out["pos_bias"] != "none" else "no position bias")
    per_row = kw.get("attn_data_dependent_alibi_per_row")
    _forward_kwargs(kw.get("attn_data_dependent_alibi_kwargs") or {}, "attn_data_dependent_alibi_kwargs",
                    {"post_log_scale": "data_dependent_alibi_post_log_scale",
                     **({} if per_row else {"bias_init": "data_dependent_alibi_bias_init"})}, out,
                    f"the{' per-row' if per_row else ''} data-dependent ALiBi")


def _forward_kwargs(given: dict, name: str, fields: dict[str, str], out: dict, what: str) -> None:
    """A dict of keyword arguments x-transformers forwards to a submodule: each key that arlm maps
    onto a ModelConfig field sets it; any other key is refused (x-transformers would pass it on)."""
    for key, value in given.items():
        if key not in fields:
            allowed = ", ".join(sorted(fields)) or "none"
            raise TypeError(f"{name}: key {key!r} is not supported for {what} (supported keys: {allowed})")
        out[fields[key]] = [float(v) for v in value] if key == "slopes" else float(value)


_NORM_CHOICES = {"use_rmsnorm": "rmsnorm", "use_scalenorm": "scalenorm", "use_simple_rmsnorm": "simple_rmsnorm",
                 "use_dynamic_tanh": "dynamic_tanh", "use_derf": "derf"}


def _norm_fields(kw: dict, out: dict) -> None:
    _exclusive(kw, tuple(_NORM_CHOICES), "norm")
    out["norm"] = next((norm for name, norm in _NORM_CHOICES.items() if kw.get(name)), "layernorm")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _residual_fields(kw: dict, out: dict) -> None:
    # as x-transformers: a number given to depth_scale_residual (else to scale_residual) scales every
    # branch output; depth_scale_residual=True is the depth-scaled output init instead
    scale, depth_scale = kw.get("scale_residual", False), kw.get("depth_scale_residual", False)
    out["scale_residual"] = bool(scale)
    out["depth_scale_residual"] = depth_scale is True
    if _is_number(depth_scale) or _is_number(scale):
        out["branch_output_scale"] = float(depth_scale if _is_number(depth_scale) else scale)
    for key, value in (kw.get("residual_fn_kwargs") or {}).items():
        if key not in _RESIDUAL_FN_KEYS:
            raise TypeError(f"residual_fn_kwargs key {key!r} is not supported; arlm takes "
                            f"{', '.join(sorted(_RESIDUAL_FN_KEYS))} (options of the residual update are "
                            "Decoder keywords, e.g. scale_residual, scale_residual_constant)")
        option, field, conv = _RESIDUAL_FN_KEYS[key]
        if not kw.get(option):
            raise TypeError(f"residual_fn_kwargs key {key!r} configures {option}, which is off")
        out[field] = conv(value)


def _stream_fields(kw: dict, out: dict) -> None:
    agg = kw.get("attn_aggregated_residual_kwargs") or {}
    for key, value in agg.items():
        if key not in ("lora_rank", "lora_activation"):
            raise TypeError(f"attn_aggregated_residual_kwargs key {key!r} is not supported; arlm takes lora_rank")
        if key == "lora_activation" and value is not None:
            raise TypeError("attn_aggregated_residual_kwargs lora_activation is not supported (a module is not a "
                            "config value); leave it None")
    if agg.get("lora_rank") is not None:
        out["attn_aggregated_lora_rank"] = int(agg["lora_rank"])


def _attn_proj_fields(kw: dict, out: dict) -> None:
    dim_out = kw.get("attn_dim_out")
    if dim_out is not None and dim_out != out["dim"]:
        raise TypeError(f"attn_dim_out={dim_out} is refused: inside a Decoder each attention output is added "
                        f"to the residual stream, so it must be dim={out['dim']} (x-transformers fails there too)")


def _attn_score_fields(kw: dict, out: dict) -> None:
    pass


def _ff_fields(kw: dict, out: dict) -> None:
    _exclusive(kw, ("ff_swish", "ff_relu_squared", "ff_solu", "ff_custom_activation"), "activation")
    out["ff_activation"] = (kw.get("ff_custom_activation") or ("relu_squared" if kw.get("ff_relu_squared") else
                            "solu" if kw.get("ff_solu") else "swish" if kw.get("ff_swish") else "gelu"))
    out["ff_bias"] = not kw.get("ff_no_bias", False)
    if kw.get("ff_dim_out") not in (None, out["dim"]):
        raise TypeError(f"ff_dim_out={kw['ff_dim_out']} is refused: inside a Decoder the feed-forward output is "
                        f"added to the residual stream, so it must be dim={out['dim']} (leave it unset)")

"""Every architecture option passes the same property matrix: causal (exactly), cached decoding
equals full recomputation, left-padded rows equal solo rows, 20 AdamW steps reduce the loss on a
fixed batch, and the option survives the YAML round trip of its ModelConfig.

``OPTIONS`` is also the parity matrix of tests/test_x_transformers_parity.py: an entry is
(Decoder kwargs, TransformerWrapper kwargs, has an x-transformers twin).
"""

from __future__ import annotations

import pytest
import torch
from conftest import reinit

from arlm import AutoregressiveWrapper, Decoder, RunConfig, Transformer, TransformerWrapper

V, SEQ = 40, 24


BASE = dict(dim=32, depth=2, heads=2, attn_dim_head=16)

CORE: dict[str, tuple[dict, dict, bool]] = {
    "baseline": ({}, {}, True),
    "attn_one_kv_head": ({"attn_one_kv_head": True}, {}, True),
    "attn_kv_heads": ({"heads": 4, "attn_kv_heads": 2}, {}, True),
    "ff_glu_swish": ({"ff_glu": True, "ff_swish": True}, {}, True),
    "ff_relu_squared": ({"ff_relu_squared": True}, {}, True),
    "ff_no_bias": ({"ff_no_bias": True}, {}, True),
    "ff_post_act_ln": ({"ff_post_act_ln": True}, {}, True),
    "use_rmsnorm": ({"use_rmsnorm": True}, {}, True),
    "use_simple_rmsnorm": ({"use_simple_rmsnorm": True}, {}, True),
    "use_scalenorm": ({"use_scalenorm": True}, {}, True),
    "scaled_sinu_pos_emb": ({}, {"scaled_sinu_pos_emb": True}, True),
    "no_abs_pos_emb": ({}, {"use_abs_pos_emb": False}, True),
    "rotary_pos_emb": ({"rotary_pos_emb": True}, {}, True),
    "rotary_emb_dim": ({"rotary_pos_emb": True, "rotary_emb_dim": 4}, {}, True),
    "rotary_xpos": ({"rotary_xpos": True}, {}, True),
    "rotary_interpolation_factor": ({"rotary_pos_emb": True, "rotary_interpolation_factor": 2.0}, {}, True),
    "rotary_base_rescale_factor": ({"rotary_pos_emb": True, "rotary_base_rescale_factor": 2.0}, {}, True),
    "rotary_base": ({"rotary_pos_emb": True, "rotary_base": 500.0}, {}, False),  # arlm-only
    "alibi_pos_bias": ({"alibi_pos_bias": True}, {}, True),
    "alibi_num_heads": ({"heads": 4, "alibi_pos_bias": True, "alibi_num_heads": 2}, {}, True),
    "attn_max_attend_past": ({"attn_max_attend_past": 3}, {}, True),
    "attn_softclamp_logits": ({"attn_softclamp_logits": True, "attn_logit_softclamp_value": 2.0}, {}, True),
    "attn_gate_values": ({"attn_gate_values": True}, {}, True),
    "attn_head_scale": ({"attn_head_scale": True}, {}, True),
    "attn_qk_norm": ({"attn_qk_norm": True}, {}, True),
    "l2norm_embed": ({}, {"l2norm_embed": True}, True),
    "post_emb_norm": ({}, {"post_emb_norm": True}, True),
    "tie_embedding": ({}, {"tie_embedding": True}, True),
    "sandwich_norm": ({"sandwich_norm": True}, {}, True),
    "post_norm": ({"pre_norm": False}, {}, True),
    "attn_num_mem_kv": ({"attn_num_mem_kv": 2}, {}, True),
    "attn_add_zero_kv": ({"attn_add_zero_kv": True}, {}, True),
    "gate_residual": ({"gate_residual": True}, {}, True),
    "scale_residual": ({"scale_residual": True}, {}, True),
    "zero_init_branch_output": ({"zero_init_branch_output": True}, {}, True),
    "num_memory_tokens": ({"rotary_pos_emb": True}, {"num_memory_tokens": 2}, True),
    "softclamp_output": ({"softclamp_output": True, "softclamp_output_value": 1.0}, {}, True),
    "attn_on_attn": ({"attn_on_attn": True}, {}, True),
    "talking_heads": ({"attn_pre_talking_heads": True, "attn_post_talking_heads": True}, {}, True),
    "attn_sparse_topk": ({"attn_sparse_topk": 3}, {}, True),
    "residual_attn": ({"residual_attn": True}, {}, True),
    "rel_pos_bias": ({"rel_pos_bias": True, "rel_pos_num_buckets": 8, "rel_pos_max_distance": 16}, {}, True),
    "dynamic_pos_bias": ({"dynamic_pos_bias": True, "dynamic_pos_bias_log_distance": True}, {}, True),
    "shift_tokens": ({"shift_tokens": 1}, {}, True),
    "shift_tokens_2": ({"shift_tokens": 2, "pre_norm": False}, {}, True),
    "macaron": ({"macaron": True}, {}, True),
    "par_ratio": ({"depth": 3, "par_ratio": 2}, {}, True),
    "custom_layers": ({"custom_layers": ("a", "a", "f")}, {}, True),
    "sandwich_coef": ({"depth": 3, "sandwich_coef": 1}, {}, True),
    "weight_tie_layers": ({"weight_tie_layers": True}, {}, True),
    "add_value_residual": ({"add_value_residual": True}, {}, True),
    # per-layer values, as x-transformers' tuples (one per attention / feed-forward sublayer)
    "per_layer_tuples": ({"ff_mult": (4, 2), "ff_glu": (True, False), "ff_swish": (True, False),
                          "attn_dropout": (0.0, 0.1), "attn_qk_norm": (True, False), "attn_head_scale": (False, True)},
                         {}, True),
    # interactions: masks, prefixes and carried state together
    "window_alibi_memkv_zerokv": ({"attn_max_attend_past": 4, "alibi_pos_bias": True, "attn_num_mem_kv": 1,
                                   "attn_add_zero_kv": True}, {}, True),
    "explicit_memory_tokens": ({"rotary_pos_emb": True, "residual_attn": True, "attn_sparse_topk": 4,
                                "attn_softclamp_logits": True}, {"num_memory_tokens": 1}, True),
    "shift_value_residual_gqa": ({"heads": 4, "attn_kv_heads": 4, "shift_tokens": 1, "add_value_residual": True,
                                  "attn_max_attend_past": 5, "macaron": True}, {}, True),
}


# One table per option family (the families of model/), joined into OPTIONS below.
POSITIONS: dict[str, tuple[dict, dict, bool]] = {
    "disable_abs_pos_emb": ({"disable_abs_pos_emb": True}, {}, True),
    "rotary_with_abs_pos_emb": ({"rotary_pos_emb": True, "disable_abs_pos_emb": False}, {}, True),
    "rotary_with_scaled_sinu": ({"rotary_pos_emb": True, "disable_abs_pos_emb": False},
                                {"scaled_sinu_pos_emb": True}, True),
    "rotate_num_heads": ({"heads": 4, "rotary_pos_emb": True, "rotate_num_heads": 1}, {}, True),
    "rotate_num_heads_xpos": ({"rotary_xpos": True, "rotate_num_heads": 1}, {"num_memory_tokens": 1}, True),
    "dynamic_pos_bias_norm": ({"dynamic_pos_bias": True, "dynamic_pos_bias_norm": True,
                               "dynamic_pos_bias_mlp_depth": 3}, {}, True),
    "alibi_custom_slopes": ({"heads": 4, "alibi_pos_bias": True, "alibi_num_heads": 2,
                             "rel_pos_kwargs": {"slopes": [0.5, 0.125]}}, {}, True),
    "polar_pos_emb": ({"rotary_pos_emb": False, "polar_pos_emb": True}, {}, True),
    # x-transformers' enwik8 example (at test size)
    "polar_pre_and_post_norm": ({"rotary_pos_emb": False, "polar_pos_emb": True, "pre_and_post_norm": True}, {}, True),
    "polar_zero_kv_memory_abs": ({"polar_pos_emb": True, "attn_add_zero_kv": True, "disable_abs_pos_emb": False},
                                 {"num_memory_tokens": 1}, True),
    "polar_alibi_topk": ({"polar_pos_emb": True, "alibi_pos_bias": True, "attn_sparse_topk": 4}, {}, True),
    # x-transformers fails on both: grouped-query keys, and the uniform init (an in-place op on a leaf)
    "polar_gqa_uniform_init": ({"heads": 4, "attn_kv_heads": 2, "polar_pos_emb": True,
                                "polar_bias_uniform_init": True}, {}, False),
    "data_dependent_alibi": ({"attn_data_dependent_alibi": True,
                              "attn_data_dependent_alibi_kwargs": {"bias_init": 1.0, "post_log_scale": 2.0}}, {}, True),
    "data_dependent_alibi_memory_window": ({"attn_data_dependent_alibi": True, "attn_max_attend_past": 4,
                                            "attn_add_zero_kv": True,
                                            "attn_data_dependent_alibi_kwargs": {"bias_init": 0.0}},
                                           {"num_memory_tokens": 2}, True),
    "data_dependent_alibi_gqa_softclamp": ({"attn_data_dependent_alibi": True, "heads": 4, "attn_kv_heads": 2,
                                            "attn_softclamp_logits": True, "attn_logit_softclamp_value": 2.0},
                                           {}, True),
    "data_dependent_alibi_per_row": ({"attn_data_dependent_alibi": True, "attn_data_dependent_alibi_per_row": True,
                                      "attn_data_dependent_alibi_per_row_dim_head": 4}, {}, True),
    "data_dependent_alibi_per_row_memory": ({"attn_data_dependent_alibi": True, "attn_data_dependent_alibi_per_row": True,
                                             "residual_attn": True}, {"num_memory_tokens": 2}, True),
    "rel_proj_pos_bias": ({"attn_use_rel_proj_pos_bias": True, "attn_rel_proj_num_distance_basis": 4,
                           "attn_rel_proj_max_dist": 8}, {}, True),
    "rel_proj_with_data_dependent_alibi": ({"attn_use_rel_proj_pos_bias": True, "attn_rel_proj_max_dist": 8,
                                            "attn_data_dependent_alibi": True}, {"num_memory_tokens": 1}, True),
    "rel_proj_alibi_memory": ({"attn_use_rel_proj_pos_bias": True, "alibi_pos_bias": True, "rotary_pos_emb": True,
                               "attn_rel_proj_max_dist": 30}, {"num_memory_tokens": 1}, True),
    "attn_use_cope": ({"attn_use_cope": True}, {}, True),
    "cope_talking_heads_small_max_pos": ({"attn_use_cope": True, "attn_cope_max_pos": 4, "attn_cope_talking_heads": True},
                                         {}, True),
    "cope_gqa_memory_tokens": ({"attn_use_cope": True, "heads": 4, "attn_kv_heads": 2}, {"num_memory_tokens": 1}, True),
    "cope_residual_mem_kv": ({"attn_use_cope": True, "attn_cope_max_pos": 4, "residual_attn": True,
                              "attn_num_mem_kv": 2}, {}, True),
    # x-transformers' soft one-hot fails on its own shapes: no twin
    "cope_soft_onehot_window": ({"attn_use_cope": True, "attn_cope_soft_onehot_pos": True, "attn_max_attend_past": 4,
                                 "attn_cope_talking_heads": True}, {"num_memory_tokens": 1}, False),
    # (positions: new options go here)
}

NORMS: dict[str, tuple[dict, dict, bool]] = {
    "pre_and_post_norm": ({"pre_and_post_norm": True}, {}, True),
    "pre_and_post_norm_sandwich_rmsnorm": ({"pre_and_post_norm": True, "sandwich_norm": True, "use_rmsnorm": True},
                                           {}, True),
    "pre_and_post_norm_post_norm": ({"pre_and_post_norm": True, "pre_norm": False}, {}, True),
    "no_final_norm": ({"pre_norm_has_final_norm": False}, {}, True),
    # per-head q/k/v gains keep their unit offset in x-transformers whatever norm_add_unit_offset says
    "norm_add_unit_offset_off": ({"norm_add_unit_offset": False, "use_scalenorm": True, "use_layerscale": True,
                                  "layerscale_init_value": 0.1, "attn_qk_rmsnorm": True}, {}, True),
    "use_layerscale": ({"use_layerscale": True}, {}, True),
    "layerscale_macaron_sandwich": ({"use_layerscale": True, "layerscale_init_value": 0.1, "macaron": True,
                                     "sandwich_norm": True}, {}, True),
    "use_dynamic_tanh": ({"use_dynamic_tanh": True, "dynamic_tanh_init_alpha": 0.5}, {}, True),
    "dynamic_tanh_unit_offset_off": ({"use_dynamic_tanh": True, "dynamic_tanh_init_alpha": 2.0,
                                      "norm_add_unit_offset": False}, {}, True),
    "use_derf": ({"use_derf": True}, {}, True),
    "derf_unit_offset_off": ({"use_derf": True, "norm_add_unit_offset": False, "pre_and_post_norm": True}, {}, True),
    "attn_qk_norm_groups": ({"attn_qk_norm": True, "attn_qk_norm_groups": 4}, {}, True),
    "attn_qk_norm_dim_scale": ({"attn_qk_norm": True, "attn_qk_norm_dim_scale": True}, {}, True),
    "attn_qk_norm_dim_scale_gqa_memkv": ({"heads": 4, "attn_kv_heads": 2, "attn_qk_norm": True, "attn_qk_norm_groups": 2,
                                          "attn_qk_norm_dim_scale": True, "attn_num_mem_kv": 2}, {}, True),
    "attn_qk_rmsnorm": ({"attn_qk_rmsnorm": True}, {}, True),
    "attn_qk_rmsnorm_gqa_memkv_rotary": ({"heads": 4, "attn_kv_heads": 2, "attn_qk_rmsnorm": True, "attn_num_mem_kv": 2,
                                          "rotary_pos_emb": True}, {}, True),
    "attn_k_rmsnorm": ({"attn_k_rmsnorm": True, "attn_qk_norm": True, "attn_num_mem_kv": 1}, {}, True),
    "attn_value_rmsnorm": ({"attn_value_rmsnorm": True, "attn_num_mem_kv": 2, "add_value_residual": True}, {}, True),
    "attn_value_rmsnorm_gqa": ({"heads": 4, "attn_kv_heads": 2, "attn_value_rmsnorm": True}, {}, False),  # x-transformers fails on it
    "enwik8_pre_and_post_norm_polar_qk_rmsnorm": ({"polar_pos_emb": True, "pre_and_post_norm": True,
                                                   "attn_qk_rmsnorm": True}, {}, True),
    "qk_norm_dim_scale_latent_kv": ({"attn_use_latent_kv": True, "attn_dim_latent_kv": 16, "attn_qk_norm": True,
                                     "attn_qk_norm_dim_scale": True}, {}, True),
    "value_rmsnorm_value_dim_head": ({"attn_value_dim_head": 8, "attn_value_rmsnorm": True}, {}, False),  # x-transformers fails on it
    "per_layer_qkv_norms": ({"attn_qk_norm": True, "attn_qk_norm_dim_scale": (True, False), "attn_qk_rmsnorm": (False, True),
                             "attn_value_rmsnorm": (True, False), "attn_num_mem_kv": 1}, {}, True),
    "dynamic_tanh_post_norm": ({"use_dynamic_tanh": True, "pre_norm": False}, {}, False),  # x-transformers asserts pre-norm
    "derf_post_norm": ({"use_derf": True, "pre_norm": False}, {}, True),
    "layerscale_shift_tokens_weight_tied": ({"use_layerscale": True, "layerscale_init_value": 0.3, "shift_tokens": 1,
                                             "weight_tie_layers": True, "pre_and_post_norm": True}, {}, True),
    # arlm only (Hugging Face import): GPT-2's LayerNorm biases and epsilon, Llama's RMSNorm epsilon
    "norm_bias_eps": ({"norm_bias": True, "norm_eps": 1e-3}, {}, False),
    "rmsnorm_eps": ({"use_rmsnorm": True, "norm_eps": 1e-6}, {}, False),
    # (norms: new options go here)
}

RESIDUAL: dict[str, tuple[dict, dict, bool]] = {
    "layers_execute_order": ({"layers_execute_order": (0, 1, 0, 1, 2, 3)}, {}, True),
    # ff before attention, attention 2 run twice (once without its ff): blocks split per sublayer
    "layers_execute_order_split": ({"layers_execute_order": (1, 0, 2, 3, 2), "add_value_residual": True,
                                    "residual_attn": True, "shift_tokens": 1}, {}, True),
    "layers_execute_order_memory": ({"layers_execute_order": (2, 3, 0, 2, 3), "add_value_residual": True,
                                     "rotary_pos_emb": True}, {"num_memory_tokens": 2}, True),
    "only_attn": ({"only_attn": True}, {}, True),
    "only_attn_par_ratio": ({"depth": 4, "only_attn": True, "par_ratio": 2}, {}, True),
    "scale_residual_constant": ({"scale_residual_constant": 0.7, "scale_residual": True}, {}, True),
    "scale_residual_number": ({"scale_residual": 0.5}, {}, True),  # learned scale, and every branch output x0.5
    "depth_scale_residual_number": ({"depth_scale_residual": 0.5, "macaron": True, "sandwich_norm": True}, {}, True),
    "depth_scale_residual": ({"depth_scale_residual": True}, {}, True),
    "value_residual_fixed_mix": ({"add_value_residual": True, "learned_value_residual_mix": False}, {}, True),
    "reinject_input": ({"reinject_input": True}, {}, True),
    "learned_reinject_input_gate": ({"reinject_input": True, "learned_reinject_input_gate": True, "pre_norm": False},
                                    {"num_memory_tokens": 2}, True),
    "unet_skips": ({"depth": 4, "unet_skips": True}, {}, True),
    "unet_skips_odd_depth": ({"depth": 5, "unet_skips": True, "reinject_input": True}, {"num_memory_tokens": 1}, True),
    "unet_skips_macaron": ({"depth": 3, "unet_skips": True, "macaron": True}, {}, True),
    # x-transformers projects / averages over the whole sequence (not causal): arlm per token /
    # over the positions so far; tests/test_residual.py compares what can be compared
    "orthog_residual": ({"orthog_residual": True, "scale_residual": True}, {"num_memory_tokens": 1}, False),
    "mv_split_residual": ({"mv_split_residual": True, "residual_fn_kwargs": {"init_alpha": 0.2, "init_beta": 0.5}},
                          {}, False),
    "mv_split_learned": ({"mv_split_residual": True, "residual_fn_kwargs": {"learned": True, "init_beta": 0.5},
                          "macaron": True}, {"num_memory_tokens": 2}, False),
    "mv_split_post_norm_execute_order": ({"mv_split_residual": True, "pre_norm": False,
                                          "layers_execute_order": (0, 1, 2, 3, 2, 3)}, {}, False),
    "only_attn_weight_tie": ({"only_attn": True, "weight_tie_layers": True, "depth": 3}, {}, True),
    "orthog_residual_post_norm": ({"orthog_residual": True, "pre_norm": False, "shift_tokens": 1}, {}, False),
    "reinject_gate_residual_execute_order": ({"reinject_input": True, "gate_residual": True,
                                              "layers_execute_order": (0, 1, 0, 1, 2, 3)}, {}, True),
    # (residual and layer structure: new options go here)
}

# several residual streams and layer integration (model/streams.py)
STREAMS: dict[str, tuple[dict, dict, bool]] = {
    "hyper_connections": ({"num_residual_streams": 4}, {}, True),
    "hyper_connections_sinkhorn_iters": ({"num_residual_streams": 3, "hyper_conn_sinkhorn_iters": 2}, {}, True),
    "hyper_connections_mhc": ({"num_residual_streams": 3, "hyper_conn_residual_mix": "sinkhorn"}, {}, False),  # arlm-only
    "hyper_connections_qkv": ({"num_residual_streams": 2, "qkv_receive_diff_residuals": True}, {}, True),
    "hyper_connections_post_norm": ({"num_residual_streams": 2, "pre_norm": False, "sandwich_norm": False}, {}, True),
    "hyper_connections_memory": ({"num_residual_streams": 2, "rotary_pos_emb": True, "softclamp_output": True,
                                  "softclamp_output_value": 2.0}, {"num_memory_tokens": 2}, True),
    "hyper_connections_qkv_mem_kv": ({"num_residual_streams": 2, "qkv_receive_diff_residuals": True, "attn_num_mem_kv": 1,
                                      "attn_gate_values": True}, {"num_memory_tokens": 1},
                                     False),  # x-transformers' memory kv and value gate break on three views
    "hyper_connections_shift_macaron": ({"num_residual_streams": 2, "shift_tokens": 1, "macaron": True,
                                         "sandwich_norm": True, "alibi_pos_bias": True}, {}, True),
    "hyper_connections_execute_order": ({"num_residual_streams": 2, "layers_execute_order": (0, 1, 0, 1, 2, 3)},
                                        {}, True),
    "hyper_connections_unet_skips": ({"num_residual_streams": 2, "depth": 4, "unet_skips": True}, {}, True),
    "hyper_connections_reinject": ({"num_residual_streams": 2, "reinject_input": True}, {},
                                   False),  # x-transformers adds the (B*N)-row input to B-row branch inputs
    "gated_multi_residual_reinject": ({"gated_multi_residual": True, "residual_fn_kwargs": {"read_gate_rank": 4},
                                       "reinject_input": True, "learned_reinject_input_gate": True}, {}, True),
    "hyper_connections_pre_and_post_norm": ({"num_residual_streams": 2, "pre_and_post_norm": True, "use_layerscale": True,
                                            "layerscale_init_value": 0.5}, {}, True),
    # without a final norm the summed streams grow N-fold per branch: soft-capped so fp32 logits compare at 1e-5
    "hyper_connections_no_final_norm": ({"num_residual_streams": 2, "pre_norm_has_final_norm": False,
                                         "softclamp_output": True, "softclamp_output_value": 4.0}, {}, True),
    "integrate_layers": ({"integrate_layers": True}, {}, True),
    "integrate_layers_relu": ({"integrate_layers": True, "layer_integrate_use_softmax": False, "macaron": True}, {}, True),
    "integrate_layers_hyper": ({"integrate_layers": True, "num_residual_streams": 2, "gate_residual": False,
                                "rotary_pos_emb": True}, {}, True),
    "integrate_layers_memory": ({"integrate_layers": True, "gate_residual": True, "attn_gate_values": True,
                                 "add_value_residual": True, "attn_num_mem_kv": 1}, {"num_memory_tokens": 1}, False),
    "gated_multi_residual": ({"gated_multi_residual": True, "num_residual_streams": 3,
                              "residual_fn_kwargs": {"read_gate_rank": 4}}, {}, True),
    "gated_multi_residual_single": ({"gated_multi_residual": True, "residual_fn_kwargs": {"read_gate_rank": 4}},
                                    {}, True),
    "gated_multi_residual_qkv": ({"gated_multi_residual": True, "num_residual_streams": 2,
                                  "qkv_receive_diff_residuals": True, "residual_fn_kwargs": {"read_gate_rank": 4}},
                                 {}, True),
    "attn_aggregated_residuals": ({"attn_aggregated_residuals": True,
                                   "attn_aggregated_residual_kwargs": {"lora_rank": 8}}, {}, True),
    "attn_aggregated_residuals_qkv": ({"attn_aggregated_residuals": True, "qkv_receive_diff_residuals": True,
                                       "attn_aggregated_residual_kwargs": {"lora_rank": 8}}, {}, True),
    "attn_aggregated_residuals_hyper": ({"attn_aggregated_residuals": True, "num_residual_streams": 2,
                                         "attn_aggregated_residual_kwargs": {"lora_rank": 4}}, {}, True),
}

ATTN_PROJ: dict[str, tuple[dict, dict, bool]] = {
    "attn_value_dim_head": ({"attn_value_dim_head": 8, "rotary_pos_emb": True}, {}, True),
    # x-transformers' memory values keep the query head size, so it fails on this combination
    "value_dim_head_gqa_memkv_zerokv": ({"heads": 4, "attn_kv_heads": 2, "attn_value_dim_head": 24, "attn_num_mem_kv": 2,
                                         "attn_add_zero_kv": True, "add_value_residual": True}, {}, False),
    # x-transformers' value norm takes the query head size, so it fails on this combination
    "value_dim_head_value_rmsnorm_laser": ({"attn_value_dim_head": 8, "attn_value_rmsnorm": True, "attn_laser": True,
                                            "attn_qk_rmsnorm": True}, {}, False),
    "attn_zero_init_output": ({"attn_zero_init_output": True}, {}, True),
    "attn_sublayer_dropout": ({"attn_sublayer_dropout": 0.1}, {}, True),
    # an init only; x-transformers' Decoder passes its own output_proj_depth, so the keyword fails there
    "attn_output_proj_depth": ({"attn_output_proj_depth": 2}, {}, False),
    "attn_project_out_false": ({"attn_project_out": False}, {}, True),
    "attn_project_out_one_head": ({"heads": 1, "attn_dim_head": 32, "attn_project_out": True}, {}, True),
    "attn_dim_out": ({"attn_dim_out": 32}, {}, True),
    "attn_gate_values_rank": ({"attn_gate_values": True, "attn_gate_values_rank": 4}, {}, True),
    "attn_gate_values_headwise": ({"attn_gate_values": True, "attn_gate_values_headwise": True}, {}, True),
    "attn_output_gate": ({"attn_output_gate": True}, {}, True),
    "attn_output_gate_rank": ({"attn_output_gate": True, "attn_output_gate_rank": 4,
                               "attn_low_rank_silu_gates": False}, {}, True),
    "attn_output_gate_headwise": ({"attn_output_gate": True, "attn_output_gate_headwise": True}, {}, True),
    "hybrid_gates_swiglu_values": ({"attn_gate_values": True, "attn_gate_values_rank": 4, "attn_output_gate": True,
                                    "attn_output_gate_headwise": True, "attn_swiglu_values": True,
                                    "heads": 4, "attn_kv_heads": 2}, {}, True),
    "attn_gate_value_heads": ({"attn_gate_value_heads": True}, {}, True),
    "attn_head_learned_sink": ({"attn_head_learned_sink": True, "rotary_pos_emb": True}, {}, True),
    "sink_gqa_memkv_zerokv_alibi": ({"attn_head_learned_sink": True, "heads": 4, "attn_kv_heads": 2,
                                     "attn_num_mem_kv": 2, "attn_add_zero_kv": True, "alibi_pos_bias": True}, {}, True),
    "sink_laser_gqa": ({"attn_head_learned_sink": True, "attn_laser": True, "heads": 4, "attn_kv_heads": 2},
                                 {}, True),
    "sink_l2_distance": ({"attn_head_learned_sink": True, "attn_l2_distance": True}, {}, True),
    "sink_memory_tokens_window": ({"attn_head_learned_sink": True, "rotary_pos_emb": True, "attn_max_attend_past": 3},
                                  {"num_memory_tokens": 2}, True),
    # x-transformers projects over the whole sequence (not causal); arlm projects per token
    "attn_orthog_projected_values": ({"attn_orthog_projected_values": True}, {}, False),
    "attn_orthog_projected_values_per_head": ({"attn_orthog_projected_values_per_head": True, "heads": 4,
                                               "attn_kv_heads": 2, "attn_num_mem_kv": 1}, {}, False),
    "orthog_both_project_out_false": ({"attn_orthog_projected_values": True, "attn_orthog_projected_values_per_head": True,
                                       "attn_dim_head": 8, "attn_project_out": False}, {}, False),
    "attn_use_latent_q": ({"attn_use_latent_q": True, "attn_dim_latent_q": 8, "rotary_pos_emb": True}, {}, True),
    "attn_use_latent_kv": ({"attn_use_latent_kv": True, "attn_dim_latent_kv": 8, "heads": 4, "attn_kv_heads": 2,
                            "attn_num_mem_kv": 1}, {}, True),
    "attn_latent_rope_subheads": ({"attn_use_latent_q": True, "attn_dim_latent_q": 12, "attn_use_latent_kv": True,
                                   "attn_dim_latent_kv": 8, "attn_latent_rope_subheads": 1, "heads": 4,
                                   "rotary_pos_emb": True}, {}, True),
    "latent_rope_subheads_xpos_qk_norm": ({"attn_use_latent_kv": True, "attn_dim_latent_kv": 8,
                                           "attn_latent_rope_subheads": 1, "rotary_xpos": True, "attn_qk_norm": True},
                                          {}, True),
    # the cache holds latents (config.latent_kv_cache) in these three
    "latent_kv_cache_gqa": ({"attn_use_latent_kv": True, "attn_dim_latent_kv": 12, "heads": 4, "attn_kv_heads": 2,
                             "attn_value_dim_head": 8}, {}, True),
    "latent_kv_cache_rope_explicit": ({"attn_use_latent_q": True, "attn_dim_latent_q": 12, "attn_use_latent_kv": True,
                                       "attn_dim_latent_kv": 8, "attn_latent_rope_subheads": 2, "heads": 4,
                                       "rotary_pos_emb": True, "attn_pre_talking_heads": True,
                                       "attn_post_talking_heads": True, "attn_sparse_topk": 4, "alibi_pos_bias": True},
                                      {"num_memory_tokens": 1}, True),
    "latent_kv_cache_sink_orthog_xpos": ({"attn_use_latent_kv": True, "attn_dim_latent_kv": 8,
                                          "attn_latent_rope_subheads": 1, "rotary_xpos": True,
                                          "attn_head_learned_sink": True, "attn_orthog_projected_values": True,
                                          "attn_gate_value_heads": True, "attn_max_attend_past": 4}, {}, False),
    "per_layer_gates_sink_orthog": ({"attn_output_gate": (True, False), "attn_gate_values": (False, True),
                                     "attn_gate_values_rank": (None, 4), "attn_head_learned_sink": (False, True),
                                     "attn_gate_value_heads": (True, False), "attn_zero_init_output": (True, False)},
                                    {}, True),
    "per_layer_orthog": ({"attn_orthog_projected_values": (True, False)}, {}, False),
    # arlm only (Hugging Face import): projection biases, also on the per-view projections of hyper-connections
    "attn_bias": ({"heads": 4, "attn_kv_heads": 2, "attn_bias": True}, {}, False),
    "attn_bias_qkv_views": ({"num_residual_streams": 2, "qkv_receive_diff_residuals": True, "attn_bias": True},
                            {}, False),
    # (attention projections, gates and values: new options go here)
}

ATTN_SCORES: dict[str, tuple[dict, dict, bool]] = {
    # (attention scores and kernels: new options go here)
    "attn_sigmoid": ({"attn_sigmoid": True}, {}, True),
    "attn_hard": ({"attn_hard": True}, {}, True),
    "attn_l2_distance": ({"attn_l2_distance": True}, {}, True),
    "attn_cog_signed": ({"attn_cog_signed": True}, {}, True),
    "attn_laser": ({"attn_laser": True, "attn_laser_softclamp_value": 2.0}, {}, True),
    "attn_sparse_topk_straight_through": ({"attn_sparse_topk": 3, "attn_sparse_topk_straight_through": True}, {}, True),
    "attn_pre_scale_post_talking_heads": ({"attn_pre_scale_post_talking_heads": True}, {}, True),
    # x-transformers samples Gumbel noise in eval too; arlm takes the noiseless mode there
    "attn_gumbel_softmax": ({"attn_gumbel_softmax": True}, {}, False),
    "attn_gumbel_softmax_soft": ({"attn_gumbel_softmax": True, "attn_gumbel_softmax_hard": False,
                                  "attn_gumbel_softmax_temp": 0.5}, {}, False),
    "attn_selective": ({"attn_selective": True}, {}, True),
    # interactions: prefixes, grouped heads, biases and memory tokens with each kernel change
    "selective_memory_gqa_alibi": ({"attn_selective": True, "heads": 4, "attn_kv_heads": 2, "attn_num_mem_kv": 1,
                                    "attn_add_zero_kv": True, "alibi_pos_bias": True}, {}, True),
    "selective_memory_tokens": ({"attn_selective": True, "rotary_pos_emb": True, "attn_max_attend_past": 6},
                                {"num_memory_tokens": 2}, True),
    "laser_memkv_zerokv_gqa": ({"attn_laser": True, "attn_num_mem_kv": 2, "attn_add_zero_kv": True, "heads": 4,
                                "attn_kv_heads": 2}, {}, True),
    "l2_memkv_zerokv_gqa_alibi": ({"attn_l2_distance": True, "attn_num_mem_kv": 2, "attn_add_zero_kv": True,
                                   "heads": 4, "attn_kv_heads": 2, "alibi_pos_bias": True}, {}, True),
    # (cog with residual_attn: x-transformers turns its masked -max scores into NaN, so no twin for that pair)
    "cog_softclamp_talking": ({"attn_cog_signed": True, "attn_softclamp_logits": True, "attn_pre_talking_heads": True,
                               "attn_post_talking_heads": True, "attn_pre_scale_post_talking_heads": True}, {}, True),
    "cog_residual_attn": ({"attn_cog_signed": True, "residual_attn": True}, {}, False),
    "sigmoid_window_alibi_memkv": ({"attn_sigmoid": True, "attn_max_attend_past": 4, "alibi_pos_bias": True,
                                    "attn_num_mem_kv": 1}, {"num_memory_tokens": 1}, True),
    "selective_cope_softclamp": ({"attn_selective": True, "attn_use_cope": True, "attn_cope_max_pos": 8,
                                  "attn_softclamp_logits": True}, {}, True),
    "laser_l2_sink_gqa": ({"attn_laser": True, "attn_l2_distance": True, "attn_head_learned_sink": True,
                           "heads": 4, "attn_kv_heads": 2}, {}, True),
    "sigmoid_cog_qk_norm": ({"attn_sigmoid": True, "attn_cog_signed": True, "attn_qk_norm": True}, {}, True),
    "per_layer_laser_l2": ({"attn_laser": (True, False), "attn_laser_softclamp_value": (2.0, 15.0),
                            "attn_l2_distance": (False, True)}, {}, True),
    "per_layer_topk_straight_through": ({"attn_sparse_topk": 3, "attn_sparse_topk_straight_through": (True, False)},
                                        {}, True),
    "hard_selective_rel_pos": ({"attn_hard": True, "attn_selective": True, "rel_pos_bias": True,
                                "rel_pos_num_buckets": 8, "rel_pos_max_distance": 16}, {}, True),
}

FEEDFORWARD: dict[str, tuple[dict, dict, bool]] = {
    "ff_solu": ({"ff_solu": True}, {}, True),
    "ff_solu_glu": ({"ff_solu": True, "ff_glu": True, "ff_post_act_ln": True}, {}, True),
    "ff_glu_mult_bias": ({"ff_glu": True, "ff_glu_mult_bias": True}, {}, True),
    "ff_glu_softclamp_gelu": ({"ff_glu": True, "ff_glu_softclamp": True, "ff_glu_gate_softclamp_value": 0.5,
                               "ff_glu_up_softclamp_value": 0.3}, {}, True),
    "ff_glu_softclamp_swish": ({"ff_glu": True, "ff_swish": True, "ff_glu_softclamp": True,
                                "ff_glu_gate_softclamp_value": 0.5, "ff_glu_up_softclamp_value": 0.3}, {}, True),
    "ff_softclamp_value": ({"ff_softclamp_value": 0.2}, {}, True),
    "ff_zero_init_output": ({"ff_zero_init_output": True}, {}, True),
    "ff_output_proj_depth": ({"ff_output_proj_depth": 3}, {}, False),  # x-transformers' Decoder passes its own
    "ff_sublayer_dropout": ({"ff_sublayer_dropout": 0.1}, {}, True),
    "ff_dim_out": ({"ff_dim_out": 32}, {}, True),
    "ff_custom_activation_gelu_tanh": ({"ff_custom_activation": torch.nn.GELU(approximate="tanh")}, {}, True),
    "ff_custom_activation_mish_glu": ({"ff_custom_activation": torch.nn.Mish(), "ff_glu": True}, {}, True),
    "ff_custom_activation_relu": ({"ff_custom_activation": torch.nn.ReLU()}, {}, True),
    "ff_custom_activation_softplus": ({"ff_custom_activation": torch.nn.Softplus()}, {}, True),
    "ff_per_layer_variants": ({"ff_glu": True, "ff_glu_mult_bias": (True, False), "ff_glu_softclamp": True,
                               "ff_glu_gate_softclamp_value": (4.0, 0.5), "ff_sublayer_dropout": (0.0, 0.1)}, {}, True),
    # arlm only (Hugging Face import): Llama's bias-free SwiGLU
    "ff_glu_no_bias": ({"ff_glu": True, "ff_swish": True, "ff_no_bias": True, "ff_glu_bias": False}, {}, False),
    # (feed-forward: new options go here)
}

EMBEDDING: dict[str, tuple[dict, dict, bool]] = {
    "emb_dim": ({}, {"emb_dim": 16}, True),
    "emb_dim_rotary": ({"rotary_pos_emb": True}, {"emb_dim": 16}, True),  # the lean decode path
    "emb_dim_norms": ({}, {"emb_dim": 48, "post_emb_norm": True, "l2norm_embed": True}, True),
    "emb_dim_sinusoidal_memory": ({}, {"emb_dim": 24, "scaled_sinu_pos_emb": True, "num_memory_tokens": 2}, True),
    "tie_embedding_scale": ({}, {"tie_embedding": True, "tie_embedding_scale": 0.5}, True),
    "emb_frac_gradient": ({}, {"emb_frac_gradient": 0.1}, True),
    "logits_dim": ({}, {"logits_dim": V + 3}, True),
    "sigsoftmax_logits": ({}, {"sigsoftmax_logits": True}, True),
    "mixture_of_softmax": ({}, {"mixture_of_softmax": True, "mixture_of_softmax_k": 3}, True),
    "mixture_of_softmax_tied_sigsoftmax": ({}, {"mixture_of_softmax": True, "tie_embedding": True,
                                                "sigsoftmax_logits": True}, True),
    "ff_deep_embed": ({"rotary_pos_emb": True}, {"ff_deep_embed": True}, True),
    "ff_deep_embed_custom_layers": ({"depth": None, "custom_layers": ("a", "f", "a", "f", "f")}, {"ff_deep_embed": True},
                                    True),
    "ff_deep_embed_macaron": ({"macaron": True, "sandwich_norm": True}, {"ff_deep_embed": True}, True),
    # x-transformers cannot combine these (its multipliers miss the memory rows): arlm scales tokens only
    "ff_deep_embed_memory_tokens": ({"rotary_pos_emb": True}, {"ff_deep_embed": True, "num_memory_tokens": 2}, False),
    "add_continuous_pred_head": ({}, {"add_continuous_pred_head": True}, True),
    # (embedding and output: new options go here)
}

OPTIONS: dict[str, tuple[dict, dict, bool]] = {
    **CORE, **POSITIONS, **NORMS, **RESIDUAL, **STREAMS, **ATTN_PROJ, **ATTN_SCORES, **FEEDFORWARD, **EMBEDDING,
}

def build(name: str, seed: int = 0) -> TransformerWrapper:
    dec, wrap, _ = OPTIONS[name]
    torch.manual_seed(seed)
    net = TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(**{**BASE, **dec}), **wrap)
    return reinit(net, "gpt2", seed)  # the tolerances here were set on GPT-2's N(0, 0.02) init (smaller logits)


def off_init(build_fn):
    """``build_fn`` with every weight then moved off its init by N(0, 0.1): options whose parts
    start at zero (gates, offsets, mixing weights) act in the causal, cache and padding checks
    instead of passing them trivially."""
    def moved(name: str, seed: int = 0):
        net = build_fn(name, seed)
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        return net
    return moved


def tokens(B: int, T: int, seed: int) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", OPTIONS)
def test_causal_and_cache_exact(name):
    net = build(name).eval()
    x = tokens(2, 16, seed=1)
    with torch.no_grad():
        full = net(x)
        for t in (3, 11):
            y = x.clone()
            y[:, t] = (y[:, t] + 1) % V
            assert torch.equal(net(y)[:, :t], full[:, :t]), f"{name}: token {t} changed earlier logits"
        for eager in (False, True):  # tensor slots: whole cache (static shapes); int: only the slots in use
            slots = (lambda a, b: a) if eager else (lambda a, b: torch.arange(a, b))
            cache = net.new_cache(2, SEQ)
            steps = [net(x[:, :6], input_pos=slots(0, 6), cache=cache)]
            for t in range(6, 13):
                steps.append(net(x[:, t:t + 1], input_pos=slots(t, t + 1), cache=cache))
            # a multi-token step at a later slot (speculative decoding verifies drafts this way)
            steps.append(net(x[:, 13:16], input_pos=slots(13, 16), cache=cache))
            torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", OPTIONS)
def test_left_padded_rows_equal_solo_rows(name):
    net = build(name).eval()
    short, long_ = tokens(1, 5, seed=2)[0], tokens(1, 11, seed=3)[0]
    batch = torch.stack((torch.cat((torch.zeros(6, dtype=torch.long), short)), long_))
    start = torch.tensor([6, 0])
    with torch.no_grad():
        cache = net.new_cache(2, SEQ)
        out = net(batch, input_pos=torch.arange(11), cache=cache, start=start)
        torch.testing.assert_close(out[0, 6:], net(short[None])[0], atol=1e-5, rtol=0)
        nxt = tokens(2, 1, seed=4)
        step = net(nxt, input_pos=torch.tensor([11]), cache=cache, start=start)
        solo = net(torch.cat((short, nxt[0]))[None])[0, -1]
        torch.testing.assert_close(step[0, -1], solo, atol=1e-5, rtol=0)
        cache = net.new_cache(2, SEQ)  # again, reading only the slots in use
        net(batch, input_pos=0, cache=cache, start=start)
        step = net(nxt, input_pos=11, cache=cache, start=start)
        torch.testing.assert_close(step[0, -1], solo, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", OPTIONS)
def test_twenty_adamw_steps_reduce_the_loss(name):
    net = build(name)
    model = AutoregressiveWrapper(net)
    seq = tokens(4, 17, seed=5)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = model(seq)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("name", OPTIONS)
def test_option_survives_the_yaml_round_trip(name):
    net = build(name).eval()
    cfg = RunConfig.from_yaml(RunConfig(model=net.cfg).to_yaml()).validate().model
    assert cfg == net.cfg
    twin = Transformer(cfg).eval()
    twin.load_state_dict(net.state_dict())
    x = tokens(1, 8, seed=6)
    with torch.no_grad():
        assert torch.equal(twin(x), net(x))


@pytest.mark.parametrize("name", OPTIONS)
def test_no_parameter_is_a_zero_dim_scalar(name):
    # FSDP2's fully_shard shards along dim 0 and refuses 0-d parameters: scalars are stored (1,)
    net = build(name)
    scalars = [n for n, p in net.named_parameters() if p.dim() == 0]
    assert not scalars, f"{name}: 0-d parameters {scalars}"

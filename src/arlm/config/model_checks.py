"""The rules of the model section: the allowed values of its choice fields, which fields may vary
per layer, and ``validate()`` with one method per option family (so each family's rules sit
together). ``ModelConfig`` (model.py) inherits them; every error names the field and what is
allowed.
"""

from __future__ import annotations

from dataclasses import replace

from .checks import ConfigError, _choice, _finite_and_in_range, _positive
from .memory import check_memory, model_parts, shape_parts, values_of

NORMS = ("layernorm", "rmsnorm", "scalenorm", "simple_rmsnorm", "dynamic_tanh", "derf")
POS_EMBS = ("absolute", "rotary", "polar", "scaled_sinusoidal", "none")
TOKEN_POS_EMBS = ("absolute", "scaled_sinusoidal", "none")
POS_BIASES = ("none", "alibi", "t5", "dynamic")
# weight initialisation schemes (model/init.py)
INITS = ("auto", "scaled_zero", "scaled", "gpt2", "torch", "torch_zero_query")
FF_ACTIVATIONS = ("gelu", "swish", "relu_squared", "solu", "gelu_tanh", "relu", "mish", "tanh", "sigmoid", "softplus")

# Fields that may take one value per sublayer: each only changes the module it builds (no cache
# shape, attention path or mask depends on it), so a per-block config is exact.
PER_LAYER_FIELDS = {
    "attn": ("attn_dropout", "attn_gate_values", "attn_head_scale", "qk_norm", "qk_norm_scale"),
    "ff": ("ff_mult", "ff_glu", "ff_activation", "ff_bias", "ff_post_act_ln", "ff_dropout",
           "ff_glu_mult_bias", "ff_glu_softclamp", "ff_glu_gate_softclamp_value", "ff_glu_up_softclamp_value",
           "ff_softclamp_value", "ff_zero_init_output", "ff_output_proj_depth", "ff_sublayer_dropout"),
}
# attention projections, gates and values that only change their own layer's module
PER_LAYER_FIELDS["attn"] += (
    "attn_zero_init_output", "attn_output_proj_depth", "attn_sublayer_dropout", "attn_gate_values_rank",
    "attn_gate_values_headwise", "attn_output_gate", "attn_output_gate_rank", "attn_output_gate_headwise",
    "attn_low_rank_silu_gates", "attn_swiglu_values", "attn_gate_value_heads", "attn_head_learned_sink",
    "attn_orthog_projected_values", "attn_orthog_projected_values_per_head",
)

# attention scores and kernels that keep the attention path (fused or explicit) and the cache shape
PER_LAYER_FIELDS["attn"] += (
    "attn_laser", "attn_laser_softclamp_value", "attn_l2_distance", "attn_sparse_topk_straight_through",
    "attn_gumbel_softmax_temp", "attn_gumbel_softmax_hard",
)
# query/key/value norms: each builds its own layer's modules (the cache holds normalised keys and values)
PER_LAYER_FIELDS["attn"] += ("qk_norm_groups", "qk_norm_dim_scale", "qk_rmsnorm", "k_rmsnorm", "value_rmsnorm")


class ModelChecks:
    """Validation of ``ModelConfig`` (a mixin: the fields and derived properties are in model.py)."""

    def validate(self) -> None:
        _finite_and_in_range(self)
        _positive(self, "vocab_size", "max_seq_len", "dim", "depth", "heads", "vocab_pad_multiple")
        if self.dim_head is not None:
            _positive(self, "dim_head")
        elif self.dim % self.heads:
            raise ConfigError(
                f"model.dim={self.dim} is not divisible by model.heads={self.heads}; "
                "choose heads that divide dim or set model.dim_head explicitly"
            )
        if self.kv_heads is not None:
            _positive(self, "kv_heads")
            if self.heads % self.kv_heads:
                raise ConfigError(
                    f"model.heads={self.heads} is not divisible by model.kv_heads={self.kv_heads}; "
                    "kv_heads must divide heads (1 = multi-query, heads = multi-head)"
                )
        if self.ff_mult <= 0:
            raise ConfigError(f"model.ff_mult must be > 0, got {self.ff_mult}")
        # sizes no machine holds are refused before any rule below lays out depth-long patterns
        check_memory(shape_parts(self), values_of(self, "model"))
        _choice(self, "norm", NORMS)
        _choice(self, "pos_emb", POS_EMBS)
        _choice(self, "pos_bias", POS_BIASES)
        _choice(self, "ff_activation", FF_ACTIVATIONS)
        if self.pos_emb == "rotary":
            r = self.rotary_emb_dim
            if r < 2 or r % 2 or r > self.head_dim:
                raise ConfigError(
                    f"model.rotary_dim={r} must be even, >= 2 and <= the head size {self.head_dim}"
                )
            if self.rotary_base <= 0:
                raise ConfigError(f"model.rotary_base must be > 0, got {self.rotary_base}")
            if self.rotary_interpolation_factor < 1:
                raise ConfigError(f"model.rotary_interpolation_factor must be >= 1, got {self.rotary_interpolation_factor}")
            if self.rotary_base_rescale_factor <= 0:
                raise ConfigError(f"model.rotary_base_rescale_factor must be > 0, got {self.rotary_base_rescale_factor}")
            if self.rotary_base_rescale_factor != 1 and r == 2:
                raise ConfigError("model.rotary_base_rescale_factor needs a rotary size > 2 (it rescales by r/(r-2))")
            if self.rotary_xpos_scale_base <= 0:
                raise ConfigError(f"model.rotary_xpos_scale_base must be > 0, got {self.rotary_xpos_scale_base}")
        else:
            for name, default in (("rotary_xpos", False), ("rotary_interpolation_factor", 1.0),
                                  ("rotary_base_rescale_factor", 1.0)):
                if getattr(self, name) != default:
                    raise ConfigError(f"model.{name} needs model.pos_emb=rotary (it is {self.pos_emb!r})")
        if self.pos_emb == "scaled_sinusoidal" and self.dim % 2:
            raise ConfigError(f"model.pos_emb=scaled_sinusoidal needs an even model.dim, got {self.dim}")
        if self.alibi_num_heads is not None:
            if self.pos_bias != "alibi":
                raise ConfigError("model.alibi_num_heads needs model.pos_bias=alibi")
            if not (isinstance(self.alibi_num_heads, int) and 1 <= self.alibi_num_heads <= self.heads):
                raise ConfigError(f"model.alibi_num_heads must be in [1, heads={self.heads}], got {self.alibi_num_heads}")
        if self.pos_bias == "t5":
            _positive(self, "rel_pos_num_buckets", "rel_pos_max_distance")
            if self.rel_pos_num_buckets > self.rel_pos_max_distance or self.rel_pos_num_buckets < 2:
                raise ConfigError(
                    f"model.rel_pos_num_buckets={self.rel_pos_num_buckets} must be >= 2 and <= "
                    f"model.rel_pos_max_distance={self.rel_pos_max_distance}"
                )
        if self.pos_bias == "dynamic":
            _positive(self, "dynamic_pos_bias_mlp_depth")
            if self.dim < 4:
                raise ConfigError("model.pos_bias=dynamic needs model.dim >= 4 (its MLP is dim // 4 wide)")
        if self.max_attend_past is not None and (not isinstance(self.max_attend_past, int) or self.max_attend_past < 0):
            raise ConfigError(f"model.max_attend_past must be an integer >= 0 or null, got {self.max_attend_past!r}")
        if self.attn_sparse_topk is not None:
            _positive(self, "attn_sparse_topk")
        for name in ("attn_num_mem_kv", "num_memory_tokens", "shift_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"model.{name} must be an integer >= 0, got {v!r}")
        if self.shift_tokens + 1 > self.dim:
            raise ConfigError(f"model.shift_tokens={self.shift_tokens} needs model.dim >= shift_tokens + 1")
        if self.shift_tokens and self.num_memory_tokens:
            raise ConfigError("model.shift_tokens and model.num_memory_tokens cannot be combined: a shifted "
                              "memory token would have to stand in for the padding of a left-padded row")
        for name in ("attn_logit_softclamp_value", "softclamp_output_value", "qk_norm_scale"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"model.{name} must be > 0, got {getattr(self, name)}")
        if self.sandwich_norm and not self.pre_norm:
            raise ConfigError("model.sandwich_norm needs model.pre_norm=true (it normalises the pre-norm branch output)")
        self._validate_layout()
        self._validate_positions()
        self._validate_norms()
        self._validate_residual()
        self._validate_streams()
        self._validate_attention_projections()
        self._validate_attention_scores()
        self._validate_feedforward()
        self._validate_embedding()
        self._validate_per_layer()
        for name in ("emb_dropout", "attn_dropout", "ff_dropout", "layer_dropout"):
            v = getattr(self, name)
            if not (0.0 <= v < 1.0):
                raise ConfigError(f"model.{name} must be in [0, 1), got {v}")
        _choice(self, "init", INITS)
        if self.init_std <= 0:
            raise ConfigError(f"model.init_std must be > 0, got {self.init_std}")
        if self.init_std != 0.02 and self.init != "gpt2":
            raise ConfigError(f"model.init_std={self.init_std} is the std of model.init=gpt2 (N(0, init_std)); "
                              f"model.init={self.init} sets its stds from the width: set model.init gpt2 or leave "
                              "model.init_std at 0.02")
        # last: the sizes are consistent now, so the estimate can read the layout
        check_memory(model_parts(self), values_of(self, "model"))

    def _validate_layout(self) -> None:
        chosen = [n for n in ("layers", "par_ratio", "sandwich_coef") if getattr(self, n) is not None]
        if self.weight_tie_layers:
            chosen.append("weight_tie_layers")
        if len(chosen) > 1:
            raise ConfigError(f"choose one layer layout, got {', '.join('model.' + n for n in chosen)}")
        if self.layers is not None:
            if not self.layers or set(self.layers) - {"a", "f"}:
                raise ConfigError(f"model.layers must be a non-empty string of 'a' (attention) and 'f' "
                                  f"(feed-forward), got {self.layers!r}")
        if self.par_ratio is not None:
            n = self.depth * (1 if self.only_attn else 3 if self.macaron else 2)
            if not (isinstance(self.par_ratio, int) and 1 < self.par_ratio <= n):
                raise ConfigError(f"model.par_ratio must be an integer in (1, {n}] for this depth, got {self.par_ratio!r}")
            cut = n * 2 // 3
            n_attn = n // self.par_ratio
            if (cut + cut // n_attn) // n_attn < 1:
                raise ConfigError(f"model.par_ratio={self.par_ratio} leaves no room for attention at depth {self.depth}")
        if self.sandwich_coef is not None and not (isinstance(self.sandwich_coef, int) and 1 <= self.sandwich_coef <= self.depth):
            raise ConfigError(f"model.sandwich_coef must be an integer in [1, depth={self.depth}], got {self.sandwich_coef!r}")

    # one method per option family, so each family's rules sit together

    def _validate_positions(self) -> None:
        _choice(self, "abs_pos_emb", TOKEN_POS_EMBS)
        if self.abs_pos_emb != "none" and self.pos_emb not in ("rotary", "polar"):
            raise ConfigError(f"model.abs_pos_emb adds positions beside rotary or polar embeddings; with "
                              f"model.pos_emb={self.pos_emb!r} set model.pos_emb itself")
        if self.abs_pos_emb == "scaled_sinusoidal" and self.dim % 2:
            raise ConfigError(f"model.abs_pos_emb=scaled_sinusoidal needs an even model.dim, got {self.dim}")
        if self.rotary_num_heads is not None:
            if self.pos_emb != "rotary":
                raise ConfigError("model.rotary_num_heads needs model.pos_emb=rotary")
            n = self.rotary_num_heads
            if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= self.heads):
                raise ConfigError(f"model.rotary_num_heads must be an integer in [1, heads={self.heads}], got {n!r}")
            if n < self.heads and self.n_kv_heads != self.heads:
                raise ConfigError("model.rotary_num_heads < heads needs one key/value head per query head "
                                  "(model.kv_heads unset or equal to heads), as x-transformers")
        if self.dynamic_pos_bias_norm and self.pos_bias != "dynamic":
            raise ConfigError("model.dynamic_pos_bias_norm needs model.pos_bias=dynamic")
        if self.alibi_slopes is not None:
            if self.pos_bias != "alibi":
                raise ConfigError("model.alibi_slopes needs model.pos_bias=alibi")
            n = self.alibi_num_heads or self.heads
            ok = isinstance(self.alibi_slopes, (list, tuple)) and len(self.alibi_slopes) == n
            if not ok or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.alibi_slopes):
                raise ConfigError(f"model.alibi_slopes must be a list of {n} numbers (one per ALiBi head), "
                                  f"got {self.alibi_slopes!r}")
        if self.polar_bias_uniform_init and self.pos_emb != "polar":
            raise ConfigError("model.polar_bias_uniform_init needs model.pos_emb=polar")
        if self.pos_emb == "polar" and self.attn_num_mem_kv:
            raise ConfigError("model.pos_emb=polar cannot be combined with model.attn_num_mem_kv: learned memory "
                              "keys have no position to give them a phase (x-transformers fails on it too)")

        if self.data_dependent_alibi:
            if self.pos_bias != "none":
                raise ConfigError(f"model.data_dependent_alibi replaces the position bias; it cannot be combined "
                                  f"with model.pos_bias={self.pos_bias!r} (x-transformers allows one)")
            if self.data_dependent_alibi_per_row:
                _positive(self, "data_dependent_alibi_per_row_dim_head")
                if self.data_dependent_alibi_bias_init != 5.0:
                    raise ConfigError("model.data_dependent_alibi_bias_init is for the per-token gates; the per-row "
                                      "gates have no bias (x-transformers refuses it too)")
        else:
            for name, default in (("data_dependent_alibi_per_row", False), ("data_dependent_alibi_bias_init", 5.0),
                                  ("data_dependent_alibi_post_log_scale", 1.0),
                                  ("data_dependent_alibi_per_row_dim_head", 8)):
                if getattr(self, name) != default:
                    raise ConfigError(f"model.{name} needs model.data_dependent_alibi=true")
        if self.rel_proj_pos_bias:
            _positive(self, "rel_proj_num_distance_basis", "rel_proj_max_dist")
        if self.cope:
            if self.cope_max_pos < 2:
                raise ConfigError(f"model.cope_max_pos must be an integer >= 2, got {self.cope_max_pos!r}")
            if self.pos_emb == "polar":
                raise ConfigError("model.cope cannot be combined with model.pos_emb=polar: CoPE's position "
                                  "embeddings have the head size, polar queries twice that")
        else:
            for name in ("cope_soft_onehot_pos", "cope_talking_heads"):
                if getattr(self, name):
                    raise ConfigError(f"model.{name} needs model.cope=true")

    def _validate_norms(self) -> None:
        if self.qk_rmsnorm and self.k_rmsnorm:
            raise ConfigError("choose one of model.qk_rmsnorm and model.k_rmsnorm (qk_rmsnorm already normalises keys)")
        if not (isinstance(self.qk_norm_groups, int) and not isinstance(self.qk_norm_groups, bool)
                and self.qk_norm_groups >= 1):
            raise ConfigError(f"model.qk_norm_groups must be an integer >= 1, got {self.qk_norm_groups!r}")
        if not self.qk_norm:
            for name, default in (("qk_norm_groups", 1), ("qk_norm_dim_scale", False)):
                if getattr(self, name) != default:
                    raise ConfigError(f"model.{name} needs model.qk_norm=true")
        elif self.head_dim % self.qk_norm_groups or self.head_dim // self.qk_norm_groups <= 2:
            raise ConfigError(f"model.qk_norm_groups={self.qk_norm_groups} must divide the head size "
                              f"{self.head_dim} into groups of more than 2 features")
        if self.dynamic_tanh_init_alpha != 1.0 and self.norm != "dynamic_tanh":
            raise ConfigError("model.dynamic_tanh_init_alpha needs model.norm=dynamic_tanh")
        if self.layerscale_init_value != 0.0 and not self.layerscale:
            raise ConfigError("model.layerscale_init_value needs model.layerscale=true")
        if self.norm_bias and self.norm != "layernorm":
            raise ConfigError(f"model.norm_bias needs model.norm=layernorm (got {self.norm!r})")
        if self.norm_eps is not None:
            if not self.norm_eps > 0:
                raise ConfigError(f"model.norm_eps must be > 0 (or null for the defaults), got {self.norm_eps}")
            if self.norm not in ("layernorm", "rmsnorm"):
                raise ConfigError(f"model.norm_eps needs model.norm layernorm or rmsnorm (got {self.norm!r})")

    def _validate_residual(self) -> None:
        if self.layers_execute_order is not None:
            order, n = self.layers_execute_order, len(self.layer_types)
            try:
                idx = [int(i) for i in order.split(",")]
            except ValueError:
                idx = None
            if not idx or any(not 0 <= i < n for i in idx):
                raise ConfigError(f"model.layers_execute_order must be comma-separated sublayer indices in [0, {n}) "
                                  f"(the layout has {n} sublayers), got {order!r}")
            if self.weight_tie_layers:
                raise ConfigError("model.layers_execute_order and model.weight_tie_layers cannot be combined "
                                  "(weight tying is an execution order itself)")
        if self.only_attn:
            if self.layers is not None and "f" in self.layers:
                raise ConfigError("model.only_attn cannot be combined with feed-forward layers in model.layers")
            for name in ("layers_execute_order", "unet_skips"):
                if getattr(self, name):
                    raise ConfigError(f"model.only_attn cannot be combined with model.{name} (as x-transformers)")
        chosen = [n for n in ("gate_residual", "orthog_residual", "mv_split_residual") if getattr(self, n)]
        if len(chosen) > 1:
            raise ConfigError(f"choose one residual update, got {', '.join('model.' + n for n in chosen)}")
        if chosen and self.scale_residual_constant != 1.0:
            # x-transformers silently ignores the constant there; arlm says so
            raise ConfigError(f"model.scale_residual_constant applies to the plain residual sum only, not model.{chosen[0]}")
        if self.mv_split_residual and self.scale_residual:
            raise ConfigError("model.scale_residual does not apply to model.mv_split_residual (its update has its own scales)")
        if not self.mv_split_residual:
            for name, default in (("mv_split_learned", False), ("mv_split_init_alpha", 0.0), ("mv_split_init_beta", 0.03)):
                if getattr(self, name) != default:
                    raise ConfigError(f"model.{name} needs model.mv_split_residual=true")
        for name in ("scale_residual_constant", "branch_output_scale"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"model.{name} must be > 0, got {getattr(self, name)}")
        for name in ("attn_output_proj_depth", "ff_output_proj_depth"):
            if self.depth_scale_residual and getattr(self, name) is not None:
                raise ConfigError(f"model.depth_scale_residual sets every output projection's init by depth already; "
                                  f"leave model.{name} unset (x-transformers refuses both)")
        if self.learned_reinject_input_gate and not self.reinject_input:
            raise ConfigError("model.learned_reinject_input_gate needs model.reinject_input=true")
        if self.unet_skips:
            custom = [n for n in ("layers", "par_ratio", "sandwich_coef", "layers_execute_order")
                      if getattr(self, n) is not None]
            if custom or self.weight_tie_layers:
                raise ConfigError("model.unet_skips needs the standard layout of depth blocks, not "
                                  + ", ".join("model." + n for n in custom or ["weight_tie_layers"]))
            if self.depth < 2:
                raise ConfigError("model.unet_skips needs model.depth >= 2 (first half skips to second half)")

    def _validate_streams(self) -> None:
        for name, low in (("num_residual_streams", 1), ("hyper_conn_sinkhorn_iters", 0), ("attn_aggregated_lora_rank", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigError(f"model.{name} must be an integer >= {low}, got {v!r}")
        _choice(self, "hyper_conn_residual_mix", ("sum", "sinkhorn"))
        hyper = self.num_residual_streams > 1 and not self.gated_multi_residual
        mixer = "hyper-connections (num_residual_streams > 1)" if hyper else "model.gated_multi_residual"
        if self.multi_stream:
            for name in ("gate_residual", "scale_residual", "orthog_residual", "mv_split_residual"):
                if getattr(self, name):
                    raise ConfigError(f"model.{name} cannot be combined with {mixer}: the streams replace the "
                                      "single residual it updates")
            if self.scale_residual_constant != 1.0:
                raise ConfigError(f"model.scale_residual_constant cannot be combined with {mixer} (x-transformers "
                                  "silently ignores it there)")
        if self.gated_multi_residual:
            r = self.gated_multi_read_gate_rank
            if not isinstance(r, int) or isinstance(r, bool) or r < 1:
                raise ConfigError(f"model.gated_multi_residual needs model.gated_multi_read_gate_rank, an integer >= 1 "
                                  f"(x-transformers: residual_fn_kwargs=dict(read_gate_rank=...)), got {r!r}")
            for name, value in (("sandwich_norm", True), ("pre_and_post_norm", True), ("pre_norm_has_final_norm", False)):
                if getattr(self, name) == value:
                    raise ConfigError(f"model.{name}={value} cannot be combined with model.gated_multi_residual (its read "
                                      "gate normalises, so the block has no pre-norm; each stream is normalised after "
                                      "every branch and at the end)")
        elif self.gated_multi_read_gate_rank is not None:
            raise ConfigError("model.gated_multi_read_gate_rank needs model.gated_multi_residual=true")
        if self.integrate_layers and self.attn_aggregated_residuals:
            raise ConfigError("choose one of model.integrate_layers and model.attn_aggregated_residuals")
        if self.attn_aggregated_residuals:
            for name in ("gate_residual", "gated_multi_residual", "orthog_residual", "mv_split_residual",
                         "depth_scale_residual"):
                if getattr(self, name):
                    raise ConfigError(f"model.attn_aggregated_residuals cannot be combined with model.{name}")
            if self.branch_output_scale != 1.0:
                raise ConfigError("model.attn_aggregated_residuals cannot be combined with a numeric scale_residual / "
                                  "depth_scale_residual (model.branch_output_scale; x-transformers silently drops it)")
            if self.attn_aggregated_lora_rank >= self.dim:
                raise ConfigError(f"model.attn_aggregated_lora_rank={self.attn_aggregated_lora_rank} must be < "
                                  f"model.dim={self.dim}")
            if self.qkv_receive_diff_residuals and self.multi_stream:
                raise ConfigError(f"model.attn_aggregated_residuals with model.qkv_receive_diff_residuals and {mixer}: "
                                  "the streams would hand attention three views that the aggregation cannot stack "
                                  "with the other layers' inputs")
        if self.integrate_layers and self.execute_order != tuple(range(len(self.layer_types))):
            raise ConfigError("model.integrate_layers needs every sublayer to run once, in layout order (its mixer has "
                              "one weight per earlier layer); it cannot be combined with model.weight_tie_layers or "
                              "model.layers_execute_order")
        if self.qkv_receive_diff_residuals and not (self.multi_stream or self.integrate_layers
                                                    or self.attn_aggregated_residuals):
            raise ConfigError("model.qkv_receive_diff_residuals needs something that makes three views: "
                              "num_residual_streams > 1, gated_multi_residual, integrate_layers or "
                              "attn_aggregated_residuals")
        if self.qkv_views and (self.attn_use_latent_q or self.attn_use_latent_kv):
            raise ConfigError("multi-head latent attention (model.attn_use_latent_q / attn_use_latent_kv) cannot take "
                              "separate query/key/value views (qkv_receive_diff_residuals or integrate_layers)")
        if self.qkv_views and self.shift_tokens:
            raise ConfigError("model.shift_tokens cannot be combined with separate query/key/value views "
                              "(qkv_receive_diff_residuals or integrate_layers)")

    def _validate_attention_projections(self) -> None:
        if self.attn_bias and (self.attn_use_latent_q or self.attn_use_latent_kv):
            raise ConfigError("model.attn_bias adds biases to the fused query/key/value projection, which "
                              "multi-head latent attention replaces; turn off attn_use_latent_q/kv or attn_bias")
        for name in ("attn_value_dim_head", "attn_gate_values_rank", "attn_output_gate_rank", "attn_dim_latent_q",
                     "attn_dim_latent_kv", "attn_latent_rope_subheads", "attn_output_proj_depth"):
            if getattr(self, name) is not None:
                _positive(self, name)
        if not 0.0 <= self.attn_sublayer_dropout < 1.0:
            raise ConfigError(f"model.attn_sublayer_dropout must be in [0, 1), got {self.attn_sublayer_dropout}")
        if self.attn_zero_init_output and self.attn_output_proj_depth is not None:
            raise ConfigError("model.attn_zero_init_output and model.attn_output_proj_depth both set the output "
                              "projection's init; choose one")
        if self.attn_project_out is False:
            if self.attn_output_proj_depth is not None or self.attn_zero_init_output:
                raise ConfigError("model.attn_project_out=false leaves no output projection to initialise "
                                  "(model.attn_zero_init_output / model.attn_output_proj_depth)")
            if self.attn_on_attn:
                raise ConfigError("model.attn_project_out=false cannot be combined with model.attn_on_attn "
                                  "(attention on attention is the output projection)")
            if self.attn_out_in_dim != self.dim:
                raise ConfigError(f"model.attn_project_out=false needs the attention output width "
                                  f"({self.attn_out_in_dim} = heads x value head size) to equal model.dim={self.dim}")
        # each gate modifier needs its gate, so nothing is silently ignored
        for gate, mods in (("attn_gate_values", ("attn_gate_values_rank", "attn_gate_values_headwise")),
                           ("attn_output_gate", ("attn_output_gate_rank", "attn_output_gate_headwise"))):
            for m in mods:
                if getattr(self, m) not in (None, False) and not getattr(self, gate):
                    raise ConfigError(f"model.{m} needs model.{gate}=true")
            rank, headwise = (getattr(self, m) for m in mods)
            if rank is not None and headwise:
                raise ConfigError(f"model.{mods[0]} and model.{mods[1]} are exclusive (a head-wise gate "
                                  "projects straight to one logit per head)")
        if self.attn_swiglu_values and not (self.attn_gate_values or self.attn_output_gate):
            raise ConfigError("model.attn_swiglu_values needs model.attn_gate_values or model.attn_output_gate "
                              "(it is the gates' activation)")
        if not self.attn_low_rank_silu_gates and self.attn_gate_values_rank is None and self.attn_output_gate_rank is None:
            raise ConfigError("model.attn_low_rank_silu_gates=false needs a low-rank gate "
                              "(model.attn_gate_values_rank or model.attn_output_gate_rank)")
        for rank, n_in, n_out in (("attn_gate_values_rank", self.dim, self.heads * self.value_head_dim),
                                  ("attn_output_gate_rank", self.heads * self.value_head_dim,
                                   self.heads * self.value_head_dim)):
            r = getattr(self, rank)
            if r is not None and not (r < n_in or r < n_out):
                raise ConfigError(f"model.{rank}={r} must be below the gate's input ({n_in}) or output ({n_out}) width")
        if self.attn_head_learned_sink and self.needs_scores:
            raise ConfigError("model.attn_head_learned_sink cannot be combined with explicit-score options (soft-clamp, "
                              "talking heads, top-k, residual attention): arlm's sink is a column of the fused kernel's "
                              "mask, while those options transform the scores before it")
        for use, dim in (("attn_use_latent_q", "attn_dim_latent_q"), ("attn_use_latent_kv", "attn_dim_latent_kv")):
            if getattr(self, use) and getattr(self, dim) is None:
                raise ConfigError(f"model.{use} needs model.{dim} (the latent width)")
            if getattr(self, dim) is not None and not getattr(self, use):
                raise ConfigError(f"model.{dim} needs model.{use}=true")
        n = self.attn_latent_rope_subheads
        if n is not None:
            if not self.attn_use_latent_kv:
                raise ConfigError("model.attn_latent_rope_subheads needs model.attn_use_latent_kv=true "
                                  "(its key heads bypass the key/value latent)")
            if self.n_kv_heads != self.heads:
                raise ConfigError("model.attn_latent_rope_subheads needs as many key/value heads as heads "
                                  "(x-transformers does not rotate part of the heads under grouped-query attention)")
            if n >= self.heads:
                raise ConfigError(f"model.attn_latent_rope_subheads={n} must be below model.heads={self.heads} "
                                  "(at least one key head comes from the latent)")
            if self.rotary_num_heads is not None:
                raise ConfigError("model.attn_latent_rope_subheads sets the rotated heads itself; "
                                  "leave model.rotary_num_heads unset")

    def _validate_attention_scores(self) -> None:
        kinds = [n for n in ("attn_sigmoid", "attn_hard", "attn_l2_distance", "attn_gumbel_softmax") if getattr(self, n)]
        if self.attn_sparse_topk is not None:
            kinds.append("attn_sparse_topk")
        if len(kinds) > 1:
            raise ConfigError(f"choose one attention function, got {', '.join('model.' + n for n in kinds)}")
        if self.attn_sparse_topk_straight_through and self.attn_sparse_topk is None:
            raise ConfigError("model.attn_sparse_topk_straight_through needs model.attn_sparse_topk")
        for name in ("attn_laser_softclamp_value", "attn_gumbel_softmax_temp"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"model.{name} must be > 0, got {getattr(self, name)}")

    def _validate_feedforward(self) -> None:
        if not self.ff_glu_bias and not self.ff_glu:
            raise ConfigError("model.ff_glu_bias=false needs model.ff_glu=true (it drops the GLU input bias)")
        if not self.ff_glu:
            for name in ("ff_glu_mult_bias", "ff_glu_softclamp"):
                if getattr(self, name):
                    raise ConfigError(f"model.{name} needs model.ff_glu=true (it changes the gated unit)")
        elif self.ff_softclamp_value is not None:
            raise ConfigError("model.ff_softclamp_value soft-caps the hidden of the plain feed-forward; with "
                              "model.ff_glu use model.ff_glu_softclamp (x-transformers ignores it under GLU)")
        if self.ff_glu_softclamp:
            if self.ff_activation not in ("gelu", "swish"):
                raise ConfigError(f"model.ff_glu_softclamp needs model.ff_activation gelu or swish "
                                  f"(the gate's nonlinear factor), got {self.ff_activation!r}")
        elif (self.ff_glu_gate_softclamp_value, self.ff_glu_up_softclamp_value) != (4.0, 25.0):
            raise ConfigError("model.ff_glu_gate_softclamp_value and model.ff_glu_up_softclamp_value need "
                              "model.ff_glu_softclamp=true")
        for name in ("ff_glu_gate_softclamp_value", "ff_glu_up_softclamp_value", "ff_softclamp_value"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"model.{name} must be > 0, got {v}")
        if self.ff_output_proj_depth is not None:
            _positive(self, "ff_output_proj_depth")
            if self.ff_zero_init_output:
                raise ConfigError("model.ff_zero_init_output and model.ff_output_proj_depth both set the output "
                                  "projection's init; choose one")
        if not (0.0 <= self.ff_sublayer_dropout < 1.0):
            raise ConfigError(f"model.ff_sublayer_dropout must be in [0, 1), got {self.ff_sublayer_dropout}")

    def _validate_embedding(self) -> None:
        for name in ("emb_dim", "logits_dim"):
            if getattr(self, name) is not None:
                _positive(self, name)
        _positive(self, "num_output_heads", "mixture_of_softmax_k")
        if not (0.0 < self.emb_frac_gradient <= 1.0):
            raise ConfigError(f"model.emb_frac_gradient must be in (0, 1], got {self.emb_frac_gradient}")
        if self.tie_embedding_scale is not None and not self.tie_embedding:
            raise ConfigError("model.tie_embedding_scale needs model.tie_embedding=true (it scales the tied logits)")
        if self.tie_embedding:
            clash = {"emb_dim": self.embed_dim != self.dim, "logits_dim": self.logits_dim is not None,
                     "num_output_heads": self.num_output_heads != 1, "return_only_embed": self.return_only_embed,
                     "custom_token_emb": self.custom_token_emb, "custom_to_logits": self.custom_to_logits}
            for name, on in clash.items():
                if on:
                    raise ConfigError(f"model.tie_embedding cannot be combined with model.{name}="
                                      f"{getattr(self, name)!r}: the tied logits are the token embedding itself")
        if self.num_output_heads > 1 and self.mixture_of_softmax:
            raise ConfigError("model.mixture_of_softmax needs model.num_output_heads=1 (as x-transformers)")
        if self.return_only_embed:
            on = {"num_output_heads": self.num_output_heads != 1, "mixture_of_softmax": self.mixture_of_softmax,
                  "sigsoftmax_logits": self.sigsoftmax_logits, "logits_dim": self.logits_dim is not None,
                  "custom_to_logits": self.custom_to_logits, "squeeze_out_last_dim": self.squeeze_out_last_dim}
            for name in (n for n, v in on.items() if v):
                raise ConfigError(f"model.{name} changes the logits, which model.return_only_embed removes")
        if self.custom_to_logits and (self.num_output_heads != 1 or self.logits_dim is not None):
            raise ConfigError("model.num_output_heads and model.logits_dim shape the built-in logits head, "
                              "which a custom to_logits replaces")
        if self.embed_num_tokens is not None:
            e = self.embed_num_tokens
            if not (isinstance(e, dict) and all(isinstance(k, str) and k and isinstance(v, int)
                                                and not isinstance(v, bool) and v > 0 for k, v in e.items())):
                raise ConfigError(f"model.embed_num_tokens must map names to positive table sizes, got {e!r}")
        if self.token_pos_emb == "scaled_sinusoidal" and self.embed_dim % 2:
            raise ConfigError(f"scaled sinusoidal positions need an even model.emb_dim, got {self.embed_dim}")
        if self.ff_deep_embed_depth is not None:
            _positive(self, "ff_deep_embed_depth")
        if self.custom_token_emb and self.l2norm_embed:
            raise ConfigError("model.l2norm_embed normalises the built-in token embedding; a custom token_emb "
                              "does its own normalising")

    def _validate_per_layer(self) -> None:
        if self.per_layer is None:
            return
        if not isinstance(self.per_layer, dict):
            raise ConfigError(f"model.per_layer must be a mapping of field -> list of values, got {self.per_layer!r}")
        allowed = [f for names in PER_LAYER_FIELDS.values() for f in names]
        counts = {"attn": self.layer_types.count("a"), "ff": self.layer_types.count("f")}
        for name, values in self.per_layer.items():
            if name not in allowed:
                raise ConfigError(f"model.per_layer.{name}: only these fields may vary per layer: {', '.join(allowed)}")
            kind = self.sublayer_kind(name)
            if not isinstance(values, (list, tuple)) or len(values) != counts[kind]:
                raise ConfigError(f"model.per_layer.{name} needs a list of {counts[kind]} values, one per "
                                  f"{'attention' if kind == 'attn' else 'feed-forward'} sublayer, got {values!r}")
        # each sublayer's config as a whole (one field may need another of the same sublayer)
        for kind, n in counts.items():
            names = [k for k in self.per_layer if self.sublayer_kind(k) == kind]
            for i in range(n if names else 0):
                try:
                    replace(self, per_layer=None, **{k: self.per_layer[k][i] for k in names}).validate()
                except ConfigError as e:
                    raise ConfigError(f"model.per_layer ({', '.join(names)})[{i}]: {e}") from None

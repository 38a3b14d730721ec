"""The model section: shape and architecture options of the one decoder-only transformer."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


from .model_checks import PER_LAYER_FIELDS, TOKEN_POS_EMBS, ModelChecks

# attention options that leave keys, values and the dot-product kernel alone: multi-head latent
# attention can cache its latent with them (ModelConfig.latent_kv_cache)
_LATENT_CACHE_SAFE = frozenset((
    "attn_use_latent_q", "attn_dim_latent_q", "attn_use_latent_kv", "attn_dim_latent_kv", "attn_latent_rope_subheads",
    "attn_value_dim_head", "attn_project_out", "attn_zero_init_output", "attn_output_proj_depth",
    "attn_sublayer_dropout", "attn_gate_values", "attn_gate_values_rank", "attn_gate_values_headwise",
    "attn_output_gate", "attn_output_gate_rank", "attn_output_gate_headwise", "attn_low_rank_silu_gates",
    "attn_swiglu_values", "attn_gate_value_heads", "attn_head_learned_sink", "attn_orthog_projected_values",
    "attn_orthog_projected_values_per_head", "attn_head_scale", "attn_on_attn", "attn_dropout",
    "attn_softclamp_logits", "attn_logit_softclamp_value", "attn_pre_talking_heads", "attn_post_talking_heads",
    "attn_sparse_topk", "qk_norm_scale",
))


@dataclass
class ModelConfig(ModelChecks):
    """Decoder-only transformer shape and options.

    Every option is a plain value so the config round-trips through YAML. ``validate()`` and the
    per-family rules live in model_checks.py. docs/options.md lists
    what each option does, the paper it comes from and its x-transformers keyword.
    """

    # --- shape ---
    vocab_size: int = 256
    max_seq_len: int = 256
    dim: int = 256
    depth: int = 4
    heads: int = 4
    dim_head: int | None = None  # None: dim // heads
    kv_heads: int | None = None  # None: heads (multi-head); 1: multi-query; else grouped-query
    vocab_pad_multiple: int = 1  # pad the embedding/logit rows (never the sampled vocabulary)

    # --- positions (model/positional.py) ---
    pos_emb: str = "absolute"
    rotary_dim: int | None = None  # None: dim_head // 2, as x-transformers
    rotary_base: float = 10000.0
    rotary_xpos: bool = False
    rotary_xpos_scale_base: float = 512.0
    rotary_interpolation_factor: float = 1.0
    rotary_base_rescale_factor: float = 1.0
    pos_bias: str = "none"  # additive attention bias: none | alibi | t5 | dynamic
    alibi_num_heads: int | None = None  # None: every head
    rel_pos_num_buckets: int = 32
    rel_pos_max_distance: int = 128
    dynamic_pos_bias_log_distance: bool = False
    dynamic_pos_bias_mlp_depth: int = 2
    # with pos_emb rotary | polar: positions also added to the tokens (x-transformers'
    # disable_abs_pos_emb=False): absolute | scaled_sinusoidal | none
    abs_pos_emb: str = "none"
    rotary_num_heads: int | None = None  # rotary on the last N heads only; None: every head
    dynamic_pos_bias_norm: bool = False
    alibi_slopes: list | None = None  # custom ALiBi slopes, one per ALiBi head; None: the geometric ones
    polar_bias_uniform_init: bool = False
    data_dependent_alibi: bool = False  # forgetting transformer: learned per-token forget gates
    data_dependent_alibi_per_row: bool = False  # gates from a small query-key product per (query, key)
    data_dependent_alibi_per_row_dim_head: int = 8
    data_dependent_alibi_bias_init: float = 5.0
    data_dependent_alibi_post_log_scale: float = 1.0
    rel_proj_pos_bias: bool = False  # query-dependent mix of learned distance curves
    rel_proj_num_distance_basis: int = 16
    rel_proj_max_dist: int = 1024
    cope: bool = False  # contextual position encoding
    cope_max_pos: int = 16
    cope_soft_onehot_pos: bool = False
    cope_talking_heads: bool = False
    # (positions: new options go here)

    # --- norms (model/norms.py) ---
    norm: str = "layernorm"
    qk_norm: bool = False
    qk_norm_scale: float = 10.0
    pre_norm: bool = True
    sandwich_norm: bool = False
    l2norm_embed: bool = False
    post_emb_norm: bool = False
    pre_and_post_norm: bool = False  # pre-norm branches plus a norm after every residual sum; no final norm
    pre_norm_has_final_norm: bool = True
    # x-transformers stores norm gains as gain - 1; arlm always stores the gain. Norm gains are
    # never weight-decayed here, so this is a pure parametrisation: recorded for weight conversion only
    norm_add_unit_offset: bool = True
    dynamic_tanh_init_alpha: float = 1.0  # norm=dynamic_tanh
    layerscale: bool = False
    layerscale_init_value: float = 0.0
    qk_norm_groups: int = 1
    qk_norm_dim_scale: bool = False  # learned per-dimension query/key gains; the temperature becomes dim_head**-0.5
    qk_rmsnorm: bool = False  # RMSNorm with per-head gains on queries and keys
    k_rmsnorm: bool = False  # the same on keys only
    value_rmsnorm: bool = False  # RMSNorm with per-head gains on values
    norm_bias: bool = False  # LayerNorm with a learned bias (GPT-2); needs norm=layernorm
    # None: LayerNorm eps 1e-5, RMSNorm l2-normalised (x-transformers); a number: this epsilon inside the
    # square root, x * rsqrt(mean(x^2) + eps) for RMSNorm (Llama's rms_norm_eps, GPT-2's layer_norm_epsilon)
    norm_eps: float | None = None
    # (norms: new options go here)

    # --- residual and layer structure (model/block.py, model/residual.py) ---
    residual_attn: bool = False
    add_value_residual: bool = False
    gate_residual: bool = False
    scale_residual: bool = False
    zero_init_branch_output: bool = False
    softclamp_output: bool = False
    softclamp_output_value: float = 30.0
    shift_tokens: int = 0
    layers: str | None = None  # custom layer pattern of 'a' (attention) and 'f' (feed-forward); overrides depth
    macaron: bool = False
    par_ratio: int | None = None
    sandwich_coef: int | None = None
    weight_tie_layers: bool = False
    layers_execute_order: str | None = None  # sublayer indices in run order, comma-separated ("0,1,0,1"); a sublayer may run more than once
    only_attn: bool = False  # attention-only stack: every feed-forward of the layout is dropped
    scale_residual_constant: float = 1.0  # the residual stream is multiplied by this before each branch is added
    branch_output_scale: float = 1.0  # every branch output is multiplied by this (x-transformers' float depth_scale_residual / scale_residual)
    depth_scale_residual: bool = False  # output projections of block l start at std (2 * fan_in * l)^-0.5
    learned_value_residual_mix: bool = True  # add_value_residual: learned per-token mix (False: a fixed 0.5)
    reinject_input: bool = False  # every branch input also gets a projection of the stack's input
    learned_reinject_input_gate: bool = False  # ... gated per token by sigmoid(w . input)
    unet_skips: bool = False  # second-half blocks start from a learned mix of their input and the mirrored first-half block's input
    orthog_residual: bool = False  # add only the part of each branch output orthogonal to the residual stream
    mv_split_residual: bool = False  # mean/variance split residual update (causal running means)
    mv_split_learned: bool = False  # ... alpha and beta from the running mean of the branch output
    mv_split_init_alpha: float = 0.0
    mv_split_init_beta: float = 0.03
    # (residual: new options go here)
    # multi-stream (model/streams.py): several residual streams and layer integration
    num_residual_streams: int = 1  # > 1: hyper-connections (Zhu et al. 2024)
    hyper_conn_sinkhorn_iters: int = 5
    hyper_conn_residual_mix: str = "sum"  # sum (x-transformers 2.31.10) | sinkhorn (the mHC paper)
    integrate_layers: bool = False  # LIMe (Gerasimov et al. 2025)
    layer_integrate_use_softmax: bool = True
    qkv_receive_diff_residuals: bool = False
    gated_multi_residual: bool = False
    gated_multi_read_gate_rank: int | None = None  # x-transformers' residual_fn_kwargs read_gate_rank
    attn_aggregated_residuals: bool = False
    attn_aggregated_lora_rank: int = 64  # x-transformers' attn_aggregated_residual_kwargs lora_rank

    # --- attention (model/attention.py, model/attend.py) ---
    max_attend_past: int | None = None  # sliding window: a query sees at most this many earlier positions
    attn_softclamp_logits: bool = False
    attn_logit_softclamp_value: float = 50.0
    attn_gate_values: bool = False
    attn_head_scale: bool = False
    attn_num_mem_kv: int = 0
    attn_add_zero_kv: bool = False
    attn_on_attn: bool = False
    attn_pre_talking_heads: bool = False
    attn_post_talking_heads: bool = False
    attn_sparse_topk: int | None = None
    attn_value_dim_head: int | None = None  # None: the query/key head size
    attn_project_out: bool | None = None  # False: no output projection (heads * value head size must be dim)
    attn_zero_init_output: bool = False
    attn_output_proj_depth: int | None = None  # output projection init std (2 * fan_in * depth)^-0.5 (OLMo)
    attn_sublayer_dropout: float = 0.0
    attn_gate_values_rank: int | None = None  # low-rank value gate (None: one linear map)
    attn_gate_values_headwise: bool = False
    attn_output_gate: bool = False
    attn_output_gate_rank: int | None = None
    attn_output_gate_headwise: bool = False
    attn_low_rank_silu_gates: bool = True  # SiLU between the two halves of a low-rank gate
    attn_swiglu_values: bool = False  # SiLU instead of sigmoid on the value / output gate
    attn_gate_value_heads: bool = False
    attn_head_learned_sink: bool = False
    attn_orthog_projected_values: bool = False
    attn_orthog_projected_values_per_head: bool = False
    attn_use_latent_q: bool = False
    attn_dim_latent_q: int | None = None
    attn_use_latent_kv: bool = False
    attn_dim_latent_kv: int | None = None
    attn_latent_rope_subheads: int | None = None
    attn_bias: bool = False  # biases on the query/key/value and output projections (GPT-2; Llama's attention_bias)
    # (attention projections, gates and values: new options go here)
    # (attention scores and kernels: new options go here)
    attn_sigmoid: bool = False  # sigmoid instead of softmax (at most one of sigmoid/hard/l2/gumbel/top-k)
    attn_hard: bool = False  # one-hot argmax attention, softmax gradient (straight-through)
    attn_l2_distance: bool = False  # scores are minus the squared l2 distance of query and key
    attn_cog_signed: bool = False  # softmax over |score|, then the score's sign (negative weights)
    attn_laser: bool = False  # attend over exp(values), take the log (LASER)
    attn_laser_softclamp_value: float = 15.0  # values are soft-clamped to this before exp
    attn_sparse_topk_straight_through: bool = False  # top-k forward, dense softmax gradient
    attn_pre_scale_post_talking_heads: bool = False  # head-mixed raw scores rescale the attention weights
    attn_gumbel_softmax: bool = False  # Gumbel-softmax attention: sampled in training, its mode in eval
    attn_gumbel_softmax_temp: float = 1.0
    attn_gumbel_softmax_hard: bool = True  # one-hot forward, soft gradient
    attn_selective: bool = False  # selective attention: earlier queries lower keys' later scores

    # --- feed-forward (model/feedforward.py) ---
    ff_mult: float = 4.0
    ff_glu: bool = False
    ff_activation: str = "gelu"
    ff_bias: bool = True  # False: no biases in the feed-forward (a GLU input projection keeps its bias, as x-transformers)
    ff_post_act_ln: bool = False
    ff_glu_mult_bias: bool = False  # learned per-channel multiplier on the GLU output (ones init)
    ff_glu_softclamp: bool = False  # SituGLU: tanh soft-cap on the GLU up branch and the gate's linear factor
    ff_glu_gate_softclamp_value: float = 4.0
    ff_glu_up_softclamp_value: float = 25.0
    ff_softclamp_value: float | None = None  # tanh soft-cap on the (non-GLU) hidden before the activation
    ff_zero_init_output: bool = False  # output projection starts at zero
    ff_output_proj_depth: int | None = None  # output projection init std (2 * inner * depth)^-0.5 (OLMo)
    ff_sublayer_dropout: float = 0.0  # dropout on the feed-forward output
    # a GLU input projection keeps its bias when ff_bias is off (x-transformers); False: it follows ff_bias (Llama)
    ff_glu_bias: bool = True
    # (feed-forward: new options go here)

    # --- embedding and output ---
    num_memory_tokens: int = 0
    tie_embedding: bool = False
    tie_embedding_scale: float | None = None  # None: dim ** -0.5, as x-transformers
    emb_dim: int | None = None  # None: dim; else embeddings of this width and a projection to dim
    emb_frac_gradient: float = 1.0  # fraction of the gradient reaching the embeddings (CogView, GLM-130B)
    embed_num_tokens: dict[str, int] | None = None  # extra embedding tables summed with the tokens' (name -> rows)
    ff_deep_embed: bool = False  # learned per-token, per-layer multiplier on the feed-forward outputs
    ff_deep_embed_depth: int | None = None  # layers of its table (None: depth; x-transformers' depth otherwise)
    logits_dim: int | None = None  # None: vocab_size
    num_output_heads: int = 1  # > 1: a tuple of logits, one per head
    return_only_embed: bool = False  # no logits head: the model returns its final embeddings
    mixture_of_softmax: bool = False  # log of a mixture of k softmaxes (Yang et al. 2018)
    mixture_of_softmax_k: int = 4
    sigsoftmax_logits: bool = False  # logits + log sigmoid(logits) (Kanai et al. 2018)
    squeeze_out_last_dim: bool = False  # drop a last logits dimension of size 1
    add_continuous_pred_head: bool = False  # a small MLP head predicting the next position's embedding
    custom_token_emb: bool = False  # a Python module embeds the tokens: cannot be rebuilt from this config
    custom_to_logits: bool = False  # a Python module computes the logits: cannot be rebuilt from this config
    # (embedding and output: new options go here)

    # --- per-layer values (x-transformers' tuples, e.g. ff_mult=(4, 2)) ---
    # field -> one value per attention sublayer (attention fields) or per feed-forward sublayer
    # (feed-forward fields), in layer order; only fields in PER_LAYER_FIELDS may vary
    per_layer: dict | None = None

    # --- regularisation and initialisation ---
    emb_dropout: float = 0.0
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    layer_dropout: float = 0.0
    # weight initialisation (model/init.py): auto (scaled_zero below width 384, torch_zero_query
    # from there) | scaled_zero (N(0, 1/sqrt(fan_in)), blocks start as the identity) | scaled |
    # gpt2 (N(0, init_std)) | torch (PyTorch's nn.Linear default, as x-transformers) |
    # torch_zero_query (torch with the query projections at zero); init_std is gpt2's
    init: str = "auto"
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.dim_head if self.dim_head is not None else self.dim // self.heads

    @property
    def value_head_dim(self) -> int:
        return self.attn_value_dim_head if self.attn_value_dim_head is not None else self.head_dim

    @property
    def attn_out_in_dim(self) -> int:
        """Width entering the attention output projection: heads x value head size, once more
        for each orthogonal-projected-values variant that is on (they are concatenated)."""
        n = int(self.attn_orthog_projected_values) + int(self.attn_orthog_projected_values_per_head)
        return self.heads * self.value_head_dim * max(1, n)

    @property
    def latent_kv_cache(self) -> bool:
        """Multi-head latent attention caches its latent (and decoupled rotary key heads) instead of
        keys and values: only when the kernel sees plain dot products of projected keys and values,
        i.e. nothing transforms them on the way (norms, value residuals, prefix key/values, rotary
        on the latent heads, other kernels). Otherwise the cache keeps keys and values (exact too)."""
        if not self.attn_use_latent_kv or self.add_value_residual:
            return False
        if self.pos_emb not in ("rotary", "absolute", "scaled_sinusoidal", "none") or self.rotary_num_heads is not None:
            return False
        if self.pos_emb == "rotary" and self.attn_latent_rope_subheads is None:
            return False
        # every other attention option (including ones added later) must be at its default, here
        # and in every layer's per-layer values
        defaults = {f.name: f.default for f in fields(self)}
        layers = self.per_layer or {}
        return all(getattr(self, name) == default and all(v == default for v in layers.get(name, ()))
                   for name, default in defaults.items()
                   if name.startswith(("attn_", "qk_", "k_", "q_", "v_", "value_")) and name not in _LATENT_CACHE_SAFE)

    @property
    def latent_cache_dim(self) -> int:
        return self.attn_dim_latent_kv + (self.attn_latent_rope_subheads or 0) * self.head_dim

    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads if self.kv_heads is not None else self.heads

    @property
    def padded_vocab(self) -> int:
        m = self.vocab_pad_multiple
        return ((self.vocab_size + m - 1) // m) * m

    @property
    def rotary_emb_dim(self) -> int:
        return self.rotary_dim if self.rotary_dim is not None else self.head_dim // 2

    @property
    def token_pos_emb(self) -> str:
        """Positions added to the token embeddings: absolute | scaled_sinusoidal | none."""
        return self.pos_emb if self.pos_emb in TOKEN_POS_EMBS else self.abs_pos_emb

    @property
    def embed_dim(self) -> int:
        """Width of the token (and absolute position) embeddings; projected to dim when different."""
        return self.emb_dim if self.emb_dim is not None else self.dim

    @property
    def n_logits(self) -> int:
        """Width of each logits head (the vocabulary unless logits_dim says otherwise)."""
        return self.logits_dim if self.logits_dim is not None else self.vocab_size

    @property
    def layer_pos_bias(self) -> bool:
        """A position bias each attention layer computes from its own input (not shared by layers)."""
        return self.data_dependent_alibi or self.rel_proj_pos_bias

    @property
    def ff_inner_dim(self) -> int:
        return int(self.dim * self.ff_mult)

    @property
    def layer_types(self) -> str:
        """The sublayer pattern, one letter per residual branch: 'a' attention, 'f' feed-forward.

        Weight-tied layers list the shared block once (``execute_order`` repeats it)."""
        block = "faf" if self.macaron else "af"
        if self.only_attn:
            # attention-only layers (Ndubuaku et al.): the layout with its feed-forwards removed
            return self._layout("a").replace("f", "")
        return self._layout(block)

    def _layout(self, block: str) -> str:
        if self.layers is not None:
            return self.layers
        if self.par_ratio is not None:
            # PAR layout (Mandava et al. 2020, "Pay Attention when Required"): attention only in
            # the first two thirds of the stack, par_ratio sublayers per attention layer.
            n = self.depth * len(block)
            n_attn = n // self.par_ratio
            cut = n * 2 // 3
            width = (cut + cut // n_attn) // n_attn
            head = ("a" + "f" * (width - 1)) * n_attn
            return head + "f" * (n - len(head))
        if self.sandwich_coef is not None:
            # sandwich transformer (Press et al. 2020): c attention layers first, c feed-forwards last
            c = self.sandwich_coef
            return "a" * c + block * (self.depth - c) + "f" * c
        if self.weight_tie_layers:
            return block
        return block * self.depth

    @property
    def execute_order(self) -> tuple[int, ...]:
        """Indices into ``layer_types`` in the order the sublayers run."""
        if self.layers_execute_order is not None:
            return tuple(int(i) for i in self.layers_execute_order.split(","))
        n = len(self.layer_types)
        return tuple(range(n)) * (self.depth if self.weight_tie_layers else 1)

    @property
    def n_attn_calls(self) -> int:
        """Attention sublayers run per forward (the KV cache holds one layer for each)."""
        types = self.layer_types
        return sum(types[i] == "a" for i in self.execute_order)

    @property
    def needs_scores(self) -> bool:
        """Options that need the attention scores themselves, so fused SDPA cannot run them."""
        return (self.attn_softclamp_logits or self.attn_pre_talking_heads or self.attn_post_talking_heads
                or self.attn_sparse_topk is not None or self.residual_attn or self.cope
                # (attention scores and kernels) laser and l2 distance run on fused SDPA
                or self.attn_sigmoid or self.attn_hard or self.attn_cog_signed or self.attn_gumbel_softmax
                or self.attn_pre_scale_post_talking_heads or self.attn_selective)

    @property
    def multi_stream(self) -> bool:
        """The residual is carried as (B, T, N, C) streams: hyper-connections or gated multi-residual."""
        return self.num_residual_streams > 1 or self.gated_multi_residual

    @property
    def qkv_views(self) -> bool:
        """Attention reads queries, keys and values from three views (layer integration implies it)."""
        return self.qkv_receive_diff_residuals or self.integrate_layers

    def sublayer_kind(self, field: str) -> str:
        return next(k for k, names in PER_LAYER_FIELDS.items() if field in names)

    def for_block(self, attn_index: int, ff_index: int) -> "ModelConfig":
        """The config one block is built from: the per-layer values of its attention sublayer
        (the ``attn_index``-th) and of its feed-forward sublayer (the ``ff_index``-th)."""
        if not self.per_layer:
            return self
        index = {"attn": attn_index, "ff": ff_index}
        return replace(self, per_layer=None, **{name: values[index[self.sublayer_kind(name)]]
                                                for name, values in self.per_layer.items()
                                                if index[self.sublayer_kind(name)] >= 0})

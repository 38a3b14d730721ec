"""Typed run configuration: model, data and training choices, presets, YAML round trip.

Every choice is a plain value (numbers, strings, booleans) so a config serialises to YAML
and back unchanged. Derived values (head size, padded vocabulary, ...) are properties computed
here and nowhere else. ``validate()`` raises ``ConfigError`` naming the field and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and what is allowed."""


NORMS = ("layernorm", "rmsnorm", "scalenorm", "simple_rmsnorm")
POS_EMBS = ("absolute", "rotary", "scaled_sinusoidal", "none")
POS_BIASES = ("none", "alibi", "t5", "dynamic")
FF_ACTIVATIONS = ("gelu", "swish", "relu_squared")
TOKENIZERS = ("byte", "bpe")
SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adamw", "adam", "muon")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class ModelConfig:
    """Decoder-only transformer shape and options.

    Every option is a plain value so the config round-trips through YAML. docs/options.md lists
    what each option does, the paper it comes from and its x-transformers keyword.
    """

    vocab_size: int = 256
    max_seq_len: int = 256
    dim: int = 256
    depth: int = 4
    heads: int = 4
    dim_head: int | None = None  # None: dim // heads
    kv_heads: int | None = None  # None: heads (multi-head); 1: multi-query; else grouped-query
    ff_mult: float = 4.0
    ff_glu: bool = False
    ff_activation: str = "gelu"
    ff_bias: bool = True  # False: no biases in the feed-forward (a GLU input projection keeps its bias, as x-transformers)
    ff_post_act_ln: bool = False
    norm: str = "layernorm"
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
    qk_norm: bool = False
    qk_norm_scale: float = 10.0
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
    residual_attn: bool = False
    add_value_residual: bool = False
    pre_norm: bool = True
    sandwich_norm: bool = False
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
    l2norm_embed: bool = False
    post_emb_norm: bool = False
    num_memory_tokens: int = 0
    tie_embedding: bool = False
    emb_dropout: float = 0.0
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    layer_dropout: float = 0.0
    vocab_pad_multiple: int = 1  # pad the embedding/logit rows (never the sampled vocabulary)
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.dim_head if self.dim_head is not None else self.dim // self.heads

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
    def ff_inner_dim(self) -> int:
        return int(self.dim * self.ff_mult)

    @property
    def layer_types(self) -> str:
        """The sublayer pattern, one letter per residual branch: 'a' attention, 'f' feed-forward.

        Weight-tied layers list the shared block once (``execute_order`` repeats it)."""
        block = "faf" if self.macaron else "af"
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
                or self.attn_sparse_topk is not None or self.residual_attn)

    def validate(self) -> None:
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
        for name in ("emb_dropout", "attn_dropout", "ff_dropout", "layer_dropout"):
            v = getattr(self, name)
            if not (0.0 <= v < 1.0):
                raise ConfigError(f"model.{name} must be in [0, 1), got {v}")
        if self.init_std <= 0:
            raise ConfigError(f"model.init_std must be > 0, got {self.init_std}")

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
            n = self.depth * (3 if self.macaron else 2)
            if not (isinstance(self.par_ratio, int) and 1 < self.par_ratio <= n):
                raise ConfigError(f"model.par_ratio must be an integer in (1, {n}] for this depth, got {self.par_ratio!r}")
            cut = n * 2 // 3
            n_attn = n // self.par_ratio
            if (cut + cut // n_attn) // n_attn < 1:
                raise ConfigError(f"model.par_ratio={self.par_ratio} leaves no room for attention at depth {self.depth}")
        if self.sandwich_coef is not None and not (isinstance(self.sandwich_coef, int) and 1 <= self.sandwich_coef <= self.depth):
            raise ConfigError(f"model.sandwich_coef must be an integer in [1, depth={self.depth}], got {self.sandwich_coef!r}")


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes token ids."""

    path: str | None = None  # None: the built-in default corpus
    tokenizer: str = "byte"
    bpe_vocab_size: int = 4096
    val_fraction: float = 0.1  # the last fraction of the token stream, as nanoGPT
    seq_len: int | None = None  # None: model.max_seq_len

    def validate(self) -> None:
        _choice(self, "tokenizer", TOKENIZERS)
        if self.tokenizer == "bpe" and not (257 <= self.bpe_vocab_size <= 1_000_000):
            raise ConfigError(
                f"data.bpe_vocab_size must be in [257, 1000000], got {self.bpe_vocab_size}"
            )
        if not (0.0 < self.val_fraction < 1.0):
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.seq_len is not None:
            _positive(self, "seq_len")


@dataclass
class TrainConfig:
    """Optimisation, evaluation, checkpointing and logging."""

    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 1000
    max_minutes: float | None = None  # stop (and checkpoint) after this much wall time
    optimizer: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    schedule: str = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    eval_every: int = 200  # 0 disables periodic validation
    eval_batches: int = 20
    sample_every: int = 0  # 0 disables periodic samples
    sample_tokens: int = 200
    sample_prompt: str = "\n"
    ckpt_every: int = 500  # 0: only when the run ends
    keep_last: int = 3
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    activation_checkpointing: bool = False  # recompute each block in backward: less memory, ~1/3 more compute
    progress: bool = True

    def validate(self) -> None:
        _positive(self, "batch_size", "grad_accum", "max_steps", "eval_batches", "keep_last")
        _positive(self, "sample_tokens")
        for name in ("eval_every", "sample_every", "ckpt_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0 (0 disables it), got {getattr(self, name)}")
        _choice(self, "optimizer", OPTIMIZERS)
        _choice(self, "schedule", SCHEDULES)
        _choice(self, "precision", PRECISIONS)
        for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ConfigError(f"train.{name} must be a finite number >= 0, got {v}")
        if self.lr == 0:
            raise ConfigError("train.lr must be > 0")
        if self.min_lr > self.lr:
            raise ConfigError(f"train.min_lr={self.min_lr} must be <= train.lr={self.lr}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if not (0.0 <= v < 1.0):
                raise ConfigError(f"train.{name} must be in [0, 1), got {v}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"train.max_minutes must be > 0 or null, got {self.max_minutes}")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ConfigError(f"train.device must be auto, cpu, cuda, cuda:N or mps, got {dev!r}")


@dataclass
class RunConfig:
    """Everything a run needs; written to RUN/config.yaml."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def seq_len(self) -> int:
        return self.data.seq_len if self.data.seq_len is not None else self.model.max_seq_len

    def validate(self) -> "RunConfig":
        self.model.validate()
        self.data.validate()
        self.train.validate()
        if self.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"data.seq_len={self.seq_len} is above model.max_seq_len={self.model.max_seq_len}; "
                "training sequences must fit the model context"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "RunConfig":
        d = d or {}
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a mapping with sections model/data/train, got {type(d).__name__}")
        unknown = set(d) - {"model", "data", "train"}
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; allowed: model, data, train")
        return cls(
            model=_build(ModelConfig, "model", d.get("model")),
            data=_build(DataConfig, "data", d.get("data")),
            train=_build(TrainConfig, "train", d.get("train")),
        )

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, source: str | Path) -> "RunConfig":
        """Load from a YAML file path or a YAML string (safe_load: never executes code)."""
        p = Path(source) if not (isinstance(source, str) and "\n" in source) else None
        if p is not None:
            if not p.is_file():
                raise ConfigError(f"config file {str(p)!r} does not exist")
            text = p.read_text()
        else:
            text = str(source)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config is not valid YAML: {e}") from None
        return cls.from_dict(data)

    def override(self, dotted: str, value: Any) -> None:
        """Set ``section.field`` from a string or typed value, converting to the field's type."""
        section, _, name = dotted.partition(".")
        obj = getattr(self, section, None) if section in ("model", "data", "train") else None
        if obj is None or name not in {f.name for f in fields(obj)}:
            raise ConfigError(f"unknown config key {dotted!r}; allowed: {', '.join(all_keys())}")
        f = next(f for f in fields(obj) if f.name == name)
        setattr(obj, name, _coerce(dotted, f.type, value))


def all_keys() -> list[str]:
    out = []
    for sec, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
        out += [f"{sec}.{f.name}" for f in fields(cls)]
    return out


def field_types() -> dict[str, str]:
    """Dotted key -> annotation string, for building CLI flags."""
    out = {}
    for sec, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
        for f in fields(cls):
            out[f"{sec}.{f.name}"] = f.type
    return out


def _coerce(key: str, annotation: str, value: Any) -> Any:
    ann = str(annotation).replace(" ", "")
    optional = "None" in ann
    base = ann.replace("|None", "").replace("None|", "")
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if not optional:
            raise ConfigError(f"{key} cannot be null")
        return None
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if base == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be of type {base}, got {value!r}") from None
    return value


def _build(cls, section: str, d: dict[str, Any] | None):
    d = d or {}
    if not isinstance(d, dict):
        raise ConfigError(f"config section {section!r} must be a mapping, got {type(d).__name__}")
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(section + '.' + k for k in unknown)}; "
            f"allowed in {section}: {', '.join(names)}"
        )
    kwargs = {k: _coerce(f"{section}.{k}", names[k].type, v) for k, v in d.items()}
    return cls(**kwargs)


def _positive(obj, *names: str) -> None:
    sec = _section(obj)
    for name in names:
        v = getattr(obj, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{sec}.{name} must be a positive integer, got {v!r}")


def _choice(obj, name: str, allowed: tuple[str, ...]) -> None:
    v = getattr(obj, name)
    if v not in allowed:
        raise ConfigError(f"{_section(obj)}.{name}={v!r} is not one of: {', '.join(allowed)}")


def _section(obj) -> str:
    return {ModelConfig: "model", DataConfig: "data", TrainConfig: "train"}[type(obj)]


# ---------------------------------------------------------------------------------------------
# Presets: a small table of starting points. Values not named keep the dataclass defaults.

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # CI-sized: seconds on a CPU.
    "tiny": {
        "model": dict(max_seq_len=32, dim=32, depth=2, heads=2, pos_emb="rotary"),
        "data": dict(),
        "train": dict(batch_size=4, max_steps=20, lr=3e-3, min_lr=3e-4, warmup_steps=2,
                      eval_every=10, eval_batches=2, ckpt_every=10, sample_tokens=16),
    },
    # The README demo: a few minutes on 2 CPU cores, byte-level, on the built-in corpus.
    "default": {
        "model": dict(max_seq_len=128, dim=192, depth=4, heads=6, pos_emb="rotary"),
        "data": dict(),
        "train": dict(batch_size=16, max_steps=1500, max_minutes=4.0, lr=2e-3, min_lr=2e-4,
                      warmup_steps=50, beta2=0.99, eval_every=250, eval_batches=10,
                      sample_every=500, ckpt_every=500),
    },
    # x-transformers' enwik8 example (train_enwik8.py).
    "enwik8": {
        "model": dict(max_seq_len=1024, dim=512, depth=6, heads=8, dim_head=64, pos_emb="rotary"),
        "data": dict(),
        "train": dict(batch_size=4, grad_accum=4, max_steps=100_000, optimizer="adam", lr=1e-4,
                      min_lr=1e-4, warmup_steps=0, schedule="constant", weight_decay=0.0,
                      beta2=0.999, grad_clip=0.5, eval_every=100, eval_batches=1,
                      sample_every=500, ckpt_every=1000),
    },
    # nanoGPT's shakespeare-char recipe (config/train_shakespeare_char.py).
    "shakespeare-char": {
        "model": dict(max_seq_len=256, dim=384, depth=6, heads=6, pos_emb="absolute",
                      emb_dropout=0.2, attn_dropout=0.2, ff_dropout=0.2),
        "data": dict(),
        "train": dict(batch_size=64, max_steps=5000, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                      beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_every=250,
                      eval_batches=200, ckpt_every=1000),
    },
    # GPT-2 small (124M): BPE vocabulary padded to a multiple of 64 (50257 -> 50304).
    "gpt2-small": {
        "model": dict(max_seq_len=1024, dim=768, depth=12, heads=12, pos_emb="absolute",
                      tie_embedding=True, vocab_pad_multiple=64),
        "data": dict(tokenizer="bpe", bpe_vocab_size=50257),
        "train": dict(batch_size=12, grad_accum=40, max_steps=600_000, lr=6e-4, min_lr=6e-5,
                      warmup_steps=2000, weight_decay=0.1, beta2=0.95, grad_clip=1.0,
                      eval_every=1000, eval_batches=200, ckpt_every=1000),
    },
}


def preset(name: str) -> RunConfig:
    """A fresh ``RunConfig`` for a named preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return RunConfig.from_dict(copy.deepcopy(PRESETS[name]))

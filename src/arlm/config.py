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


NORMS = ("layernorm", "rmsnorm")
POS_EMBS = ("absolute", "rotary", "none")
FF_ACTIVATIONS = ("gelu", "swish", "relu_squared")
TOKENIZERS = ("byte", "bpe")
SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adamw", "adam")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class ModelConfig:
    """Decoder-only transformer shape and options."""

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
    ff_bias: bool = True
    norm: str = "layernorm"
    pos_emb: str = "absolute"
    rotary_dim: int | None = None  # None: dim_head // 2, as x-transformers
    rotary_base: float = 10000.0
    qk_norm: bool = False
    qk_norm_scale: float = 10.0
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
        _choice(self, "ff_activation", FF_ACTIVATIONS)
        if self.pos_emb == "rotary":
            r = self.rotary_emb_dim
            if r < 2 or r % 2 or r > self.head_dim:
                raise ConfigError(
                    f"model.rotary_dim={r} must be even, >= 2 and <= the head size {self.head_dim}"
                )
            if self.rotary_base <= 0:
                raise ConfigError(f"model.rotary_base must be > 0, got {self.rotary_base}")
        for name in ("emb_dropout", "attn_dropout", "ff_dropout", "layer_dropout"):
            v = getattr(self, name)
            if not (0.0 <= v < 1.0):
                raise ConfigError(f"model.{name} must be in [0, 1), got {v}")
        if self.init_std <= 0:
            raise ConfigError(f"model.init_std must be > 0, got {self.init_std}")


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

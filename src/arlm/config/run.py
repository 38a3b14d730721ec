"""The run config: data and train sections, the model section, YAML round trip and overrides.

Every choice is a plain value (numbers, strings, booleans) so a config serialises to YAML
and back unchanged. Derived values (head size, padded vocabulary, ...) are properties computed
in one place. ``validate()`` raises ``ConfigError`` naming the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .checks import ConfigError, _choice, _coerce, _finite_and_in_range, _positive
from .memory import check_memory, run_parts, values_of
from .model import ModelConfig
from .yaml_text import load_yaml_text, read_yaml_file

TOKENIZERS = ("byte", "bpe")
SCHEDULES = ("cosine", "constant", "wsd")
DECAY_SHAPES = ("linear", "1-sqrt")
OPTIMIZERS = ("adamw", "adam", "muon")
PRECISIONS = ("auto", "fp32", "bf16")
DISTRIBUTED = ("ddp", "fsdp")
TRACKERS = ("tensorboard", "wandb")  # train.tracker: "none" or a comma list of these
MIN_KEEP_LAST = 2  # a corrupt newest checkpoint always has a committed one to fall back to


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes token ids."""

    path: str | None = None  # None: the built-in default corpus
    tokenizer: str = "byte"
    bpe_vocab_size: int = 4096
    val_fraction: float = 0.1  # the last fraction of the token stream, as nanoGPT
    seq_len: int | None = None  # None: model.max_seq_len
    # prepared folders only: attention stays inside each document and positions restart after
    # every separator, so a window of packed documents trains as if each stood alone
    document_mask: bool = False

    def validate(self) -> None:
        _finite_and_in_range(self)
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
    schedule: str = "cosine"  # cosine | constant | wsd (warmup, stable, decay: a run that can be extended)
    decay_fraction: float = 0.2  # wsd: the decay takes the last this fraction of max_steps
    decay_shape: str = "linear"  # wsd: linear | 1-sqrt (Hägele et al. 2024)
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
    # training loss in chunks of this many rows, never materialising the full (rows, vocab) logits;
    # null: chunked only for vocabularies of 8192 and more; 0: plain cross-entropy on full logits
    loss_chunk: int | None = None
    # under torchrun: ddp (every rank holds the model) | fsdp (parameters, gradients and optimizer state sharded)
    distributed: str = "ddp"
    progress: bool = True
    # where metrics go besides RUN/metrics.jsonl: none | a comma list of tensorboard, wandb
    tracker: str = "none"

    def validate(self) -> None:
        _finite_and_in_range(self)
        _positive(self, "batch_size", "grad_accum", "max_steps", "eval_batches", "keep_last")
        if self.seed < 0:
            raise ConfigError(f"train.seed must be an integer in [0, 2**63), got {self.seed}")
        _positive(self, "sample_tokens")
        if self.keep_last < MIN_KEEP_LAST:
            raise ConfigError(
                f"train.keep_last={self.keep_last}: keep at least {MIN_KEEP_LAST} checkpoints, so a corrupt "
                "newest one always has a committed one to fall back to"
            )
        if not self.sample_prompt:
            raise ConfigError("train.sample_prompt is empty; give at least one character (default '\\n')")
        for name in ("eval_every", "sample_every", "ckpt_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0 (0 disables it), got {getattr(self, name)}")
        _choice(self, "optimizer", OPTIMIZERS)
        _choice(self, "schedule", SCHEDULES)
        _choice(self, "decay_shape", DECAY_SHAPES)
        if not (0.0 < self.decay_fraction <= 1.0):
            raise ConfigError(f"train.decay_fraction must be in (0, 1] (the share of max_steps the wsd decay "
                              f"takes), got {self.decay_fraction}")
        _choice(self, "precision", PRECISIONS)
        _choice(self, "distributed", DISTRIBUTED)
        if self.precision == "bf16" and self.device in ("cpu", "mps"):  # "auto"/"cuda" are checked on the machine
            raise ConfigError(f"train.precision='bf16' needs a CUDA device; train.device is {self.device!r}. "
                              "Use precision auto (bf16 where supported, fp32 otherwise) or fp32")
        if self.distributed == "fsdp" and self.optimizer == "muon":
            raise ConfigError("train.optimizer=muon needs whole weight matrices, which train.distributed=fsdp "
                              "shards; use adamw or adam with fsdp, or muon with ddp")
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
        if self.loss_chunk is not None and (isinstance(self.loss_chunk, bool) or not isinstance(self.loss_chunk, int)
                                            or self.loss_chunk < 0):
            raise ConfigError(f"train.loss_chunk must be null (auto), 0 (off) or a number of rows >= 1, "
                              f"got {self.loss_chunk!r}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"train.max_minutes must be > 0 or null, got {self.max_minutes}")
        tracker_names(self.tracker)
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
        check_memory(run_parts(self), {**values_of(self.model, "model"), **values_of(self.data, "data"),
                                       **values_of(self.train, "train")}, "training")
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
        model = d.get("model")
        if isinstance(model, dict) and "init_std" in model and "init" not in model:
            # a config that names init_std but no scheme: written before model.init existed (every
            # saved config.yaml lists every field), when the init was N(0, init_std), i.e. gpt2
            model = {**model, "init": "gpt2"}
        return cls(
            model=_build(ModelConfig, "model", model),
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
        data = read_yaml_file(p) if p is not None else load_yaml_text(str(source))
        return cls.from_dict(data)

    def override(self, dotted: str, value: Any) -> None:
        """Set ``section.field`` from a string or typed value, converting to the field's type."""
        section, _, name = dotted.partition(".")
        obj = getattr(self, section, None) if section in ("model", "data", "train") else None
        if obj is None or name not in {f.name for f in fields(obj)}:
            raise ConfigError(f"unknown config key {dotted!r}; allowed: {', '.join(all_keys())}")
        f = next(f for f in fields(obj) if f.name == name)
        setattr(obj, name, _coerce(dotted, f.type, value))


def tracker_names(value: str) -> tuple[str, ...]:
    """The trackers ``train.tracker`` names: () for "none", else its comma list, each once."""
    if not isinstance(value, str):
        raise ConfigError(f"train.tracker must be a string, got {value!r}")
    names = tuple(n.strip() for n in value.split(","))
    if names == ("none",):
        return ()
    bad = [n for n in names if n not in TRACKERS]
    if bad or len(set(names)) != len(names):
        what = f"unknown tracker(s) {', '.join(map(repr, bad))}" if bad else "a tracker named twice"
        raise ConfigError(f"train.tracker={value!r}: {what}; allowed: none, or a comma list of "
                          f"{', '.join(TRACKERS)} (e.g. tensorboard,wandb)")
    return names


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

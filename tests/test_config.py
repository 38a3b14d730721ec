"""Config: YAML round trips, presets, overrides, validation errors that name the field."""

import dataclasses
import decimal
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from arlm.config import PRESETS, ConfigError, ModelConfig, RunConfig, TrainConfig, all_keys, preset


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_validate_and_round_trip_yaml(name, tmp_path):
    cfg = preset(name).validate()
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    back = RunConfig.from_yaml(path)
    assert back == cfg
    assert RunConfig.from_yaml(cfg.to_yaml()) == cfg  # from a YAML string too


def test_preset_values_follow_their_recipes():
    sc = preset("shakespeare-char")
    assert (sc.model.depth, sc.model.heads, sc.model.dim, sc.model.max_seq_len) == (6, 6, 384, 256)
    assert (sc.train.batch_size, sc.train.lr, sc.train.min_lr, sc.train.max_steps) == (64, 1e-3, 1e-4, 5000)
    assert sc.model.attn_dropout == sc.model.ff_dropout == 0.2
    e8 = preset("enwik8")
    assert (e8.model.dim, e8.model.depth, e8.model.heads, e8.model.max_seq_len) == (512, 6, 8, 1024)
    assert (e8.train.batch_size, e8.train.grad_accum, e8.train.lr, e8.train.grad_clip) == (4, 4, 1e-4, 0.5)
    assert e8.train.optimizer == "adam"
    g2 = preset("gpt2-small")
    assert (g2.model.dim, g2.model.depth, g2.model.heads, g2.model.max_seq_len) == (768, 12, 12, 1024)
    g2.model.vocab_size = 50257
    assert g2.model.padded_vocab == 50304


def test_unknown_preset_and_keys_are_named():
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*tiny"):
        preset("nope")
    with pytest.raises(ConfigError, match="model.colour"):
        RunConfig.from_dict({"model": {"colour": 1}})
    with pytest.raises(ConfigError, match="unknown config section"):
        RunConfig.from_dict({"optim": {}})
    cfg = RunConfig()
    with pytest.raises(ConfigError, match="unknown config key 'train.lrr'"):
        cfg.override("train.lrr", "1")


def test_override_coerces_types():
    cfg = RunConfig()
    cfg.override("train.lr", "3e-4")
    cfg.override("model.dim", "128")
    cfg.override("train.compile", "true")
    cfg.override("data.seq_len", "none")
    cfg.override("train.max_minutes", "2.5")
    assert cfg.train.lr == 3e-4 and cfg.model.dim == 128 and cfg.train.compile is True
    assert cfg.data.seq_len is None and cfg.train.max_minutes == 2.5
    with pytest.raises(ConfigError, match="model.dim must be of type int"):
        cfg.override("model.dim", "12.5")
    with pytest.raises(ConfigError, match="train.compile must be of type bool"):
        cfg.override("train.compile", "maybe")


@pytest.mark.parametrize("key, value, fragment", [
    ("model.depth", 0, "model.depth must be a positive integer"),
    ("model.heads", 5, "not divisible by model.heads"),
    ("model.kv_heads", 3, "not divisible by model.kv_heads"),
    ("model.norm", "batchnorm", "model.norm='batchnorm' is not one of"),
    ("model.attn_dropout", 1.0, "model.attn_dropout must be in"),
    ("train.lr", -1.0, "train.lr must be a finite number >= 0"),
    ("train.lr", float("nan"), "train.lr"),
    ("train.min_lr", 1.0, "train.min_lr"),
    ("train.batch_size", 0, "train.batch_size must be a positive integer"),
    ("train.beta2", 1.0, "train.beta2"),
    ("train.device", "tpu", "train.device"),
    ("train.loss_chunk", -1, "train.loss_chunk must be null"),
    ("data.val_fraction", 0.0, "data.val_fraction"),
    ("data.tokenizer", "char", "data.tokenizer"),
    ("data.seq_len", 10_000, "above model.max_seq_len"),
])
def test_bad_values_raise_naming_field(key, value, fragment):
    cfg = RunConfig()
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, value)
    with pytest.raises(ConfigError, match=fragment):
        cfg.validate()


# values a file or a flag may hold that a field must refuse or take exactly: non-finite, huge,
# non-integral, wrong-typed (numbers as strings too: that is how flags arrive)
hostile_values = st.one_of(
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 2**63, 2**64, -2**63 - 1, 10**30, 1e300, -1e300,
                     2.5, -0.5, 1e-300, 0, -1, 1, 2, 3]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "2.5", "1e3", "-1e-3", "true", "null", "0x10", "[1, 2]", "{a: 1}",
                     "", " ", "1e-999", "9" * 30]),
    st.text(max_size=6),
    st.booleans(),
    st.none(),
    st.lists(st.one_of(st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=2)), max_size=3),
    st.dictionaries(st.text(max_size=3), st.one_of(st.integers(), st.floats(allow_nan=True)), max_size=2),
)


@pytest.mark.parametrize("key", all_keys())
@settings(max_examples=20, deadline=None)
@given(value=hostile_values)
@example(value=2.5)  # every field meets each class at least once: non-integral,
@example(value="2.5")
@example(value=1.5)
@example(value=float("nan"))  # non-finite,
@example(value="inf")
@example(value="1e999")
@example(value=2**63)  # huge,
@example(value=10**30)
@example(value="abc")  # and wrong-typed
@example(value=[1])
@example(value=True)
def test_every_field_validates_and_round_trips_or_raises_config_error_naming_it(key, value):
    """For every field of every section, from a YAML file (typed values) and from a flag (the
    same value as a string): the config either validates and survives a YAML round trip
    unchanged, or raises ConfigError naming the field, never another exception."""
    section, name = key.split(".")
    def from_flag(text):
        cfg = RunConfig()
        cfg.override(key, text)
        return cfg

    sources = [(value, lambda: RunConfig.from_dict({section: {name: value}}))]
    if not isinstance(value, (list, dict)):
        sources.append((str(value), lambda: from_flag(str(value))))
    for given, build in sources:
        try:
            cfg = build()
            cfg.validate()
        except ConfigError as e:
            assert key in str(e), f"{key}={given!r}: {e}"
            continue
        assert_kept(given, getattr(getattr(cfg, section), name), key)
        assert RunConfig.from_yaml(cfg.to_yaml()) == cfg, f"{key}={given!r}"


def assert_kept(given, stored, key):
    """A value that validates is the value given: nothing truncated (2.5 -> 2) or rounded."""
    if isinstance(stored, float) and isinstance(given, int) and not isinstance(given, bool):
        assert stored == float(given), f"{key}: {given!r} became {stored!r}"  # the nearest float: a float field
        return
    if not isinstance(given, str) or isinstance(stored, str):
        assert stored == given, f"{key}: {given!r} became {stored!r}"
        return
    try:
        exact = decimal.Decimal(given.strip())
    except decimal.InvalidOperation:
        return  # a word: true, null, ...
    if isinstance(stored, int) and not isinstance(stored, bool):
        assert decimal.Decimal(stored) == exact, f"{key}: {given!r} became {stored!r}"
    elif isinstance(stored, float):
        assert stored == float(given), f"{key}: {given!r} became {stored!r}"


def test_derived_fields_are_computed_in_one_place():
    m = ModelConfig(dim=96, heads=3, kv_heads=1, vocab_size=300, vocab_pad_multiple=64)
    assert m.head_dim == 32 and m.n_kv_heads == 1 and m.padded_vocab == 320
    assert m.rotary_emb_dim == 16
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {"batch_size", "grad_accum", "lr", "grad_clip", "eval_every", "ckpt_every"} <= fields

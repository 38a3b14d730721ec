"""Config: YAML round trips, presets, overrides, validation errors that name the field."""

import dataclasses
import re

import pytest
from hypothesis import given, settings
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


# every scalar value a YAML file could hold for a field
yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5000), st.floats(-10, 10, allow_nan=False),
                         st.text(max_size=8))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(all_keys()), yaml_scalars)
def test_any_single_value_either_validates_and_round_trips_or_raises_config_error(key, value):
    """No value makes construction or validation crash with anything but a ConfigError, and
    every config that validates survives a YAML round trip unchanged."""
    section, name = key.split(".")
    try:
        cfg = RunConfig.from_dict({section: {name: value}})
        cfg.validate()
    except ConfigError as e:
        assert section in str(e) or "config" in str(e)
        return
    assert RunConfig.from_yaml(cfg.to_yaml()) == cfg


def test_yaml_duplicate_keys_folders_and_devices_are_named(tmp_path, capsys):
    from arlm.cli.main import main

    dup = tmp_path / "dup.yaml"
    dup.write_text("train:\n  lr: 1.0e-3\n  batch_size: 4\n  lr: 3.0e-3\n")
    with pytest.raises(ConfigError, match=r"dup.yaml.*duplicate key 'lr' \(lines 2 and 4\)"):
        RunConfig.from_yaml(dup)
    with pytest.raises(ConfigError, match="duplicate key 'model'"):
        RunConfig.from_yaml("model: {dim: 64}\nmodel: {dim: 32}\n")
    with pytest.raises(ConfigError, match="is a folder, not a YAML file"):
        RunConfig.from_yaml(tmp_path)
    cases = [(str(dup), "duplicate key 'lr'"), (str(tmp_path), "is a folder, not a YAML file"),
             ("/dev/null", "not a regular file"), (str(tmp_path / "none.yaml"), "does not exist")]
    for path, fragment in cases:
        assert main(["config", "--preset", "tiny", "--config", path]) == 2
        err = capsys.readouterr().err
        assert fragment in err and path in err, err
    # a '{...}' override on the command line is parsed the same strict way
    with pytest.raises(ConfigError, match="model.per_layer must be of type dict"):
        RunConfig().override("model.per_layer", "{ff_mult: [4, 2], ff_mult: [1, 1]}")


@pytest.mark.parametrize("flag, value, key, want", [
    ("--train.lr", "-1e-3", "lr", "train.lr must be a finite number >= 0, got -0.001"),
    ("--train.weight_decay", "-.5", "weight_decay", "train.weight_decay must be a finite number >= 0, got -0.5"),
    ("--model.rotary_base", "-inf", "rotary_base", "model.rotary_base must be a finite number, got -inf"),
    ("--train.warmup_steps", "-3", "warmup_steps", "train.warmup_steps must be >= 0"),
])
def test_a_negative_number_after_a_flag_is_its_value(flag, value, key, want, capsys):
    """argparse alone reads -1e-3 or -inf as an unknown flag ("expected one argument")."""
    from arlm.cli.main import main

    assert main(["config", "--preset", "tiny", flag, value]) == 2
    assert want in capsys.readouterr().err
    # and a field that may be negative takes it
    assert main(["config", "--preset", "tiny", "--model.mv_split_residual", "true", "--model.mv_split_init_alpha",
                 "-2.5e-1"]) == 0
    assert "mv_split_init_alpha: -0.25" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["100000000", "2e9"])
def test_impossible_sizes_are_refused_before_any_work(value, monkeypatch, capsys):
    """A context of 1e8 or 2e9 positions: the position tables or one batch's activations cannot
    fit (here: a 16 GiB machine), so validation says so, naming the field, the estimate and the
    limit, instead of a process killed for memory at the end-of-run sample."""
    from arlm.cli.main import main
    from arlm.config import memory

    monkeypatch.setattr(memory, "physical_memory", lambda: 16 * 2**30)
    monkeypatch.setattr(memory, "accelerator_memory", lambda: 0)
    assert main(["config", "--preset", "default", "--model.max_seq_len", value]) == 2
    err = capsys.readouterr().err
    assert f"model.max_seq_len={int(float(value))}" in err and "more than this machine's 16.0 GiB" in err
    assert re.search(r"needs at least [\d,.]+ GiB", err), err
    # the model alone (the Python API): its tables are what cannot fit
    with pytest.raises(ConfigError, match=r"model.max_seq_len=2000000000.*the rotary table: 119.2 GiB"):
        ModelConfig(max_seq_len=2_000_000_000, pos_emb="rotary", dim=32, heads=2).validate()
    assert main(["config", "--preset", "gpt2-small"]) == 0  # the largest preset fits in 16 GiB


@pytest.mark.parametrize("key, value", [("model.vocab_size", 10**12), ("model.dim", 10**7),
                                        ("train.batch_size", 10**12), ("train.sample_tokens", 10**15),
                                        ("model.embed_num_tokens", {"extra": 10**13})])
def test_sizes_no_machine_has_are_a_config_error_naming_the_field(key, value):
    cfg = preset("tiny")
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, value)
    with pytest.raises(ConfigError, match=re.escape(key) + ".*more than this machine's"):
        cfg.validate()


def test_derived_fields_are_computed_in_one_place():
    m = ModelConfig(dim=96, heads=3, kv_heads=1, vocab_size=300, vocab_pad_multiple=64)
    assert m.head_dim == 32 and m.n_kv_heads == 1 and m.padded_vocab == 320
    assert m.rotary_emb_dim == 16
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {"batch_size", "grad_accum", "lr", "grad_clip", "eval_every", "ckpt_every"} <= fields

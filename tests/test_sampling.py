"""One sampling configuration: validated once, shared by the library and the CLI; beam search
refuses what it would ignore; stop strings; every check before anything is printed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_run import cli, train_tiny_run

from arlm import AutoregressiveWrapper, Decoder, TransformerWrapper
from arlm.generation.sampling import SamplingConfig, SamplingError, stream_text
from arlm.run import load_run

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=64, max_seq_len=48, attn_layers=Decoder(dim=32, depth=1, heads=4))
    return AutoregressiveWrapper(net).eval()


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_corpus):
    return train_tiny_run(tmp_path_factory.mktemp("sampling") / "run", tiny_corpus)


# ---------------------------------------------------------------- the config checks itself


@pytest.mark.parametrize("kwargs, field", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(max_new_tokens=True), "max_new_tokens"),
    (dict(temperature=NAN), "temperature"),
    (dict(temperature=INF), "temperature"),
    (dict(temperature=-0.1), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=3.0), "top_k"),
    (dict(top_p=NAN), "top_p"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_a=1.5), "top_a"),
    (dict(min_p=NAN), "min_p"),
    (dict(repetition_penalty=INF), "repetition_penalty"),
    (dict(presence_penalty=NAN), "presence_penalty"),
    (dict(frequency_penalty=-INF), "frequency_penalty"),
    (dict(stop=("",)), "stop"),
    (dict(seed=2 ** 63), "seed"),
    (dict(seed=-1), "seed"),
    (dict(num_samples=0), "num_samples"),
    (dict(logits_filter="nucleus"), "logits_filter"),
    (dict(logits_filter="top_p", filter_kwargs=dict(thres=1.5)), "filter_kwargs"),
    (dict(logits_filter="top_k", filter_kwargs=dict(kk=3)), "filter_kwargs"),
    (dict(stochastic=True), "stochastic"),
    (dict(beams=0), "beams"),
    (dict(beams=2, length_penalty=NAN), "length_penalty"),
    (dict(beams=2, length_penalty=INF), "length_penalty"),
])
def test_bad_values_are_refused_naming_the_field(kwargs, field):
    with pytest.raises(SamplingError) as e:
        SamplingConfig(**kwargs)
    assert e.value.field == field and str(e.value).startswith(field)


@pytest.mark.parametrize("kwargs, field", [
    (dict(top_k=5), "top_k"),
    (dict(top_p=0.9), "top_p"),
    (dict(top_a=0.1), "top_a"),
    (dict(min_p=0.1), "min_p"),
    (dict(logits_filter="top_k"), "logits_filter"),
    (dict(repetition_penalty=1.3), "repetition_penalty"),
    (dict(presence_penalty=0.5), "presence_penalty"),
    (dict(frequency_penalty=0.5), "frequency_penalty"),
    (dict(temperature=0.7), "temperature"),
    (dict(stochastic=True, temperature=0.0), "temperature"),
    (dict(num_samples=5), "num_samples"),
])
def test_beam_search_refuses_options_it_would_ignore(kwargs, field):
    with pytest.raises(SamplingError) as e:
        SamplingConfig(beams=3, **kwargs)
    assert e.value.field == field
    # the same option is fine without beams (or with sampled beams, for temperature)
    if field not in ("num_samples",) and kwargs != dict(stochastic=True, temperature=0.0):
        SamplingConfig(**kwargs)
    if field == "temperature" and kwargs["temperature"] > 0:
        SamplingConfig(beams=3, stochastic=True, **kwargs)


def test_numpy_integers_are_integers_and_the_config_stays_valid():
    cfg = SamplingConfig(max_new_tokens=np.int64(5), top_k=np.int32(3), seed=np.uint32(7), temperature=np.float32(0.5))
    assert cfg.max_new_tokens == 5
    with pytest.raises(SamplingError, match="temperature"):
        cfg.replace(temperature=NAN)  # a copy is checked again
    with pytest.raises(AttributeError):
        cfg.temperature = NAN  # frozen: nobody can make a checked config invalid


def test_filter_chain_order_is_top_k_top_p_top_a_min_p():
    ramp = torch.tensor([[1.0, 0.9, 0.8, 0.7, 0.6]])
    # top-k first: top-p then sees only the 2 survivors and keeps 1 (the other order would keep 2)
    assert torch.isfinite(SamplingConfig(top_k=2, top_p=0.5).filter_fn()(ramp)).sum() == 1
    assert SamplingConfig().filter_fn() is None
    logits = torch.tensor([[4.0, 3.0, 2.9, 0.0, -1.0]])
    kept = torch.isfinite(SamplingConfig(top_a=0.5).filter_fn()(logits))
    p = logits.softmax(-1)
    assert kept.tolist() == (p >= 0.5 * p.max() ** 2).tolist()


# ---------------------------------------------------------------- the library uses it


def test_generate_with_a_config_equals_the_keywords(model):
    p = torch.tensor([1, 2, 3])
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.9, top_k=8, min_p=0.05, seed=4, num_samples=3)
    a = model.generate(p, sampling=cfg)
    b = model.generate(p, sampling=cfg)
    assert torch.equal(a, b) and a.shape == (3, 12)
    chain = cfg.filter_fn()
    c = model.generate(p, 12, temperature=0.9, filter_logits_fn=chain, num_samples=3,
                       generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, c)
    d = model.generate(p, sampling=cfg.replace(seed=5))
    assert not torch.equal(a, d)  # the seed is used


def test_sampling_and_keywords_together_are_refused(model):
    p = torch.tensor([1, 2, 3])
    with pytest.raises(TypeError, match="temperature"):
        model.generate(p, temperature=0.5, sampling=SamplingConfig(max_new_tokens=3))
    with pytest.raises(ValueError, match="seq_len=4"):
        model.generate(p, 4, sampling=SamplingConfig(max_new_tokens=3))
    with pytest.raises(ValueError, match="beam_search"):
        model.generate(p, sampling=SamplingConfig(max_new_tokens=3, beams=2))
    with pytest.raises(ValueError, match="stream_text"):
        model.generate(p, sampling=SamplingConfig(max_new_tokens=3, stop=("x",)))


@pytest.mark.parametrize("kwargs, field", [
    (dict(temperature=0.5), "temperature"),
    (dict(length_penalty=NAN), "length_penalty"),
    (dict(stochastic=True, temperature=0.0), "temperature"),
    (dict(beams=0), "beams"),
])
def test_beam_search_keywords_are_checked_by_the_config(model, kwargs, field):
    with pytest.raises(SamplingError) as e:
        model.beam_search(torch.tensor([1, 2]), 4, **kwargs)
    assert e.value.field == field


def test_beam_search_takes_a_config(model):
    p = torch.tensor([1, 2, 3])
    a = model.beam_search(p, 6, beams=3, length_penalty=0.5)
    b = model.beam_search(p, sampling=SamplingConfig(max_new_tokens=6, beams=3, length_penalty=0.5))
    assert torch.equal(a, b)
    s1 = model.beam_search(p, sampling=SamplingConfig(max_new_tokens=6, beams=3, stochastic=True, seed=1))
    s2 = model.beam_search(p, sampling=SamplingConfig(max_new_tokens=6, beams=3, stochastic=True, seed=1))
    assert torch.equal(s1, s2)


def test_one_message_from_the_library_and_the_cli(model, tmp_path):
    """The check lives in one place: the library and the CLI say the same thing about a value."""
    with pytest.raises(SamplingError) as e:
        model.generate(torch.tensor([1]), 4, temperature=INF)
    rc, _, err = cli("generate", tmp_path / "missing", "--temperature", "inf")
    assert rc == 2 and f"--temperature {e.value.problem}" in err


# ---------------------------------------------------------------- stop strings in the library


def test_stream_text_ends_before_the_first_stop_string(run):
    r = load_run(run)
    wrapper = AutoregressiveWrapper(r.model)
    cfg = SamplingConfig(max_new_tokens=24, temperature=0.0)
    full = "".join(stream_text(wrapper, r.tokenizer, r.tokenizer.encode("The"), cfg))
    assert len(full) >= 8
    stop = full[4:6]
    cut = "".join(stream_text(wrapper, r.tokenizer, r.tokenizer.encode("The"), cfg.replace(stop=(stop, "\x00"))))
    assert cut == full[: full.index(stop)]


# ---------------------------------------------------------------- the CLI: refusals before any work


@pytest.mark.parametrize("argv, flag", [
    (["--top-k", "4"], "--top-k"),
    (["--top-p", "0.9"], "--top-p"),
    (["--min-p", "0.1"], "--min-p"),
    (["--temperature", "0.7"], "--temperature"),
    (["--repetition-penalty", "1.2"], "--repetition-penalty"),
    (["--presence-penalty", "0.3"], "--presence-penalty"),
    (["--frequency-penalty", "0.3"], "--frequency-penalty"),
    (["--length-penalty", "nan"], "--length-penalty"),
    (["--amateur", "x"], "--amateur"),
    (["--draft", "x"], "--draft"),
    (["--compile"], "--compile"),
    (["--num-samples", "3"], "--num-samples"),
])
def test_cli_beam_search_refuses_options_it_would_ignore(argv, flag, tmp_path):
    # the run does not exist: the combination is refused before anything is loaded
    rc, out, err = cli("generate", tmp_path / "missing", "--beams", "2", *argv)
    assert rc == 2 and out == "" and err.startswith(f"arlm: error: {flag} "), err
    assert "beam" in err or flag == "--length-penalty"  # nan is refused whatever else is given


def test_cli_stochastic_beams_take_a_temperature(run):
    args = ("generate", run, "--prompt", "The", "--max-new-tokens", "8", "--beams", "2", "--seed", "3")
    rc, a, err = cli(*args, "--stochastic", "--temperature", "0.7")
    assert rc == 0, err
    rc, b, _ = cli(*args, "--stochastic", "--temperature", "0.7")
    assert a == b and a.startswith("The")
    rc, _, err = cli("generate", run, "--stochastic")
    assert rc == 2 and "--beams" in err


def test_cli_prompt_that_is_not_utf8_names_the_prompt(tmp_path):
    rc, out, err = cli("generate", tmp_path / "missing", "--prompt", "ab\udcffc")  # how Python passes byte 0xff
    assert rc == 2 and out == "" and "--prompt is not valid UTF-8" in err and "0xff" in err, err


def test_cli_checks_everything_before_printing(run):
    # the speculative context check runs inside decoding; nothing may be printed before it fails
    rc, out, err = cli("generate", run, "--prompt", "The", "--max-new-tokens", "30", "--draft", run)
    assert rc == 2 and out == "" and "context" in err, err
    rc, out, err = cli("generate", run, "--prompt", "The", "--amateur", run, "--contrastive-alpha", "0")
    assert rc == 2 and out == "" and "--contrastive-alpha" in err, err

"""Hugging Face transformers export and import: logits equal in both directions (fp32, tiny random
models built from configs, nothing downloaded), refusals that name the option, tokenizers that
AutoTokenizer loads and that encode as arlm's, and the CLI verbs."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from test_cli import cli

from arlm import AutoregressiveWrapper
from arlm.config import ModelConfig
from arlm.export.hf import export_hf
from arlm.export.hf_config import HFConfigError, to_hf
from arlm.export.hf_import import import_hf
from arlm.model import Transformer
from arlm.tokenizers import BPETokenizer, ByteTokenizer

TOL = 1e-4  # the bar (fp32, max abs diff); measured differences are ~1e-6
SEQ = 24
BASE = dict(dim=32, depth=2, heads=4, max_seq_len=SEQ)
LLAMA = dict(BASE, pos_emb="rotary", rotary_dim=8, norm="rmsnorm", ff_glu=True, ff_activation="swish")

# arlm config -> the transformers class export must choose
EXPORTS = {
    "gpt2_default": (dict(BASE), "GPT2LMHeadModel"),
    "gpt2_biases_tied_padded": (dict(BASE, attn_bias=True, norm_bias=True, norm_eps=1e-3, tie_embedding=True,
                                     tie_embedding_scale=1.0, vocab_pad_multiple=48, ff_activation="gelu_tanh",
                                     ff_mult=3.0), "GPT2LMHeadModel"),
    "neox_tiny_preset": (dict(BASE, heads=2, pos_emb="rotary"), "GPTNeoXForCausalLM"),  # partial rotary, LayerNorm
    "neox_bias_relu": (dict(BASE, pos_emb="rotary", rotary_dim=4, attn_bias=True, ff_activation="relu",
                            rotary_base=500.0), "GPTNeoXForCausalLM"),
    "llama_gqa": (dict(LLAMA, kv_heads=2), "LlamaForCausalLM"),
    "llama_mqa_biases_scaled_tied": (dict(LLAMA, kv_heads=1, attn_bias=True, ff_bias=False, tie_embedding=True,
                                          norm_eps=1e-6, rotary_base_rescale_factor=2.0,
                                          rotary_interpolation_factor=2.0), "LlamaForCausalLM"),
    "llama_no_biases_gelu": (dict(LLAMA, ff_bias=False, ff_glu_bias=False, ff_activation="gelu", dim_head=16,
                                  rotary_dim=16),
                             "LlamaForCausalLM"),
    "mistral_window": (dict(LLAMA, kv_heads=2, ff_bias=False, ff_glu_bias=False, max_attend_past=5),
                       "MistralForCausalLM"),
}


def perturbed(model: torch.nn.Module, seed: int = 1, scale: float = 0.2) -> torch.nn.Module:
    """Every parameter moved off its init (biases off zero, gains off one), so each mapping acts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def ids(vocab: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, vocab, (2, SEQ), generator=torch.Generator().manual_seed(seed))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", EXPORTS)
def test_export_gives_transformers_the_same_logits(name, tmp_path):
    kwargs, arch = EXPORTS[name]
    torch.manual_seed(0)
    model = perturbed(Transformer(ModelConfig(**kwargs)))
    export_hf(model, ByteTokenizer(), tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == arch
    x = ids(256)
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    assert ours.abs().max() > 1000 * TOL  # logits far larger than the tolerance
    assert max_diff(ours, theirs) < TOL
    # greedy decoding with each library's own KV cache picks the same tokens
    prompt = x[:, :8]
    with torch.no_grad():
        hf_tokens = hf.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)[:, 8:]
    assert torch.equal(AutoregressiveWrapper(model).generate(prompt, 8, temperature=0.0, cache_kv=True), hf_tokens)
    # the round trip back into arlm computes the same function too
    back, tokenizer = import_hf(tmp_path)
    assert tokenizer.kind == "byte"
    with torch.no_grad():
        assert max_diff(back(x), ours) < TOL


def _hf_models():
    """transformers configs (tiny, random) that import must read exactly."""
    T = transformers
    small = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=SEQ)
    return {
        "gpt2_tied": T.GPT2Config(vocab_size=50, n_positions=SEQ, n_embd=32, n_layer=2, n_head=2),
        "gpt2_untied_gelu_eps": T.GPT2Config(vocab_size=50, n_positions=SEQ, n_embd=32, n_layer=2, n_head=4, n_inner=40,
                                             activation_function="gelu", layer_norm_epsilon=1e-3,
                                             tie_word_embeddings=False),
        "llama_gqa": T.LlamaConfig(intermediate_size=44, num_key_value_heads=2,
                                   rope_parameters={"rope_type": "default", "rope_theta": 1000.0}, **small),
        "llama_mqa_biases_head_dim": T.LlamaConfig(intermediate_size=44, num_key_value_heads=1, head_dim=16,
                                                   attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
                                                   hidden_act="gelu_pytorch_tanh", **small),
        "llama_linear_rope": T.LlamaConfig(intermediate_size=44, num_key_value_heads=4, rms_norm_eps=0.1,
                                           rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0},
                                           **small),
        "mistral_window": T.MistralConfig(intermediate_size=44, num_key_value_heads=2, sliding_window=5, **small),
        "qwen2": T.Qwen2Config(intermediate_size=44, num_key_value_heads=2, **small),
        "neox_partial": T.GPTNeoXConfig(intermediate_size=40, use_parallel_residual=False,
                                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                         "partial_rotary_factor": 0.25}, **small),
    }


@pytest.mark.parametrize("name", list(_hf_models()))
def test_import_gives_arlm_the_same_logits(name, tmp_path):
    torch.manual_seed(0)
    hf = perturbed(transformers.AutoModelForCausalLM.from_config(_hf_models()[name]))
    hf.save_pretrained(tmp_path)
    model, _ = import_hf(tmp_path)
    x = ids(50)
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    assert theirs.abs().max() > 1000 * TOL
    assert max_diff(ours, theirs) < TOL
    # cached decoding of the imported model equals its full forward (the arlm contract)
    cache = model.new_cache(2)
    with torch.no_grad():
        steps = torch.cat([model(x[:, t:t + 1], input_pos=t, cache=cache) for t in range(SEQ)], dim=1)
    assert max_diff(steps, ours) < 1e-4


def test_import_shortens_the_context_and_refuses_what_arlm_does_not_compute(tmp_path):
    cfg = _hf_models()["gpt2_tied"]
    hf = perturbed(transformers.AutoModelForCausalLM.from_config(cfg))
    hf.save_pretrained(tmp_path / "gpt2")
    model, _ = import_hf(tmp_path / "gpt2", max_seq_len=8)
    assert model.cfg.max_seq_len == 8
    with torch.no_grad():
        assert max_diff(model(ids(50)[:, :8]), hf(ids(50)[:, :8]).logits) < TOL
    with pytest.raises(HFConfigError, match=r"--max-seq-len 99 must be in \[1, 24\]"):
        import_hf(tmp_path / "gpt2", max_seq_len=99)
    parallel = transformers.GPTNeoXConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                          intermediate_size=40, use_parallel_residual=True)
    transformers.AutoModelForCausalLM.from_config(parallel).save_pretrained(tmp_path / "pythia")
    with pytest.raises(HFConfigError, match="use_parallel_residual=True"):
        import_hf(tmp_path / "pythia")
    llama3 = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=40, num_hidden_layers=1,
                                      num_attention_heads=2, rope_parameters={
                                          "rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0,
                                          "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    transformers.AutoModelForCausalLM.from_config(llama3).save_pretrained(tmp_path / "llama3")
    with pytest.raises(HFConfigError, match="rope_type='llama3'"):
        import_hf(tmp_path / "llama3")


# options no transformers architecture here expresses, each on an exportable Llama config
REFUSED = {"qk_norm": True, "sandwich_norm": True, "attn_head_scale": True, "shift_tokens": 1, "num_memory_tokens": 2,
           "macaron": True, "softclamp_output": True, "pos_bias": "alibi", "l2norm_embed": True, "attn_num_mem_kv": 1}


@pytest.mark.parametrize("field", REFUSED)
def test_export_refuses_a_model_naming_the_option(field):
    cfg = ModelConfig(**dict(LLAMA, **{field: REFUSED[field]}))
    with pytest.raises(HFConfigError) as e:
        to_hf(cfg)
    assert f"model.{field}=" in str(e.value) and "LlamaForCausalLM" in str(e.value)


def test_export_names_every_option_in_the_way_of_the_closest_architecture():
    # partial rotary + RMSNorm + GLU: Llama needs a whole-head rotary; NeoX a LayerNorm and a plain MLP
    with pytest.raises(HFConfigError) as e:
        to_hf(ModelConfig(**dict(LLAMA, rotary_dim=4, qk_norm=True)))
    message = str(e.value)
    assert "model.rotary_dim=4 (needs 8)" in message and "model.qk_norm=True" in message
    # training-only options export (dropouts, init)
    trained = dict(LLAMA, attn_dropout=0.1, ff_dropout=0.2, init_std=0.01, zero_init_branch_output=True)
    arch, _ = to_hf(ModelConfig(**trained))
    assert arch == "llama"
    # a sliding window needs Mistral, unless it reaches back over the whole context
    bias_free = dict(LLAMA, ff_bias=False, ff_glu_bias=False)
    assert to_hf(ModelConfig(**dict(bias_free, max_attend_past=SEQ - 2)))[0] == "mistral"
    assert to_hf(ModelConfig(**dict(bias_free, max_attend_past=SEQ - 1)))[0] == "llama"


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_auto_tokenizer_loads_the_export_and_encodes_as_arlm(tokenizer, tmp_path, tiny_corpus_text):
    tok = ByteTokenizer() if tokenizer == "byte" else BPETokenizer.train(tiny_corpus_text, 300)
    model = Transformer(ModelConfig(**dict(BASE, vocab_size=tok.vocab_size)))
    export_hf(model, tok, tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in ("The model reads a token.", "  spaces,\ttabs\nand ünïcödé ✓", tiny_corpus_text[:500]):
        ids_ = hf_tok.encode(text, add_special_tokens=False)
        assert ids_ == tok.encode(text)
        assert hf_tok.decode(ids_) == text
    # and import reads the folder's tokenizer.json back as the same arlm tokenizer
    _, back = import_hf(tmp_path)
    assert back.kind == tok.kind and back.encode(tiny_corpus_text[:500]) == tok.encode(tiny_corpus_text[:500])


def test_cli_export_of_a_trained_run_and_its_errors(tmp_path, tiny_corpus):
    from arlm.run import load_run

    run = tmp_path / "run"
    rc, _, err = cli("train", "--preset", "tiny", "--data", tiny_corpus, "--out", run, "--max-steps", "2",
                     "--no-progress")
    assert rc == 0, err
    rc, text, err = cli("export", run, "--to", "hf", "--out", tmp_path / "hf")
    assert rc == 0, err
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    loaded = load_run(run)
    x = ids(256)
    with torch.no_grad():
        assert max_diff(loaded.model(x), hf(x).logits) < TOL
    # into a folder that holds something: refused, nothing touched
    rc, _, err = cli("export", run, "--to", "hf", "--out", tmp_path / "hf")
    assert rc == 2 and "not an empty folder" in err
    # a model no architecture expresses: refused naming the option, nothing written
    rc, _, err = cli("train", "--preset", "tiny", "--data", tiny_corpus, "--out", tmp_path / "qk", "--max-steps", "1",
                     "--no-progress", "--model.qk_norm", "true")
    assert rc == 0, err
    rc, _, err = cli("export", tmp_path / "qk", "--to", "hf", "--out", tmp_path / "hf-qk")
    assert rc == 2 and "model.qk_norm=True" in err and "Traceback" not in err
    assert not (tmp_path / "hf-qk").exists()


def test_cli_convert_from_hf_gives_a_run_that_generates_evaluates_and_fine_tunes(tmp_path, tiny_corpus):
    from arlm.run import load_run

    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=44, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    hf = perturbed(transformers.AutoModelForCausalLM.from_config(cfg))
    hf.save_pretrained(tmp_path / "llama")
    out = tmp_path / "run"
    rc, text, err = cli("convert", tmp_path / "llama", "--from", "hf", "--out", out, "--data", tiny_corpus,
                        "--max-seq-len", "32")
    assert rc == 0, err
    run = load_run(out)
    assert run.tokenizer.kind == "byte" and run.cfg.model.max_seq_len == 32
    x = ids(256)
    with torch.no_grad():
        assert max_diff(run.model(x), hf(x).logits) < TOL
    rc, text, err = cli("generate", out, "--prompt", "ab", "--max-new-tokens", "8", "--temperature", "0")
    assert rc == 0 and text.startswith("ab"), err
    rc, text, err = cli("eval", out, "--max-batches", "2", "--json")
    assert rc == 0, err
    assert json.loads(text)["loss"] > 0
    rc, _, err = cli("train", "--out", out, "--resume", "auto", "--max-steps", "3", "--no-progress")
    assert rc == 0, err
    tuned = load_run(out)
    assert tuned.step == 3
    with torch.no_grad():
        assert max_diff(tuned.model(x), run.model(x)) > 0  # fine-tuning moved the weights


def test_cli_convert_from_hf_refuses_pickles_and_unknown_models(tmp_path):
    folder = tmp_path / "bin-only"
    hf = transformers.AutoModelForCausalLM.from_config(
        transformers.GPT2Config(vocab_size=256, n_positions=16, n_embd=32, n_layer=1, n_head=2))
    hf.save_pretrained(folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    rc, _, err = cli("convert", folder, "--from", "hf", "--out", tmp_path / "a")
    assert rc == 2 and "pickle" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists()
    bert = tmp_path / "bert"
    transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=40).save_pretrained(bert)
    rc, _, err = cli("convert", bert, "--from", "hf", "--out", tmp_path / "b")
    assert rc == 2 and "model_type 'bert' is not supported" in err
    hf.save_pretrained(tmp_path / "gpt2")
    rc, _, err = cli("convert", tmp_path / "gpt2", "--from", "hf", "--config", "x.yaml", "--out", tmp_path / "c")
    assert rc == 2 and "--config is for --from x-transformers" in err


def test_attn_bias_reaches_the_per_view_projections():
    # hyper-connections feed queries, keys and values from three views: with three equal views the
    # per-view projections must equal the fused one, biases included
    cfg = ModelConfig(**dict(BASE, num_residual_streams=2, qkv_receive_diff_residuals=True, attn_bias=True))
    attn = perturbed(Transformer(cfg)).blocks[0].attn
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(3))
    qk, v = attn._project_views(torch.stack((x, x, x)))
    fused = attn.qkv(x)
    torch.testing.assert_close(torch.cat((qk.flatten(-2), v), dim=-1), fused)


def test_cli_convert_keeps_embedding_rows_past_the_tokenizer_as_padding(tmp_path):
    from arlm.run import load_run

    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=44, num_hidden_layers=1,
                                   num_attention_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    hf = perturbed(transformers.AutoModelForCausalLM.from_config(cfg))
    hf.save_pretrained(tmp_path / "llama")
    ByteTokenizer().save(tmp_path / "bytes.json")
    rc, _, err = cli("convert", tmp_path / "llama", "--from", "hf", "--out", tmp_path / "run",
                     "--tokenizer", tmp_path / "bytes.json")
    assert rc == 0, err
    run = load_run(tmp_path / "run")
    assert (run.cfg.model.vocab_size, run.cfg.model.padded_vocab) == (256, 300)
    x = ids(256)
    with torch.no_grad():
        assert max_diff(run.model(x), hf(x).logits[..., :256]) < TOL
    rc, text, err = cli("generate", tmp_path / "run", "--prompt", "ab", "--max-new-tokens", "4", "--temperature", "0")
    assert rc == 0 and text.startswith("ab"), err
    # more ids in the tokenizer than in the model is refused
    small = transformers.LlamaConfig(vocab_size=200, hidden_size=32, intermediate_size=44, num_hidden_layers=1,
                                     num_attention_heads=2, max_position_embeddings=32)
    transformers.AutoModelForCausalLM.from_config(small).save_pretrained(tmp_path / "small")
    rc, _, err = cli("convert", tmp_path / "small", "--from", "hf", "--out", tmp_path / "run2",
                     "--tokenizer", tmp_path / "bytes.json")
    assert rc == 2 and "the tokenizer has 256 ids but the model has 200" in err


def test_without_the_hf_extra_both_verbs_say_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # import transformers now fails
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text("{}")
    rc, _, err = cli("convert", tmp_path / "src", "--from", "hf", "--out", tmp_path / "run")
    assert rc == 2 and "pip install 'arlm[hf]'" in err and "Traceback" not in err
    with pytest.raises(ImportError, match=r"pip install 'arlm\[hf\]'"):
        to_hf(ModelConfig(**BASE))

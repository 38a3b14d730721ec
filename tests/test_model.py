"""The model's contract: causal, cached decoding equals recomputation, ragged rows equal solo rows,
it learns, it round-trips through safetensors, and its constructors are strict."""

from __future__ import annotations

import pytest
import torch
from conftest import LIVE_INIT, live_init, reinit
from safetensors.torch import load_model, save_model

from arlm import AutoregressiveWrapper, Decoder, ModelConfig, Transformer, TransformerWrapper, top_k
from arlm.model import KVCache

V = 48



# A few architectures that take different paths through attention: fused causal SDPA, SDPA with a
# mask, explicit scores, and the residual/layout variants.
CONFIGS = {
    "absolute": dict(),
    "rotary-gqa": dict(pos_emb="rotary", heads=4, kv_heads=2, dim_head=8),
    "alibi-window-memkv": dict(pos_bias="alibi", max_attend_past=4, attn_num_mem_kv=2),
    "explicit-scores": dict(pos_emb="rotary", attn_pre_talking_heads=True, attn_softclamp_logits=True,
                            residual_attn=True),
    "shift-postnorm-glu": dict(shift_tokens=1, pre_norm=False, ff_glu=True, ff_activation="swish"),
    "memory-tokens-t5": dict(num_memory_tokens=2, pos_bias="t5", pos_emb="none"),
}


def make(name: str, seed: int = 0, **over) -> Transformer:
    fields = dict(vocab_size=V, max_seq_len=24, dim=32, depth=2, heads=2, init=LIVE_INIT)
    cfg = ModelConfig(**{**fields, **CONFIGS[name], **over})
    model = Transformer(cfg)
    model.init_weights(torch.Generator().manual_seed(seed))
    return model.eval()


def ids(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", CONFIGS)
def test_causal_exactly(name):
    model = make(name)
    x = ids(2, 20)
    with torch.no_grad():
        base = model(x)
        for t in (0, 7, 19):
            y = x.clone()
            y[:, t] = (y[:, t] + 1) % V
            out = model(y)
            assert torch.equal(out[:, :t], base[:, :t]), f"changing token {t} changed earlier logits"
            assert not torch.equal(out[:, t], base[:, t]), "the changed token's own logits should move"


@pytest.mark.parametrize("name", CONFIGS)
def test_cached_decoding_equals_full_recompute(name):
    model = make(name)
    x = ids(3, 20)
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(3, 24)
        steps = [model(x[:, :7], input_pos=torch.arange(7), cache=cache)]
        for t in range(7, 20):
            steps.append(model(x[:, t:t + 1], input_pos=torch.tensor([t]), cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["absolute", "alibi-window-memkv", "explicit-scores", "memory-tokens-t5"])
def test_greedy_generation_same_with_and_without_cache(name):
    net = make(name)
    wrapper = AutoregressiveWrapper(net)
    prompt = ids(2, 5)
    a = wrapper.generate(prompt, 12, temperature=0.0, cache_kv=True)
    b = wrapper.generate(prompt, 12, temperature=0.0, cache_kv=False)
    assert a.shape == (2, 12)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", CONFIGS)
def test_ragged_rows_equal_solo_rows(name):
    model = make(name)
    lens = [9, 4, 13]
    T = max(lens)
    rows = [ids(1, n, seed=10 + i)[0] for i, n in enumerate(lens)]
    batch = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, T - len(r):] = r
    start = torch.tensor([T - n for n in lens])
    with torch.no_grad():
        together = model(batch, start=start)
        # cached prefill of the ragged batch, then two decode steps, must agree too
        cache = model.new_cache(len(rows), 24)
        cached = model(batch, input_pos=torch.arange(T), cache=cache, start=start)
        for i, r in enumerate(rows):
            solo = model(r[None])
            torch.testing.assert_close(together[i, T - len(r):], solo[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(cached[i, T - len(r):], solo[0], atol=1e-5, rtol=0)
        nxt = ids(len(rows), 1, seed=99)
        step = model(nxt, input_pos=torch.tensor([T]), cache=cache, start=start)
        for i, r in enumerate(rows):
            solo = model(torch.cat((r, nxt[i]))[None])[:, -1]
            torch.testing.assert_close(step[i, -1], solo[0], atol=1e-5, rtol=0)


def test_left_padding_mask_in_wrapper_matches_solo():
    net = live_init(TransformerWrapper(num_tokens=V, max_seq_len=24,
                                       attn_layers=Decoder(dim=32, depth=2, heads=2, rotary_pos_emb=True))).eval()
    short, long_ = ids(1, 5, seed=3)[0], ids(1, 9, seed=4)[0]
    x = torch.stack((torch.cat((torch.zeros(4, dtype=torch.long), short)), long_))
    mask = torch.stack((torch.arange(9) >= 4, torch.ones(9, dtype=torch.bool)))
    with torch.no_grad():
        out = net(x, mask=mask)
        torch.testing.assert_close(out[0, 4:], net(short[None])[0], atol=1e-5, rtol=0)
    # right padding (x-transformers' meaning: False hides keys) is exact too: real rows never see later keys
    right = torch.stack((torch.cat((short, torch.zeros(4, dtype=torch.long))), long_))
    with torch.no_grad():
        out = net(right, mask=torch.stack((torch.arange(9) < 5, torch.ones(9, dtype=torch.bool))))
        torch.testing.assert_close(out[0, :5], net(short[None])[0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="mask must be"):
        net(x, mask=mask[:, 1:])


def test_overfits_one_batch_then_greedy_decoding_reproduces_it():
    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=V, max_seq_len=32, attn_layers=Decoder(dim=64, depth=2, heads=4, rotary_pos_emb=True))
    model = AutoregressiveWrapper(net)
    seq = ids(2, 17, seed=5)
    seq[1, 0] = (seq[0, 0] + 1) % V  # distinct first tokens, so each row is determined by its start
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(40):
        loss = model(seq)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.1 * first, (first, loss.item())
    out = model.generate(seq[:, :1], 16, temperature=0.0)
    assert torch.equal(out, seq[:, 1:])


def test_safetensors_round_trip_gives_identical_logits(tmp_path):
    model = make("explicit-scores", seed=3)
    x = ids(2, 12)
    path = tmp_path / "model.safetensors"
    save_model(model, str(path))
    other = make("explicit-scores", seed=4)
    assert not torch.equal(other(x), model(x))
    load_model(other, str(path))
    with torch.no_grad():
        assert torch.equal(other(x), model(x))


@pytest.mark.parametrize("over", [dict(), dict(rotary_xpos=True)])
def test_dtype_casts_keep_the_rotary_tables(over):
    # model.to(dtype) used to cast the complex rotation table to real, dropping the rotation
    model = make("rotary-gqa", **over)
    x = ids(2, 12)
    with torch.no_grad():
        ref = model(x)
        model.to(torch.float64)
        assert model.rotary.cis.dtype == torch.complex64
        assert torch.allclose(model(x).float(), ref, atol=1e-5)
        model.to("cpu", torch.float32)
        assert torch.allclose(model(x), ref, atol=1e-6)


def test_decoding_lays_wide_weights_out_column_major_only_while_it_runs():
    # the column-major layout is a CPU decode-speed choice (generation/cpu_layout.py): the model
    # keeps ordinary contiguous parameters for training, optimizers and FSDP2; decoding swaps the
    # storage of wide Linears (values unchanged) and puts the original storage back afterwards
    from arlm import AutoregressiveWrapper

    model = make("rotary-gqa", seed=3).eval()
    assert all(p.is_contiguous() for p in model.parameters())
    wide = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features > m.in_features]
    before = [w.detach().clone() for w in wide]
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a: seen.append([w.t().is_contiguous() for w in wide]))
    out = AutoregressiveWrapper(model).generate(ids(1, 4), 6, temperature=0.0)
    hook.remove()
    assert seen and all(all(s) for s in seen), "fp32 CPU decoding should read wide weights column-major"
    assert all(w.is_contiguous() for w in wide) and all(torch.equal(w, b) for w, b in zip(wide, before))
    # the same tokens as decoding without the layout (the plain model, step by step)
    x = ids(1, 4)
    with torch.no_grad():
        for _ in range(6):
            x = torch.cat((x, model(x)[:, -1:].argmax(-1)), dim=1)
    assert torch.equal(out, x[:, 4:])


def test_meta_device_build_loads_with_assign():
    # weight initialisation is not part of __init__ on the meta device: a loader builds the
    # model without allocating, then assigns the saved tensors and recomputes derived tables
    ref = make("rotary-gqa", seed=3).eval()
    with torch.device("meta"):
        model = Transformer(ref.cfg)
    assert all(p.is_meta for p in model.parameters())
    model.load_state_dict(ref.state_dict(), assign=True)
    x = ids(2, 12)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), ref(x))


def test_hooks_on_submodules_fire_in_training_and_cached_decoding():
    # hot-path submodule calls skip nn.Module.__call__ only when nothing is hooked (model/calls.py)
    model = make("rotary-gqa")
    x = ids(1, 5)
    seen = []
    model.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.append("qkv"))
    model.blocks[1].register_forward_pre_hook(lambda m, i: seen.append("block"))
    zero = model.norm.register_forward_hook(lambda m, i, o: torch.zeros_like(o))  # replaces the output
    with torch.no_grad():
        assert torch.equal(model(x), torch.zeros(1, 5, V))
        seen.clear()
        cache = model.new_cache(1, 8)
        assert torch.equal(model(x[:, :1], input_pos=0, cache=cache), torch.zeros(1, 1, V))
        assert seen == ["qkv", "block"]
        zero.remove()
        counted = []
        handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: counted.append(type(m)))
        try:
            model(x)
        finally:
            handle.remove()
        assert torch.nn.Linear in counted and torch.nn.LayerNorm in counted
        assert not torch.equal(model(x), torch.zeros(1, 5, V))


def test_init_weights_do_not_depend_on_the_storage_layout():
    # the same seed must give the same weights whether wide Linears are contiguous (the model's
    # own layout) or column-major (while decoding on a CPU): the draw follows logical order
    from arlm.generation.cpu_layout import cpu_decode_layout

    a = make("rotary-gqa", seed=5)
    b = Transformer(a.cfg)
    with cpu_decode_layout(b):
        assert any(not p.is_contiguous() for p in b.parameters())
        b.init_weights(torch.Generator().manual_seed(5))
        for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
            assert torch.equal(pa, pb), name


def test_init_weights_is_reproducible_from_a_generator():
    a, b = make("alibi-window-memkv", seed=7), make("alibi-window-memkv", seed=7)
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), na
    c = make("alibi-window-memkv", seed=8)
    assert not torch.equal(a.blocks[0].attn.qkv.weight, c.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize("scheme", ["scaled_zero", "scaled", "gpt2", "torch"])
def test_init_schemes_set_the_stds_they_name(scheme):
    """gpt2: N(0, init_std) everywhere, residual outputs / sqrt(2 depth); scaled: 1/sqrt(fan_in),
    residual outputs / sqrt(2 depth), embedding sqrt(2 / dim), so its stds follow the width;
    scaled_zero: scaled's draws with the residual outputs at zero; torch: U(+-1/sqrt(fan_in))
    weights and biases (nn.Linear's default), residual outputs unscaled."""
    import math

    for dim in (64, 256):
        depth = 2
        net = Transformer(ModelConfig(vocab_size=512, max_seq_len=16, dim=dim, depth=depth, heads=4, init=scheme))
        net.init_weights(torch.Generator().manual_seed(0))
        for b in net.blocks:
            got = {"qkv": b.attn.qkv.weight, "attn.out": b.attn.out.weight, "ff.proj_in": b.ff.proj_in.weight,
                   "ff.proj_out": b.ff.proj_out.weight, "head": net.head.weight, "token_emb": net.token_emb.weight}
            fan_in = {k: (w.shape[1] if k != "token_emb" else None) for k, w in got.items()}
            for name, w in got.items():
                w = w.detach()
                if scheme == "gpt2":
                    want = 0.02
                elif scheme == "torch":
                    want = math.sqrt(2 / dim) if name == "token_emb" else (3 * fan_in[name]) ** -0.5
                    if name != "token_emb":  # uniform: nothing beyond the bound, and the bound is reached
                        assert float(w.abs().max()) == pytest.approx(fan_in[name] ** -0.5, rel=0.01)
                else:
                    want = math.sqrt(2 / dim) if name == "token_emb" else fan_in[name] ** -0.5
                if name in ("attn.out", "ff.proj_out") and scheme != "torch":
                    if scheme == "scaled_zero":
                        assert torch.all(w == 0), (dim, name)
                        continue
                    want /= math.sqrt(2 * depth)
                assert float(w.std()) == pytest.approx(want, rel=0.06), (scheme, dim, name)
                assert abs(float(w.mean())) < 0.1 * want
            assert torch.all(b.attn_norm.weight == 1)
            for layer in (b.ff.proj_in, b.ff.proj_out):
                bias, fan = layer.bias.detach(), layer.in_features
                if scheme == "torch":  # nn.Linear's bias: U(+-1/sqrt(fan_in)) too
                    assert float(bias.std()) == pytest.approx((3 * fan) ** -0.5, rel=0.15)
                    assert float(bias.abs().max()) <= fan**-0.5
                else:
                    assert torch.all(bias == 0)


def test_scaled_zero_is_scaled_with_the_residual_outputs_zeroed():
    """The same draws as ``scaled`` (so a seed gives the same model but for the zeroed
    projections), every block the identity: the logits at a position depend on its token only."""
    nets = {}
    for scheme in ("scaled_zero", "scaled"):
        nets[scheme] = Transformer(ModelConfig(vocab_size=V, max_seq_len=16, dim=32, depth=3, heads=2, init=scheme)).eval()
        nets[scheme].init_weights(torch.Generator().manual_seed(3))
    zero, scaled = (dict(nets[k].named_parameters()) for k in ("scaled_zero", "scaled"))
    residual_outputs = [k for k in zero if k.endswith(("attn.out.weight", "ff.proj_out.weight"))]
    assert len(residual_outputs) == 6
    for k in zero:
        if k in residual_outputs:
            assert torch.all(zero[k] == 0) and not torch.all(scaled[k] == 0), k
        else:
            assert torch.equal(zero[k], scaled[k]), k
    x = ids(2, 10)
    y = ids(2, 10, seed=2)
    y[:, -1] = x[:, -1]  # another context, the same last token
    with torch.no_grad():
        for scheme, net in nets.items():
            same = torch.allclose(net(x)[:, -1], net(y)[:, -1], atol=1e-6)
            # zeroed branches: the stack is the identity, the context does not reach the last position
            assert same == (scheme == "scaled_zero"), scheme


def test_zero_residual_outputs_learn():
    """Zeroed residual outputs are not stuck: after one AdamW step they and (after a second) the
    branches' inner weights have moved, and the loss falls."""
    net = Transformer(ModelConfig(vocab_size=V, max_seq_len=16, dim=32, depth=2, heads=2))
    net.init_weights(torch.Generator().manual_seed(0))
    inner = net.blocks[0].attn.qkv.weight.detach().clone()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    x = ids(4, 16)
    losses = []
    for _ in range(3):
        loss = net(x[:, :-1], targets=x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert float(net.blocks[0].attn.out.weight.abs().max()) > 0
    assert not torch.equal(net.blocks[0].attn.qkv.weight, inner)
    assert losses[-1] < losses[0]


def test_torch_zero_query_is_torch_with_the_queries_zeroed():
    """The same draws as ``torch`` but for the query rows of each fused projection (and a latent
    attention's query up-projection), which are zero: every head starts attending uniformly, so
    with one block and rotary positions the last position cannot tell the order of the tokens
    before it. Normalised queries (qk-norm) keep their draw."""
    def make(init, **kw):
        kw = dict(dict(depth=2, attn_bias=True), **kw)
        cfg = ModelConfig(vocab_size=V, max_seq_len=16, dim=32, heads=2, init=init, **kw)
        return reinit(Transformer(cfg), init, seed=3).eval()

    zq, tr = make("torch_zero_query"), make("torch")
    n = 2 * zq.cfg.head_dim  # the query rows: heads x head_dim
    for (k, a), b in zip(zq.named_parameters(), tr.parameters()):
        if k.endswith("attn.qkv.weight") or k.endswith("attn.qkv.bias"):
            assert torch.all(a[:n] == 0) and torch.all(b[:n] != 0), k
            assert torch.equal(a[n:], b[n:]), k
        else:
            assert torch.equal(a, b), k
    latent = make("torch_zero_query", attn_use_latent_q=True, attn_dim_latent_q=16, attn_bias=False)
    assert torch.all(latent.blocks[0].attn.latent.q.weight == 0)
    assert torch.all(latent.blocks[0].attn.latent.latent_q.weight != 0)
    for kw in (dict(qk_norm=True), dict(qk_rmsnorm=True)):
        assert torch.equal(make("torch_zero_query", **kw).blocks[0].attn.qkv.weight,
                           make("torch", **kw).blocks[0].attn.qkv.weight), kw
    x = ids(2, 10)
    y = x.clone()
    y[:, :-1] = x[:, :-1].flip(1)  # the same tokens before the last, in the other order
    with torch.no_grad():
        for init in ("torch_zero_query", "torch"):
            net = make(init, depth=1, pos_emb="rotary")  # positions only in the scores
            same = torch.allclose(net(x)[:, -1], net(y)[:, -1], atol=1e-5)
            assert same == (init == "torch_zero_query"), init


def test_init_is_auto_by_default_scaled_zero_when_narrow_torch_zero_query_when_wide_and_gpt2_by_name():
    from arlm.model.init import AUTO_TORCH_WIDTH, scheme

    assert ModelConfig().init == "auto"
    for dim, want in ((32, "scaled_zero"), (AUTO_TORCH_WIDTH - 32, "scaled_zero"), (AUTO_TORCH_WIDTH, "torch_zero_query")):
        # the x-transformers facade gets the default too
        net = TransformerWrapper(num_tokens=V, max_seq_len=8, attn_layers=Decoder(dim=dim, depth=1, heads=2))
        assert net.cfg.init == "auto" and scheme(net.cfg) == want, dim
        out, proj_in = net.blocks[0].ff.proj_out, net.blocks[0].ff.proj_in
        if want == "scaled_zero":  # zeroed branches, Gaussian draws, zero biases
            assert torch.all(net.blocks[0].attn.out.weight == 0) and torch.all(out.weight == 0)
            assert torch.all(proj_in.bias == 0) and float(proj_in.weight.abs().max()) > dim**-0.5
        else:  # nn.Linear's default: live branches, uniform weights and biases within 1/sqrt(fan_in); zero queries
            qkv, n = net.blocks[0].attn.qkv.weight, 2 * net.cfg.head_dim
            assert torch.all(qkv[:n] == 0) and 0 < float(qkv[n:].abs().max()) <= dim**-0.5
            assert float(out.weight.abs().min()) < float(out.weight.abs().max()) <= out.in_features**-0.5
            assert 0 < float(proj_in.bias.abs().max()) <= dim**-0.5
            assert float(proj_in.weight.abs().max()) <= dim**-0.5
    torch.manual_seed(0)
    a = Transformer(ModelConfig(vocab_size=V, max_seq_len=8, dim=32, depth=1, heads=2, init="gpt2"))
    torch.manual_seed(0)
    b = Transformer(ModelConfig(vocab_size=V, max_seq_len=8, dim=32, depth=1, heads=2))
    assert float(a.token_emb.weight.detach().std()) < 0.03 < float(b.token_emb.weight.detach().std())


def test_init_config_round_trip_errors_and_old_configs():
    from arlm.config import ConfigError, RunConfig
    from arlm.training.resume import merge_resume_config

    cfg = RunConfig.from_dict({"model": dict(init="gpt2", init_std=0.01)})
    assert RunConfig.from_yaml(cfg.to_yaml()).model.init == "gpt2"
    with pytest.raises(ConfigError, match=r"model.init='xavier' is not one of: auto, scaled_zero, scaled, gpt2, torch, torch_zero_query"):
        RunConfig.from_dict({"model": dict(init="xavier")}).validate()
    with pytest.raises(ConfigError, match="model.init_std=0.01 is the std of model.init=gpt2"):
        RunConfig.from_dict({"model": dict(init="scaled", init_std=0.01)}).validate()
    # a config.yaml saved before model.init existed lists init_std but no init: its run used gpt2
    old = RunConfig().to_dict()
    del old["model"]["init"]
    saved = RunConfig.from_dict(old)
    assert saved.model.init == "gpt2" and RunConfig.from_dict({"model": {}}).model.init == "auto"
    # resuming it with today's preset keeps the run's own init (its weights come from the checkpoint)
    merged = merge_resume_config(saved, RunConfig())
    assert merged.model.init == "gpt2"


def test_kv_cache_layout_and_reorder():
    model = make("rotary-gqa")
    cache = model.new_cache(3, 16)
    assert isinstance(cache, KVCache)
    assert len(cache.k) == len(cache.v) == 2  # one tensor per attention call
    assert all(t.shape == (3, 2, 16, 8) for t in cache.tensors())  # (B, K, S, D)
    assert cache.max_len == 16 and cache.batch_size == 3
    k0, v0 = cache.layer(0)
    assert k0.shape == (3, 2, 16, 8)
    x = ids(3, 6)
    with torch.no_grad():
        model(x, input_pos=torch.arange(6), cache=cache)
        full_rows = [t.clone() for t in cache.k]
        cache.reorder(torch.tensor([2, 0]))
    assert all(torch.equal(a, b[[2, 0]]) for a, b in zip(cache.k, full_rows))
    with pytest.raises(ValueError, match="max_seq_len"):
        model.new_cache(1, 25)
    with pytest.raises(ValueError, match="input_pos"):
        model(x, cache=model.new_cache(3))


def test_num_params_counts_embeddings_separately():
    model = make("absolute")
    cfg = model.cfg
    total = sum(p.numel() for p in model.parameters())
    assert model.num_params() == total
    assert model.num_params(exclude_embedding=True) == total - cfg.padded_vocab * cfg.dim - cfg.max_seq_len * cfg.dim


@pytest.mark.parametrize("ctor, bad, supported", [
    (lambda **kw: Decoder(dim=32, depth=2, **kw), "attn_flsh", "attn_flash"),
    (lambda **kw: TransformerWrapper(num_tokens=V, max_seq_len=16, attn_layers=Decoder(dim=32, depth=1), **kw),
     "emb_dimm", "tie_embedding"),
])
def test_unknown_keyword_arguments_are_refused_with_the_supported_list(ctor, bad, supported):
    with pytest.raises(TypeError) as err:
        ctor(**{bad: True})
    msg = str(err.value)
    assert repr(bad) in msg and "supports:" in msg and supported in msg


def test_refused_options_say_why():
    with pytest.raises(TypeError, match="causal"):
        Decoder(dim=32, depth=2, causal=False)
    with pytest.raises(TypeError, match="decoder-only"):
        Decoder(dim=32, depth=2, cross_attend=True)
    with pytest.raises(TypeError, match="later queries"):
        Decoder(dim=32, depth=2, attn_inverted_attention=True)
    with pytest.raises(TypeError, match="not causal"):
        TransformerWrapper(num_tokens=V, max_seq_len=16, attn_layers=Decoder(dim=32, depth=1), use_cls_token=True)


def test_autoregressive_wrapper_rejects_unknown_keywords():
    net = TransformerWrapper(num_tokens=V, max_seq_len=16, attn_layers=Decoder(dim=32, depth=1, heads=2))
    with pytest.raises(TypeError, match="ignore_indx"):
        AutoregressiveWrapper(net, ignore_indx=0)


def test_readme_api_at_small_size():
    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=256, max_seq_len=64,
                             attn_layers=Decoder(dim=32, depth=2, heads=2, rotary_pos_emb=True, attn_flash=True))
    model = AutoregressiveWrapper(net)
    seq = torch.randint(0, 256, (2, 33))
    loss = model(seq)
    loss.backward()
    assert loss.item() > 0 and net.blocks[0].attn.qkv.weight.grad is not None
    prompts = torch.randint(0, 256, (2, 4))
    out = model.generate(prompts, 8, temperature=1.0, filter_logits_fn=top_k, cache_kv=True,
                         generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 8) and int(out.min()) >= 0 and int(out.max()) < 256


@pytest.mark.parametrize("over", [dict(add_value_residual=True, residual_attn=True),
                                  dict(shift_tokens=1, weight_tie_layers=True, add_value_residual=True)])
def test_activation_checkpointing_gives_the_same_gradients(over):
    """Re-running a block in the backward pass (as the trainer's activation checkpointing does) must
    see the same inputs, including state carried between layers (first-layer values, scores)."""
    from torch.utils.checkpoint import checkpoint

    x = ids(2, 12)

    def grads(ckpt: bool):
        model = make("absolute", seed=1, **over).train()
        if ckpt:
            for block in model.blocks:
                inner = block.forward
                block.forward = lambda *a, _f=inner, **k: checkpoint(_f, *a, use_reentrant=False, **k)
        model(x).logsumexp(-1).mean().backward()
        return {n: p.grad for n, p in model.named_parameters()}

    plain, ckpt = grads(False), grads(True)
    for name, g in plain.items():
        torch.testing.assert_close(ckpt[name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_attn_z_loss_is_added_in_training_only():
    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=32, max_seq_len=16, attn_layers=Decoder(dim=32, depth=2, heads=2))
    plain = AutoregressiveWrapper(net)
    zl = AutoregressiveWrapper(net, add_attn_z_loss=True, attn_z_loss_weight=1e-2)
    seq = torch.randint(0, 32, (2, 17))
    z = net(seq[:, :-1], return_attn_z_loss=True, attn_z_loss_weight=1e-2)[1].attn_z_loss  # x-transformers' return
    torch.testing.assert_close(zl(seq), plain(seq) + z)
    zl.eval(), plain.eval()
    torch.testing.assert_close(zl(seq), plain(seq))  # evaluation reports the language-model loss alone
    zl.train()
    zl(seq).backward()  # the z-loss term is differentiable
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad and p.dim() == 2)

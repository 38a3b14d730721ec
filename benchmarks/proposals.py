"""Measure proposed decode-path changes without touching src/: a benchmark-local copy of arlm's
cached greedy decode loop for the plain configuration (pre-norm LayerNorm blocks, rotary, GELU
MLP), with each proposal behind a switch, timed against arlm's own ``generate`` and against
x-transformers, alternating, in one process. Every variant must produce arlm's greedy tokens.

Variants (cumulative, in this order):
  arlm generate          the library as it is
  loop                   same ops as arlm (bool mask over all S cache slots, gathered rotary
                         tables, split-and-stack rotary), but a plain loop: no nn.Module calls,
                         no Context/Stepper objects
  + slice kv             attend to the filled cache slots only: one query needs no mask at all
                         (SDPA reads pos+1 slots instead of max_seq_len)
  + complex rotary       rotate q and k together with one complex multiply per layer against a
                         per-position table (pass-through dims as 1+0j); no cat/stack/unbind
  + inference_mode       torch.inference_mode() instead of no_grad (no version counters)

With --compile it also times arlm's own ``generate(compile=True)`` and the same with the KV cache
patched (in this process only) to hold one tensor per layer instead of views of one stacked
(L, B, K, S, D) tensor: compiled, an in-place write into a view of a graph input is
functionalized into a copy of the whole stacked cache at every step.

  .venv/bin/python benchmarks/proposals.py --threads 1 --batch 1 16
"""

from __future__ import annotations

import argparse
import contextlib

import common
import torch
import torch.nn.functional as F

DECODER = dict(dim=256, depth=4, heads=4, attn_dim_head=64, rotary_pos_emb=True)


def weights(model):
    """Per-layer tensors of an arlm Transformer in the plain configuration."""
    cfg = model.cfg
    assert cfg.pos_emb == "rotary" and cfg.norm == "layernorm" and not cfg.ff_glu and cfg.pre_norm
    layers = []
    for b in model.blocks:
        layers.append((b.attn_norm.weight, b.attn_norm.eps, b.attn.qkv.weight, b.attn.out.weight, b.attn.scale,
                       b.ff_norm.weight, b.ff_norm.eps, b.ff.proj_in.weight, b.ff.proj_in.bias,
                       b.ff.proj_out.weight, b.ff.proj_out.bias))
    return layers


def complex_table(model) -> torch.Tensor:
    """(P, D/2) complex64: e^{i theta} for the rotated pairs, 1 for the pass-through pairs."""
    cfg = model.cfg
    cos, sin = model.rotary.cos, model.rotary.sin  # (P, R/2)
    P, half = cos.shape
    ones = torch.ones(P, cfg.head_dim // 2 - half, dtype=cos.dtype, device=cos.device)
    return torch.complex(torch.cat((cos, ones), 1), torch.cat((sin, torch.zeros_like(ones)), 1))


def rotary_split(x, cos, sin):
    """arlm's apply_rotary: the first R dims in adjacent pairs, float math, stack, cat the rest."""
    r = cos.shape[-1] * 2
    rot, rest = x[..., :r], x[..., r:]
    x1, x2 = rot.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2).to(x.dtype)
    return out if rest.shape[-1] == 0 else torch.cat((out, rest), dim=-1)


def decode(model, prompt: torch.Tensor, n: int, *, slice_kv: bool, complex_rotary: bool, inference: bool):
    """Greedy cached decoding of ``n`` tokens after ``prompt`` (B, T): returns (B, n)."""
    cfg = model.cfg
    B = prompt.shape[0]
    H, K, D, C, S = cfg.heads, cfg.n_kv_heads, cfg.head_dim, cfg.dim, cfg.max_seq_len
    assert K == H
    ctx = torch.inference_mode() if inference else torch.no_grad()
    with ctx:
        layers = weights(model)
        table = complex_table(model) if complex_rotary else None
        kc = torch.zeros(len(layers), B, K, S, D)
        vc = torch.zeros(len(layers), B, K, S, D)
        slots = torch.arange(S)
        out = torch.empty(B, n, dtype=torch.long)
        ids, pos = prompt, 0
        for i in range(n):
            T = ids.shape[1]
            x = F.embedding(ids, model.token_emb.weight)  # (B, T, C)
            if complex_rotary:
                fc = table[pos:pos + T, None, :]  # (T, 1, D/2): a view, no gather
            else:
                p = torch.arange(pos, pos + T)
                cos, sin = model.rotary.cos[p][None, None], model.rotary.sin[p][None, None]  # (1, 1, T, R/2)
            if not slice_kv:
                mask = (slots[None, :] <= torch.arange(pos, pos + T)[:, None])[None, None]  # (1, 1, T, S)
            for j, (n1, e1, wqkv, wo, scale, n2, e2, w1, b1, w2, b2) in enumerate(layers):
                h = F.layer_norm(x, (C,), n1, None, e1)
                qkv = F.linear(h, wqkv)  # (B, T, (H + 2K) D)
                if complex_rotary:
                    qk = qkv[..., :(H + K) * D].view(B, T, H + K, D // 2, 2)
                    qk = torch.view_as_real(torch.view_as_complex(qk) * fc).view(B, T, H + K, D)
                    q, k = qk[:, :, :H].transpose(1, 2), qk[:, :, H:].transpose(1, 2)  # (B, H, T, D)
                else:
                    q = qkv[..., :H * D].view(B, T, H, D).transpose(1, 2)
                    k = qkv[..., H * D:(H + K) * D].view(B, T, K, D).transpose(1, 2)
                    q, k = rotary_split(q, cos, sin), rotary_split(k, cos, sin)
                v = qkv[..., (H + K) * D:].view(B, T, K, D).transpose(1, 2)
                kc[j, :, :, pos:pos + T] = k
                vc[j, :, :, pos:pos + T] = v
                if slice_kv:
                    # one query sees every filled slot; a prompt from slot 0 is plain causal
                    y = F.scaled_dot_product_attention(q, kc[j, :, :, :pos + T], vc[j, :, :, :pos + T],
                                                       is_causal=T > 1, scale=scale)
                else:
                    y = F.scaled_dot_product_attention(q, kc[j], vc[j], attn_mask=mask, scale=scale)
                x = x + F.linear(y.transpose(1, 2).reshape(B, T, H * D), wo)
                h = F.layer_norm(x, (C,), n2, None, e2)
                x = x + F.linear(F.gelu(F.linear(h, w1, b1)), w2, b2)
            x = F.layer_norm(x[:, -1], (C,), model.norm.weight, None, model.norm.eps)
            tok = F.linear(x, model.head.weight).argmax(-1)  # (B,)
            out[:, i] = tok
            pos += T
            ids = tok[:, None]
    return out


class _PerLayer(list):
    """A list of per-layer (B, K, S, D) tensors that reports the stacked shape, as KVCache.k does."""

    @property
    def shape(self):
        return (len(self), *self[0].shape)


@contextlib.contextmanager
def per_layer_cache():
    """Patch arlm (this process only): KVCache keeps one tensor per layer; compiled_step marks each."""
    from arlm.generation import decode as dec
    from arlm.model import attention

    orig_init, orig_compiled = attention.KVCache.__init__, dec.compiled_step

    def init(self, depth, batch, kv_heads, max_len, head_dim, device=None, dtype=torch.float32, **kw):
        orig_init(self, depth, batch, kv_heads, max_len, head_dim, device=device, dtype=dtype, **kw)
        self.k, self.v = _PerLayer(self.k.unbind(0)), _PerLayer(self.v.unbind(0))
        self.k[:] = [t.clone() for t in self.k]  # own storage per layer, not views of one tensor
        self.v[:] = [t.clone() for t in self.v]

    def compiled(model, batch):
        per_model = dec._COMPILED.setdefault(model, {})
        p = model.token_emb.weight
        key = ("per-layer", batch, p.device, p.dtype)
        if key not in per_model:
            cache = model.new_cache(batch, model.cfg.max_seq_len)
            for t in (*cache.k, *cache.v):
                torch._dynamo.mark_static_address(t)
            mode = "reduce-overhead" if p.device.type == "cuda" else None
            per_model[key] = (cache, torch.compile(model, mode=mode, fullgraph=True, dynamic=False))
        return per_model[key]

    attention.KVCache.__init__, dec.compiled_step = init, compiled
    try:
        yield
    finally:
        attention.KVCache.__init__, dec.compiled_step = orig_init, orig_compiled


def generate_per_layer(a_model, prompt, n, **kw):
    with per_layer_cache():
        return a_model.generate(prompt, n, temperature=0.0, **kw)


VARIANTS = {
    "loop": dict(slice_kv=False, complex_rotary=False, inference=False),
    "+ slice kv": dict(slice_kv=True, complex_rotary=False, inference=False),
    "+ complex rotary": dict(slice_kv=True, complex_rotary=True, inference=False),
    "+ inference_mode": dict(slice_kv=True, complex_rotary=True, inference=True),
}


def rotary_complex(x, cos, sin, scale=None, inverse_scale=False):
    """apply_rotary with one complex multiply: adjacent pairs (x[2i], x[2i+1]) are complex numbers."""
    if scale is not None:
        return _ORIG_ROTARY(x, cos, sin, scale, inverse_scale)
    r = cos.shape[-1] * 2
    rot = torch.view_as_complex(x[..., :r].float().unflatten(-1, (-1, 2)).contiguous())
    out = torch.view_as_real(rot * torch.complex(cos, sin)).flatten(-2).to(x.dtype)
    return out if r == x.shape[-1] else torch.cat((out, x[..., r:]), dim=-1)


_ORIG_ROTARY = None


@contextlib.contextmanager
def patched_rotary():
    global _ORIG_ROTARY
    from arlm.model import attention

    _ORIG_ROTARY = attention.apply_rotary
    attention.apply_rotary = rotary_complex
    try:
        yield
    finally:
        attention.apply_rotary = _ORIG_ROTARY


def train_main(args) -> int:
    """Training-step variants, forward + backward + AdamW, on the CPU preset shape."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    x_model, a_model, _, _ = common.build_pair(256, args.seq, DECODER)
    c_model = common.build_pair(256, args.seq, DECODER)[1]
    c_model.load_state_dict(a_model.state_dict())
    c_model.net = torch.compile(c_model.net)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (args.train_batch, args.seq + 1), generator=g)
    opts = {}

    def step(model, ctx=contextlib.nullcontext):
        opt = opts.setdefault(id(model), torch.optim.AdamW(model.parameters(), lr=3e-4))
        for _ in range(args.train_steps):
            with ctx():
                loss = model(data)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    runs = {
        "x-transformers": lambda: step(x_model),
        "arlm": lambda: step(a_model),
        "arlm complex rotary": lambda: step(a_model, patched_rotary),
        "arlm sdpa math": lambda: step(a_model, lambda: sdpa_kernel(SDPBackend.MATH)),
        "arlm torch.compile": lambda: step(c_model),
    }
    with patched_rotary():  # the patch must not change the loss
        a = float(a_model(data).detach())
    assert abs(a - float(a_model(data).detach())) < 1e-4
    print(f"# train proposals: {common.describe_machine(torch.device('cpu'))}; batch {args.train_batch} x seq "
          f"{args.seq}, {args.train_steps} steps per repeat, median of {args.repeats}; load {common.load_average()}")
    step(c_model)  # compile outside the timing
    t = common.alternate(runs, torch.device("cpu"), args.repeats, 1)
    tokens = args.train_batch * args.seq * args.train_steps
    base = common.median([tokens / s for s in t.cpu["x-transformers"]])
    arlm = common.median([tokens / s for s in t.cpu["arlm"]])
    for name in runs:
        cpu = common.median([tokens / s for s in t.cpu[name]])
        wall = common.median([tokens / s for s in t[name]])
        print(f"  {name:>20}: {cpu:8.1f} tok/CPU-s ({wall:8.1f} wall)  {cpu / base:5.2f}x x  {cpu / arlm:5.2f}x arlm")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also time arlm generate(compile=True)")
    p.add_argument("--train", action="store_true", help="time training-step variants instead of decoding")
    p.add_argument("--seq", type=int, default=256, help="--train: sequence length")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-steps", type=int, default=2)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train:
        return train_main(args)
    x_model, a_model, copied, how = common.build_pair(256, args.max_seq_len, DECODER)
    x_model.eval(), a_model.eval()
    print(f"# decode proposals: {common.describe_machine(torch.device('cpu'))}; {how}")
    print(f"config: Decoder({DECODER}), max_seq_len {args.max_seq_len}, prompt 16, {args.new_tokens} new tokens, "
          f"greedy; median of {args.repeats} alternating repeats; load average {common.load_average()}")
    g = torch.Generator().manual_seed(0)
    n = args.new_tokens
    for batch in args.batch:
        prompt = torch.randint(0, 256, (batch, 16), generator=g)
        runs = {"x-transformers": lambda p=prompt: x_model.generate(p, n, temperature=0.0),
                "arlm generate": lambda p=prompt: a_model.generate(p, n, temperature=0.0)}
        if args.compile:
            runs["arlm compile=True"] = lambda p=prompt: a_model.generate(p, n, temperature=0.0, compile=True)
            runs["compile, per-layer kv"] = lambda p=prompt: generate_per_layer(a_model, p, n, compile=True)
        for name, kw in VARIANTS.items():
            runs[name] = lambda kw=kw, p=prompt: decode(a_model.net, p, n, **kw)
        ref = a_model.generate(prompt, n, temperature=0.0)
        for name, fn in runs.items():
            with torch.no_grad():
                got = fn()
            if name != "x-transformers" or copied:
                assert torch.equal(got, ref), f"{name} differs from arlm's greedy tokens"
        with torch.no_grad():
            t = common.alternate(runs, torch.device("cpu"), args.repeats, 0)
        base = common.median([batch * n / s for s in t.cpu["x-transformers"]])
        arlm = common.median([batch * n / s for s in t.cpu["arlm generate"]])
        print(f"batch {batch}: tokens per CPU-second (wall tok/s in brackets); x = x-transformers")
        for name in runs:
            cpu = common.median([batch * n / s for s in t.cpu[name]])
            wall = common.median([batch * n / s for s in t[name]])
            print(f"  {name:>22}: {cpu:8.1f} ({wall:8.1f})  {cpu / base:5.2f}x x  {cpu / arlm:5.2f}x arlm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

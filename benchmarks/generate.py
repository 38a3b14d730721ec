"""Decode speed, x-transformers vs arlm, side by side in one process.

Both models are built from the same keyword arguments (x-transformers' API, which arlm's facade
accepts), put in eval mode, and sampled with ``wrapper.generate(prompt, N, cache_kv=True)``.
Runs alternate (x, arlm, arlm, x, ...) after warmup; the median of the repeats is printed as
tokens/s (batch * new tokens / wall time of the whole generate call, 16-token prefill included)
with the ratio arlm / x-transformers. On CUDA it also prints the fraction of the memory-bandwidth
floor each reaches: per decode step the weights and the KV cache must be read from HBM once.

  .venv/bin/python benchmarks/generate.py --preset cpu
  python benchmarks/generate.py --preset gpu            # CUDA, bf16 weights
  python benchmarks/generate.py --preset gpu --compile  # arlm's compiled decode, if the API has one
"""

from __future__ import annotations

import argparse
import inspect
import time

import common
import torch

PRESETS = {
    # a 4-layer 256-dim byte model on CPU, fp32
    "cpu": dict(num_tokens=256, max_seq_len=512, prompt=16, new_tokens=256, batches=(1, 16),
                device="cpu", dtype="fp32",
                decoder=dict(dim=256, depth=4, heads=4, attn_dim_head=64, rotary_pos_emb=True)),
    # GPT-2 small shape (124M with the 50304-row embedding), bf16 weights on CUDA
    "gpu": dict(num_tokens=50304, max_seq_len=1024, prompt=16, new_tokens=512, batches=(1, 16),
                device="cuda", dtype="bf16",
                decoder=dict(dim=768, depth=12, heads=12, attn_dim_head=64, rotary_pos_emb=True)),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default: 1 16)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens generated per row")
    p.add_argument("--prompt-len", type=int, default=None)
    p.add_argument("--max-seq-len", type=int, default=None, help="model context (arlm's cache length)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy (default); > 0 samples with each library's default top_k filter")
    common.add_common_arguments(p)
    return p.parse_args(argv)


def arlm_compile_kwargs(wrapper) -> dict | None:
    """Keyword arguments that ask arlm's generate() for a compiled decode step, or None when the
    API does not offer one (then --compile is skipped for arlm with a message)."""
    for fn in (wrapper.generate, getattr(wrapper, "stream", None)):
        if fn is not None and "compile" in inspect.signature(fn).parameters:
            return {"compile": True}
    return None


def bandwidth_report(name: str, param_bytes: int, cfg, batch: int, context: int, step_s: float,
                     dtype: torch.dtype, hbm: float) -> str:
    """Fraction of the HBM floor: (parameter bytes + KV bytes read at the mean context) / bandwidth,
    over the measured time per decode step. ``cfg`` is arlm's ModelConfig (the same shape as the peer's)."""
    elt = torch.empty((), dtype=dtype).element_size()
    kv_bytes = 2 * cfg.depth * batch * cfg.n_kv_heads * context * cfg.head_dim * elt  # keys + values
    floor = (param_bytes + kv_bytes) / hbm
    return (f"  {name}: {step_s * 1e3:.3f} ms/step vs HBM floor {floor * 1e3:.3f} ms "
            f"(params {common.fmt_bytes(param_bytes)} + KV {common.fmt_bytes(kv_bytes)} at mean context {context}) "
            f"-> {floor / step_s:.1%} of the bandwidth floor")


def main(argv=None) -> int:
    args = parse_args(argv)
    pre = PRESETS[args.preset]
    device = common.setup(args, pre)
    dtype = common.DTYPES[args.dtype]
    batches = args.batch or pre["batches"]
    new_tokens = args.new_tokens or pre["new_tokens"]
    prompt_len = args.prompt_len or pre["prompt"]
    max_seq_len = args.max_seq_len or pre["max_seq_len"]
    if prompt_len + new_tokens > max_seq_len:
        print(f"note: prompt + new tokens = {prompt_len + new_tokens} > max_seq_len={max_seq_len}: "
              "both libraries slide their context window, which is not what this benchmark measures")

    x_model, a_model, copied, how = common.build_pair(pre["num_tokens"], max_seq_len, pre["decoder"], seed=args.seed)
    x_model, a_model = x_model.to(device, dtype).eval(), a_model.to(device, dtype).eval()

    print(f"# decode benchmark, preset {args.preset}: {common.describe_machine(device)}")
    print(f"config (same kwargs for both): TransformerWrapper(num_tokens={pre['num_tokens']}, "
          f"max_seq_len={max_seq_len}, attn_layers=Decoder({', '.join(f'{k}={v}' for k, v in pre['decoder'].items())}))")
    print(f"params: x-transformers {common.count_params(x_model):,}, arlm {common.count_params(a_model):,}; {how}")
    print(f"dtype {args.dtype} (weights cast; no autocast), eval mode, no grad; prompt {prompt_len}, "
          f"{new_tokens} new tokens, {'greedy' if args.temperature == 0 else f'temperature {args.temperature}, default top_k'}, "
          f"cache_kv=True; median of {args.repeats} alternating repeats after {args.warmup} warmup")

    gen_kwargs = dict(temperature=args.temperature, cache_kv=True)
    a_extra: dict = {}
    compile_note = "off"
    if args.compile:
        kw = arlm_compile_kwargs(a_model)
        if kw is None:
            print("--compile: arlm's AutoregressiveWrapper.generate() has no compile option yet; "
                  "running without compile (x-transformers is never compiled here)")
        else:
            a_extra = kw
            compile_note = (f"arlm generate(..., compile=True): torch.compile of its one-token decode step "
                            f"({'CUDA graphs via mode=reduce-overhead' if device.type == 'cuda' else 'inductor, no CUDA graphs'}); "
                            "compilation happens in an untimed first call whose time is printed; x-transformers eager")
    print(f"compile / CUDA graphs: {compile_note}")
    print(f"load average at start: {common.load_average()}")

    name, hbm, _ = common.gpu_specs(device)
    g = torch.Generator().manual_seed(args.seed)
    for batch in batches:
        prompt = torch.randint(0, pre["num_tokens"], (batch, prompt_len), generator=g).to(device)
        runs = {
            "x-transformers": lambda prompt=prompt: x_model.generate(prompt, new_tokens, **gen_kwargs),
            "arlm": lambda prompt=prompt: a_model.generate(prompt, new_tokens, **gen_kwargs, **a_extra),
        }
        if a_extra:
            common.sync(device)
            t0 = time.perf_counter()
            runs["arlm"]()
            common.sync(device)
            print(f"batch {batch}: first compiled arlm call (compile + run) took {time.perf_counter() - t0:.1f} s")
        if args.temperature == 0 and copied:
            same = torch.equal(runs["x-transformers"]().cpu(), runs["arlm"]().cpu())
            print(f"batch {batch}: greedy outputs identical: {same}")
        with torch.no_grad():
            times = common.alternate(runs, device, args.repeats, args.warmup)
        rate = {k: [batch * new_tokens / t for t in v] for k, v in times.items()}
        med = {k: common.median(v) for k, v in rate.items()}
        print(f"batch {batch:>3}: x-transformers {med['x-transformers']:>10,.1f} tok/s "
              f"({common.spread(rate['x-transformers'])}), arlm {med['arlm']:>10,.1f} tok/s "
              f"({common.spread(rate['arlm'])}), ratio arlm/x-transformers {med['arlm'] / med['x-transformers']:.2f}x")
        paired = [x / a for x, a in zip(times["x-transformers"], times["arlm"])]  # runs timed back to back
        print(f"           ratio per back-to-back pair: median {common.median(paired):.2f}x "
              f"(range {min(paired):.2f}..{max(paired):.2f}x over {len(paired)} pairs)")
        if device.type == "cpu":
            cpu = {k: common.median([batch * new_tokens / t for t in v]) for k, v in times.cpu.items()}
            print(f"           per CPU-second: x-transformers {cpu['x-transformers']:,.1f}, arlm {cpu['arlm']:,.1f} "
                  f"tok/CPU-s, ratio {cpu['arlm'] / cpu['x-transformers']:.2f}x (insensitive to other load; "
                  f"counts OpenMP spinning when threads > 1)")
        if hbm is not None:
            context = prompt_len + new_tokens // 2
            for k, model in (("x-transformers", x_model), ("arlm", a_model)):
                step_s = batch / med[k]  # wall seconds per decode step (all rows advance together)
                param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
                print(bandwidth_report(k, param_bytes, a_model.net.cfg, batch, context, step_s, dtype, hbm))
        elif device.type == "cuda":
            print(f"  (bandwidth floor skipped: HBM bandwidth of {name!r} is not tabulated in benchmarks/common.py)")
    print(f"load average at end: {common.load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

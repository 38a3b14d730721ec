"""Training speed, x-transformers vs arlm, side by side in one process.

Both models come from the same keyword arguments and see the same random (B, T+1) batches. A
step is forward (``loss = wrapper(batch)``) + backward + AdamW step + zero_grad, with the same
optimizer settings for both (decay on 2-D tensors only; fused kernels on CUDA). Repeats of
``--steps`` steps alternate between the two after warmup; medians are printed: tokens/s, step
time, peak memory (CUDA only), MFU, and the ratio arlm / x-transformers.

MFU counts 6N + 12·L·d·T FLOPs per token (N: parameters in matmuls, i.e. all but the embedding
table; L layers, d = heads * head size, T sequence length) against the device's dense bf16 peak
(H100/H200: 989e12; other GPUs: not tabulated, MFU skipped). On CPU there is no datasheet peak to
trust, so the script times an fp32 2048^3 matmul in the same run and reports each model's achieved
FLOP/s as a fraction of it.

  .venv/bin/python benchmarks/train.py --preset cpu
  python benchmarks/train.py --preset gpt2 --dtype bf16          # CUDA autocast
  python benchmarks/train.py --preset gpt2 --dtype bf16 --compile
"""

from __future__ import annotations

import argparse

import common
import torch

PRESETS = {
    "cpu": dict(num_tokens=256, seq=256, batch=8, steps=3, device="cpu", dtype="fp32",
                decoder=dict(dim=256, depth=4, heads=4, attn_dim_head=64, rotary_pos_emb=True)),
    "enwik8": dict(num_tokens=256, seq=1024, batch=4, steps=10, device="cuda", dtype="bf16",
                   decoder=dict(dim=512, depth=6, heads=8, attn_dim_head=64, rotary_pos_emb=True)),
    "gpt2": dict(num_tokens=50304, seq=1024, batch=8, steps=10, device="cuda", dtype="bf16",
                 decoder=dict(dim=768, depth=12, heads=12, attn_dim_head=64, rotary_pos_emb=True)),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", type=int, default=None, help="tokens per row (the model context is set to it)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per timed repeat")
    p.add_argument("--compile-peer", action="store_true",
                   help="with --compile, also torch.compile x-transformers (default: only arlm, as `arlm train --compile`)")
    common.add_common_arguments(p)
    return p.parse_args(argv)


def make_optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95), **({"fused": True} if device.type == "cuda" else {}))


def matmul_param_count(net) -> int:
    """Parameters that enter matmuls: everything but the token embedding table."""
    return common.count_params(net) - net.token_emb.weight.numel()


def main(argv=None) -> int:
    args = parse_args(argv)
    pre = PRESETS[args.preset]
    device = common.setup(args, pre)
    if args.dtype == "bf16" and device.type != "cuda":
        raise SystemExit("--dtype bf16 (autocast) is for --device cuda; CPU runs fp32")
    batch, seq, steps = args.batch or pre["batch"], args.seq or pre["seq"], args.steps or pre["steps"]
    dec = pre["decoder"]

    x_model, a_model, copied, how = common.build_pair(pre["num_tokens"], seq, dec, seed=args.seed)
    x_model, a_model = x_model.to(device).train(), a_model.to(device).train()
    fwd = {"x-transformers": x_model, "arlm": a_model}
    compile_note = "off (eager)"
    if args.compile:
        # what `arlm train --compile` does: torch.compile the network, the wrapper computes the loss
        a_model.net = torch.compile(a_model.net)
        compile_note = "arlm: torch.compile(net) (as `arlm train --compile`)"
        if args.compile_peer:
            x_model.net = torch.compile(x_model.net)
            compile_note += "; x-transformers: torch.compile(net)"
        else:
            compile_note += "; x-transformers: eager"
    opts = {"x-transformers": make_optimizer(x_model, device), "arlm": make_optimizer(a_model, device)}
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if args.dtype == "bf16" else None

    g = torch.Generator().manual_seed(args.seed)
    data = [torch.randint(0, pre["num_tokens"], (batch, seq + 1), generator=g).to(device) for _ in range(4)]
    cursor = {k: 0 for k in fwd}

    def step(name: str) -> float:
        model, opt = fwd[name], opts[name]
        x = data[cursor[name] % len(data)]
        cursor[name] += 1
        if autocast is not None:
            with autocast():
                loss = model(x)
        else:
            loss = model(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    print(f"# training benchmark, preset {args.preset}: {common.describe_machine(device)}")
    print(f"config (same kwargs for both): TransformerWrapper(num_tokens={pre['num_tokens']}, max_seq_len={seq}, "
          f"attn_layers=Decoder({', '.join(f'{k}={v}' for k, v in dec.items())})) + AutoregressiveWrapper")
    print(f"params: x-transformers {common.count_params(x_model):,}, arlm {common.count_params(a_model):,}; {how}")
    print(f"batch {batch} x seq {seq}, {'bf16 autocast' if autocast else 'fp32'}, AdamW "
          f"(lr 3e-4, wd 0.1 on 2-D, {'fused' if device.type == 'cuda' else 'foreach'}); "
          f"{steps} steps per repeat, median of {args.repeats} alternating repeats after {args.warmup} warmup repeat(s)")
    print(f"compile: {compile_note}; CUDA graphs: off")
    print(f"load average at start: {common.load_average()}")
    if copied:
        with torch.no_grad():
            l0 = {k: float(fwd[k](data[0])) for k in fwd}
        print(f"initial loss on batch 0: x-transformers {l0['x-transformers']:.5f}, arlm {l0['arlm']:.5f}")

    mm_before = common.matmul_flops(device) if device.type == "cpu" else None

    peak_mem: dict[str, list[int]] = {k: [] for k in fwd}
    base_mem: dict[str, int] = {}

    def before(name: str) -> None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base_mem[name] = torch.cuda.memory_allocated(device)

    def after(name: str) -> None:
        if device.type == "cuda":
            peak_mem[name].append(torch.cuda.max_memory_allocated(device) - base_mem[name])

    runs = {name: (lambda name=name: [step(name) for _ in range(steps)]) for name in fwd}
    times = common.alternate(runs, device, args.repeats, args.warmup, before, after)
    mm_after = common.matmul_flops(device) if device.type == "cpu" else None

    tokens = batch * seq * steps
    L, d = dec["depth"], dec["heads"] * dec["attn_dim_head"]
    flops_per_token = 6 * matmul_param_count(a_model.net) + 12 * L * d * seq
    _, _, peak = common.gpu_specs(device)
    med_tps = {}
    for name in fwd:
        t = common.median(times[name])
        tps = tokens / t
        med_tps[name] = tps
        line = f"{name:>14}: {tps:>10,.0f} tok/s, {t / steps * 1e3:>8.1f} ms/step"
        achieved = tps * flops_per_token
        if device.type == "cuda":
            line += f", peak memory above resident {common.fmt_bytes(max(peak_mem[name]))}"
            if peak is not None and args.dtype == "bf16":
                line += f", MFU {achieved / peak:.1%} (of {peak / 1e12:.0f} TFLOP/s bf16)"
            else:
                line += ", MFU skipped (" + ("fp32 peak not tabulated" if peak else "device peak not tabulated") + ")"
        else:
            ref = max(mm_before, mm_after)
            line += (f", {achieved / 1e9:.1f} GFLOP/s = {achieved / ref:.1%} of the fp32 matmul rate"
                     f" ({common.spread([tokens / s for s in times[name]])} tok/s)")
        print(line)
    if device.type == "cpu":
        cpu = {k: common.median([tokens / s for s in v]) for k, v in times.cpu.items()}
        print(f"{'per CPU-second':>14}: x-transformers {cpu['x-transformers']:,.0f}, arlm {cpu['arlm']:,.0f} tok/CPU-s, "
              f"ratio {cpu['arlm'] / cpu['x-transformers']:.2f}x")
        print(f"fp32 2048^3 matmul: {mm_before / 1e9:.1f} GFLOP/s before, {mm_after / 1e9:.1f} after "
              f"(best of 10 each; the higher is the reference); peak memory: skipped on CPU "
              f"(both models share one process, so RSS cannot be split between them)")
    print(f"flops per token: 6N + 12*L*d*T = {flops_per_token / 1e6:.1f} MFLOP (N = {matmul_param_count(a_model.net):,})")
    print(f"ratio arlm/x-transformers (tokens/s): {med_tps['arlm'] / med_tps['x-transformers']:.2f}x")
    print(f"load average at end: {common.load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Shared helpers for the side-by-side benchmarks: x-transformers (the peer) and arlm built from
the same keyword arguments, timed alternately in one process, medians and ratios printed.

Nothing here is imported by arlm itself; the benchmarks live outside the package on purpose.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:  # run from a checkout without installing arlm
    sys.path.insert(0, str(REPO / "src"))

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# HBM bandwidth (bytes/s) and dense bf16 peak (FLOP/s) by CUDA device name, from vendor datasheets.
# Checked in order; a device not listed gets None and the figure that needs it is skipped.
GPU_SPECS = (
    ("H200", 4.8e12, 989e12),
    ("H100 PCIE", 2.0e12, 756e12),
    ("H100", 3.35e12, 989e12),  # SXM
)


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: the preset's")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: the preset's")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU; default: all cores)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per model (median reported; >= 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warmup runs per model")
    p.add_argument("--compile", action="store_true", help="torch.compile (see each script for what exactly)")
    p.add_argument("--seed", type=int, default=0)


def setup(args, preset: dict) -> torch.device:
    """Fill --device/--dtype from the preset where not given, check the flags, set threads."""
    args.device = args.device or preset["device"]
    args.dtype = args.dtype or preset["dtype"]
    if args.repeats < 3:
        raise SystemExit("--repeats must be >= 3 (the median of fewer runs is not worth printing)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(args.device)


def import_peer():
    """x-transformers, or a clear exit if it is not installed."""
    try:
        import x_transformers
    except ImportError:
        raise SystemExit("x-transformers is not installed: pip install 'arlm[bench]' "
                         "(or the offline wheels: see benchmarks/README.md)") from None
    return x_transformers


def describe_machine(device: torch.device) -> str:
    import x_transformers

    import arlm

    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}",
             f"x-transformers {getattr(x_transformers, '__version__', _dist_version('x-transformers'))}",
             f"arlm {arlm.__version__}"]
    if device.type == "cuda":
        parts.append(f"device {torch.cuda.get_device_name(device)}")
    else:
        parts.append(f"cpu {platform.processor() or platform.machine()} x{os.cpu_count()}, "
                     f"torch threads {torch.get_num_threads()}")
    return ", ".join(parts)


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def load_average() -> str:
    """1-minute load average: on a shared machine, other work makes timings noisy; say so."""
    try:
        return f"{os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})"
    except OSError:
        return "n/a"


def gpu_specs(device: torch.device) -> tuple[str, float | None, float | None]:
    """(name, HBM bytes/s or None, bf16 peak FLOP/s or None) of a CUDA device; never assumes."""
    if device.type != "cuda":
        return "cpu", None, None
    name = torch.cuda.get_device_name(device)
    upper = name.upper()
    for key, bw, flops in GPU_SPECS:
        if key in upper:
            return name, bw, flops
    return name, None, None


def build_pair(num_tokens: int, max_seq_len: int, decoder_kwargs: dict, wrapper_kwargs: dict | None = None,
               seed: int = 0):
    """The same configuration in x-transformers and in arlm, from identical keyword arguments.

    Returns (x_wrapper, arlm_wrapper, weights_copied, description). arlm gets x-transformers' initial weights
    when ``arlm.export.x_transformers.convert_state_dict(sd, model)`` exists; otherwise both are
    initialised independently after seeding with the same seed.
    """
    xt = import_peer()
    import arlm

    wrapper_kwargs = wrapper_kwargs or {}
    torch.manual_seed(seed)
    x_net = xt.TransformerWrapper(num_tokens=num_tokens, max_seq_len=max_seq_len,
                                  attn_layers=xt.Decoder(**decoder_kwargs), **wrapper_kwargs)
    torch.manual_seed(seed)
    a_net = arlm.TransformerWrapper(num_tokens=num_tokens, max_seq_len=max_seq_len,
                                    attn_layers=arlm.Decoder(**decoder_kwargs), **wrapper_kwargs)
    copied, how = copy_peer_weights(x_net, a_net)
    return xt.AutoregressiveWrapper(x_net), arlm.AutoregressiveWrapper(a_net), copied, how


def copy_peer_weights(x_net, a_net) -> tuple[bool, str]:
    """Load x-transformers' weights into arlm when arlm has the converter: (copied, description)."""
    try:
        from arlm.export.x_transformers import convert_state_dict
    except ImportError:
        return False, "independent inits, same seed (arlm.export.x_transformers.convert_state_dict not available)"
    sd = convert_state_dict(x_net.state_dict(), a_net)
    a_net.load_state_dict(sd)
    return True, "arlm loaded x-transformers' initial weights via arlm.export.x_transformers.convert_state_dict"


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timings(dict):
    """name -> wall seconds per timed run; ``.cpu`` holds the process CPU seconds of each run."""

    def __init__(self, names):
        super().__init__({n: [] for n in names})
        self.cpu: dict[str, list[float]] = {n: [] for n in names}


def alternate(runs: dict[str, Callable[[], None]], device: torch.device, repeats: int, warmup: int,
              before: Callable[[str], None] | None = None, after: Callable[[str], None] | None = None
              ) -> Timings:
    """Time each callable ``repeats`` times, interleaved (a, b, b, a, ...), after ``warmup``
    untimed rounds. Returns wall seconds per timed run, and CPU seconds in ``.cpu``.

    On a shared machine wall time includes waiting for a core; process CPU time does not (with
    one thread it is the cleanest comparison; with several, OpenMP spin-waiting is counted)."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    sync(device)
    times = Timings(names)
    for r in range(repeats):
        # alternate who goes first, so a slow drift on a shared machine hits both alike
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            if before:
                before(name)
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            runs[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
            times.cpu[name].append(time.process_time() - c0)
            if after:
                after(name)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> str:
    """min..max of a list of rates, for judging noise."""
    return f"{min(xs):,.0f}..{max(xs):,.0f}"


def matmul_flops(device: torch.device, n: int = 2048, repeats: int = 10, dtype=torch.float32) -> float:
    """Achieved FLOP/s of an n x n @ n x n matmul (best of ``repeats``): the ceiling a training
    step can hope to approach on this machine."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"

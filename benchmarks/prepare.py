"""`arlm prepare` throughput and what training from a prepared folder costs at start-up.

Part 1 (throughput): MB/s of `arlm.data.prepare` with the byte and the BPE tokenizer, 1 vs N
worker processes, beside the ceiling: the same Hugging Face `tokenizers` batch encoding done by
hand in one process (read, cut into pieces, `encode_batch`, to uint16), no shards written.
Part 2 (start-up): seconds and peak RSS of opening the data and training 2 steps of the tiny
preset (byte tokenizer) from raw text vs from a prepared folder, for each corpus size.

Every measurement runs in a fresh child process, which reports its own peak RSS (its workers'
included, as the largest child). The corpus is synthetic: tinyshakespeare (the path below, or
the built-in corpus when it is absent) repeated with each copy's lines shuffled by a seeded RNG.

  .venv/bin/python benchmarks/prepare.py --prepare-mb 50 --sizes 10 100 400 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

SHAKESPEARE = Path("/work/shared/data/tinyshakespeare.txt")


def synthetic_corpus(path: Path, megabytes: float, seed: int = 0) -> str:
    """Write about ``megabytes`` MB of shuffled-line copies of the seed text; returns its name."""
    if SHAKESPEARE.is_file():
        seed_text, name = SHAKESPEARE.read_text(encoding="utf-8"), "tinyshakespeare"
    else:
        from arlm.data import default_corpus

        seed_text, name = default_corpus().decode("utf-8", errors="replace"), "the built-in corpus"
    if path.is_file() and path.stat().st_size >= megabytes * 1e6:
        return name
    lines = seed_text.splitlines(keepends=True)
    rng = random.Random(seed)
    size, target = 0, int(megabytes * 1e6)
    with open(path, "w", encoding="utf-8") as f:
        while size < target:
            rng.shuffle(lines)
            chunk = "".join(lines)[: target - size]
            f.write(chunk)
            size += len(chunk.encode())
    return name


def peak_rss_mib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024  # Linux reports KiB


# ---- child measurements (each in a fresh process) ----------------------------------------------


def child_prepare(a) -> dict:
    import shutil

    from arlm.data import prepare

    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    meta = prepare(a.corpus, out, tokenizer=a.tokenizer, bpe_vocab_size=a.bpe_vocab_size, workers=a.workers,
                   bpe_sample_bytes=a.bpe_sample_bytes, progress=False, log=lambda m: None)
    seconds = time.perf_counter() - t
    tokens = sum(s["tokens"] for s in meta["splits"].values())
    return {"seconds": seconds, "tokens": tokens, "encode_seconds": seconds - meta["tokenizer_seconds"]}


def child_ceiling(a) -> dict:
    """The same encoding by hand in one process: HF encode_batch over the pieces, to uint16."""
    import numpy as np

    from arlm.tokenizers import load_tokenizer
    from arlm.tokenizers.bpe import text_chunks

    t = time.perf_counter()
    data = Path(a.corpus).read_bytes()
    if a.tokenizer == "byte":
        ids = np.frombuffer(data, dtype=np.uint8).astype(np.uint16)
        tokens = len(ids)
    else:
        hf = load_tokenizer(Path(a.out) / "tokenizer.json").to_hf()  # the tokenizer prepare trained
        pieces = list(text_chunks(data.decode("utf-8", errors="replace")))
        tokens = 0
        for i in range(0, len(pieces), 256):
            for e in hf.encode_batch(pieces[i : i + 256], add_special_tokens=False):
                tokens += len(np.asarray(e.ids, dtype=np.uint16))
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "tokens": tokens, "encode_seconds": seconds}


def child_startup(a) -> dict:
    """Open the data as the trainer does, then train 2 steps of the tiny preset."""
    from arlm.config import preset
    from arlm.data import open_training_data
    from arlm.training import train

    cfg = preset("tiny")
    cfg.data.path = a.corpus
    cfg.data.tokenizer = "byte"
    cfg.train.max_steps, cfg.train.eval_batches, cfg.train.eval_every = 2, 1, 0
    cfg.train.sample_every, cfg.train.sample_tokens, cfg.train.progress = 0, 1, False
    t = time.perf_counter()
    data = open_training_data(cfg.data, cfg.seq_len)
    opened = time.perf_counter() - t
    n = len(data.train)
    del data
    t = time.perf_counter()
    train(cfg, a.out, progress=False, log=lambda m: None)
    return {"open_seconds": opened, "train_seconds": time.perf_counter() - t, "train_tokens": n}


def run_child(kind: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--child", kind] + [x for k, v in kw.items() for x in (f"--{k}", str(v))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"child {kind} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/arlm-bench-prepare", help="folder for corpora and outputs")
    p.add_argument("--prepare-mb", type=float, default=50, help="corpus size for the throughput part")
    p.add_argument("--bpe-mb", type=float, default=None, help="corpus size for BPE throughput (default: --prepare-mb)")
    p.add_argument("--sizes", type=float, nargs="*", default=[10, 100, 400], help="corpus sizes (MB) for start-up")
    p.add_argument("--workers", type=int, default=None, help="N for the 1 vs N comparison (default: the cores)")
    p.add_argument("--bpe-vocab-size", type=int, default=4096)
    p.add_argument("--bpe-sample-bytes", type=int, default=8 << 20)
    p.add_argument("--skip", nargs="*", default=[], choices=["throughput", "startup"])
    # child mode
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", default="byte", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        result = {"prepare": child_prepare, "ceiling": child_ceiling, "startup": child_startup}[a.child](a)
        print(json.dumps({**result, "peak_rss_mib": peak_rss_mib()}))
        return

    from arlm.data.preparation import default_workers

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    n = a.workers or default_workers()
    print(f"cores available: {default_workers()}, load average at start: {os.getloadavg()}")

    if "throughput" not in a.skip:
        print(f"\n== prepare throughput (N = {n} workers) ==")
        print(f"{'tokenizer':>9} {'MB':>6} {'how':>24} {'seconds':>8} {'encode s':>8} {'MB/s':>7} "
              f"{'/ ceiling':>9} {'peak RSS MiB':>12}")
        for tok in ("byte", "bpe"):
            mb = a.prepare_mb if tok == "byte" else (a.bpe_mb or a.prepare_mb)
            corpus = work / f"corpus-{mb:g}MB.txt"
            source = synthetic_corpus(corpus, mb)
            size = corpus.stat().st_size / 1e6
            rows = []
            for w in (1, n):
                r = run_child("prepare", corpus=corpus, out=work / f"prep-{tok}", tokenizer=tok, workers=w,
                              **{"bpe-vocab-size": a.bpe_vocab_size, "bpe-sample-bytes": a.bpe_sample_bytes})
                rows.append((f"arlm prepare, {w} worker{'s' if w > 1 else ''}", r))
            ceiling = run_child("ceiling", corpus=corpus, out=work / f"prep-{tok}", tokenizer=tok)
            rows.append(("HF encode_batch by hand", ceiling))
            for how, r in rows:
                enc = r["encode_seconds"]
                print(f"{tok:>9} {size:6.1f} {how:>24} {r['seconds']:8.2f} {enc:8.2f} {size / enc:7.2f} "
                      f"{(size / enc) / (size / ceiling['encode_seconds']):9.2f} {r['peak_rss_mib']:12.0f}")
        print(f"(corpus: {source}, lines shuffled per copy. seconds: the whole prepare, BPE runs including "
              f"training a {a.bpe_vocab_size}-id BPE on the first {a.bpe_sample_bytes / 1e6:.1f} MB; MB/s and "
              "'/ ceiling' use the encode seconds, without that training; the ceiling reads, encodes, converts)")

    if "startup" not in a.skip:
        print("\n== training start-up: raw text vs prepared folder (tiny preset, byte tokenizer, 2 steps) ==")
        print(f"{'MB':>6} {'data':>9} {'open s':>8} {'open+train s':>13} {'peak RSS MiB':>12}")
        for mb in a.sizes:
            corpus = work / f"corpus-{mb:g}MB.txt"
            synthetic_corpus(corpus, mb)
            prepared = work / f"prepared-{mb:g}MB"
            if not (prepared / "dataset.json").is_file():
                run_child("prepare", corpus=corpus, out=prepared, tokenizer="byte", workers=n)
            for label, path in (("raw", corpus), ("prepared", prepared)):
                out = work / f"run-{label}-{mb:g}"
                import shutil

                shutil.rmtree(out, ignore_errors=True)
                r = run_child("startup", corpus=path, out=out)
                print(f"{corpus.stat().st_size / 1e6:6.1f} {label:>9} {r['open_seconds']:8.2f} "
                      f"{r['open_seconds'] + r['train_seconds']:13.2f} {r['peak_rss_mib']:12.0f}")
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()

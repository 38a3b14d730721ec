"""``prepare``: tokenize a corpus once into token shards that training memory-maps.

Documents stream from the source in a fixed order, are grouped into chunks of about
``chunk_bytes`` and tokenized by ``workers`` processes (at most two chunks per worker in flight,
so memory stays bounded); results are written in source order, so the shards are byte-identical
whatever the number of workers. Each document is followed by a separator: the end-of-text token
(BPE) or the byte 0xFF, which never occurs in UTF-8 text (byte tokenizer). Document i goes to
validation when floor((i + 1) * f) > floor(i * f): every (1/f)-th document, spread evenly.
Everything is written into a hidden temporary folder that is renamed to ``out`` at the end.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np
import tokenizers
from tqdm.auto import tqdm

from arlm.data.corpus import DataError
from arlm.data.shards import FORMAT, SIDECAR, SPLITS, TOKENIZER_FILE, ShardWriter, shard_dtype, tokenizer_fingerprint
from arlm.data.sources import check_source, documents, source_bytes
from arlm.tokenizers import KINDS, BPETokenizer, ByteTokenizer, load_tokenizer
from arlm.tokenizers.bpe import text_chunks

SEPARATOR_BYTE = 0xFF  # never part of UTF-8, so it cannot be confused with text
END_OF_TEXT = "<|endoftext|>"
MAX_BPE_VOCAB = 1_000_000


def is_val(index: int, val_fraction: float) -> bool:
    """Whether document ``index`` (0-based, in source order) belongs to the validation split."""
    return math.floor((index + 1) * val_fraction) > math.floor(index * val_fraction)


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def prepare(source, out, *, tokenizer: str = "byte", bpe_vocab_size: int = 4096, val_fraction: float = 0.1,
            workers: int | None = None, text_field: str = "text", doc_bytes: int = 1 << 16,
            shard_tokens: int = 1 << 28, bpe_sample_bytes: int = 1 << 25, chunk_bytes: int = 1 << 22,
            progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Tokenize ``source`` into the prepared folder ``out``; returns its sidecar (``dataset.json``).

    ``source``: a text file, a .gz, a folder (text, .jsonl, .parquet files), a .jsonl(.gz) file
    of records with a ``text_field``, a Parquet file, or a dataset saved by ``datasets``.
    ``tokenizer``: "byte", or "bpe" trained to ``bpe_vocab_size`` ids (the last is end-of-text)
    on the first ``bpe_sample_bytes`` of documents. ``val_fraction`` of the documents go to
    validation. Text files are cut into documents of about ``doc_bytes`` at line ends; shards
    hold at most ``shard_tokens`` tokens. ``workers`` (default: the cores) tokenize in parallel.
    """
    workers = default_workers() if workers is None else workers
    _check_options(tokenizer, bpe_vocab_size, val_fraction, workers, doc_bytes, shard_tokens, bpe_sample_bytes,
                   chunk_bytes)
    src, kind, files = check_source(source, text_field)
    out = Path(out).expanduser()
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise DataError(f"--out {out} already exists; choose a new folder (nothing was written)")
    t0 = time.perf_counter()
    docs = lambda: documents(src, text_field, doc_bytes)  # noqa: E731  (each call streams from the start)

    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        tok = _build_tokenizer(tokenizer, bpe_vocab_size, docs(), bpe_sample_bytes, log)
        t_tokenizer = time.perf_counter() - t0
        tok.save(tmp / TOKENIZER_FILE)
        tok = load_tokenizer(tmp / TOKENIZER_FILE)  # exactly what training will load
        sep = SEPARATOR_BYTE if tok.kind == "byte" else tok.vocab_size - 1
        dtype = shard_dtype(tok.vocab_size)
        byte_len = np.array([len(tok.token_bytes([i])) for i in range(tok.vocab_size)], dtype=np.int64)
        byte_len[sep] = 0  # a separator stands for no text
        writers = {s: ShardWriter(tmp, s, dtype, shard_tokens, byte_len) for s in SPLITS}
        worker_args = (tok.kind, tok.to_hf().to_str(), sep, val_fraction, dtype.str)
        counts = _tokenize(docs(), writers, worker_args, workers, chunk_bytes,
                           total=source_bytes(kind, files), progress=progress)
        splits = {s: {"documents": counts[s], **w.close()} for s, w in writers.items()}
        n_docs = counts["train"] + counts["val"]
        if counts["val"] == 0 or counts["train"] == 0:
            need = math.ceil(1 / val_fraction)
            raise DataError(
                f"{src} gave {n_docs} document(s): too few to split with val_fraction={val_fraction} (the first "
                f"validation document is number {need}); use a larger --val-fraction"
                + (", or a smaller --doc-bytes (text files are cut into documents of that size)"
                   if kind in ("text", "folder") else "")
            )
        from arlm import __version__

        meta = {
            "format": FORMAT,
            "arlm_version": __version__,
            "source": {"path": str(src.resolve()), "kind": kind, "files": len(files) or None,
                       "text_field": text_field if kind not in ("text",) else None, "doc_bytes": doc_bytes},
            "tokenizer": {"kind": tok.kind, "vocab_size": tok.vocab_size, "fingerprint": tokenizer_fingerprint(tok),
                          "file": TOKENIZER_FILE,
                          "bpe_sample_bytes": bpe_sample_bytes if tok.kind == "bpe" else None},
            "dtype": dtype.name, "byte_order": "little",
            "separator": {"id": sep, "token": END_OF_TEXT if tok.kind == "bpe" else None,
                          "byte": SEPARATOR_BYTE if tok.kind == "byte" else None, "placement": "after each document"},
            "val_fraction": val_fraction,
            "split_rule": "document i (0-based) is validation when floor((i+1)*val_fraction) > floor(i*val_fraction)",
            "documents": n_docs,
            "bytes_note": "bytes: what the tokens stand for (UTF-8 text); separators count 0",
            "splits": splits,
            "seconds": round(time.perf_counter() - t0, 3),
            "tokenizer_seconds": round(t_tokenizer, 3),  # of those, building (training) the tokenizer
        }
        (tmp / SIDECAR).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _check_options(tokenizer, bpe_vocab_size, val_fraction, workers, doc_bytes, shard_tokens, bpe_sample_bytes,
                   chunk_bytes) -> None:
    if tokenizer not in KINDS:
        raise DataError(f"tokenizer must be one of {', '.join(KINDS)}, got {tokenizer!r}")
    if tokenizer == "bpe" and not 258 <= bpe_vocab_size <= MAX_BPE_VOCAB:
        raise DataError(f"bpe_vocab_size must be in [258, {MAX_BPE_VOCAB}] (256 bytes, merges and the "
                        f"end-of-text token), got {bpe_vocab_size}")
    if not (isinstance(val_fraction, (int, float)) and 0.0 < val_fraction < 1.0):
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    for name, value in (("workers", workers), ("doc_bytes", doc_bytes), ("shard_tokens", shard_tokens),
                        ("bpe_sample_bytes", bpe_sample_bytes), ("chunk_bytes", chunk_bytes)):
        if not isinstance(value, int) or value < 1:
            raise DataError(f"{name} must be a whole number >= 1, got {value!r}")


def _build_tokenizer(kind: str, vocab_size: int, docs, sample_bytes: int, log):
    if kind == "byte":
        return ByteTokenizer()

    def sample():
        seen = 0
        for doc in docs:
            if seen >= sample_bytes:
                return
            doc = doc[: sample_bytes - seen]
            seen += len(doc)
            yield doc.decode("utf-8", errors="replace")

    log(f"training a {vocab_size}-token BPE on up to the first {sample_bytes / 1e6:,.1f} MB of documents")
    bpe = BPETokenizer.train(sample(), vocab_size - 1)  # the last id is the end-of-text token
    hf = bpe.to_hf()
    hf.add_special_tokens([tokenizers.AddedToken(END_OF_TEXT, special=True, normalized=False)])
    return BPETokenizer(hf)


# ---- parallel tokenization ----------------------------------------------------------------------

_W: dict = {}  # the worker's tokenizer and options, set once per process by _init_worker


def _init_worker(kind: str, tokenizer_json: str, sep: int, val_fraction: float, dtype: str) -> None:
    if kind == "bpe":
        _W["bpe"] = tokenizers.Tokenizer.from_str(tokenizer_json)
    _W.update(kind=kind, sep=sep, val_fraction=val_fraction, dtype=np.dtype(dtype))


def _encode_chunk(first: int, docs: list[bytes]) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """Token ids of documents ``first, first + 1, ...``, each followed by the separator, by split.

    Returns (train ids, val ids, train documents, val documents, source bytes).
    """
    dtype, sep = _W["dtype"], np.array([_W["sep"]], dtype=_W["dtype"])
    if _W["kind"] == "byte":
        ids = [np.frombuffer(d, dtype=np.uint8).astype(dtype) for d in docs]
    else:
        pieces, owner = [], []
        for i, d in enumerate(docs):
            for piece in text_chunks(d.decode("utf-8", errors="replace")):
                pieces.append(piece)
                owner.append(i)
        encoded = _W["bpe"].encode_batch(pieces, add_special_tokens=False)
        parts: list[list[np.ndarray]] = [[] for _ in docs]
        for i, e in zip(owner, encoded):
            parts[i].append(np.asarray(e.ids, dtype=dtype))
        ids = [np.concatenate(p) if p else np.empty(0, dtype=dtype) for p in parts]
    out: dict[bool, list[np.ndarray]] = {False: [], True: []}
    for i, d in enumerate(ids):
        out[is_val(first + i, _W["val_fraction"])] += [d, sep]
    joined = [np.concatenate(out[v]) if out[v] else np.empty(0, dtype=dtype) for v in (False, True)]
    return joined[0], joined[1], len(out[False]) // 2, len(out[True]) // 2, sum(len(d) for d in docs)


def _chunks(docs, chunk_bytes: int):
    """(index of the first document, documents) groups of about ``chunk_bytes``."""
    group, size, first, n = [], 0, 0, 0
    for doc in docs:
        group.append(doc)
        size += len(doc)
        n += 1
        if size >= chunk_bytes:
            yield first, group
            group, size, first = [], 0, n
    if group:
        yield first, group


def _tokenize(docs, writers: dict, worker_args: tuple, workers: int, chunk_bytes: int, total: int | None,
              progress: bool) -> dict:
    """Tokenize every chunk (in ``workers`` processes) and write the results in source order."""
    counts = {"train": 0, "val": 0}
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
               desc="tokenizing", dynamic_ncols=True)
    tokens, t0 = 0, time.perf_counter()

    def write(result) -> None:
        nonlocal tokens
        train, val, n_train, n_val, n_bytes = result
        writers["train"].write(train)
        writers["val"].write(val)
        counts["train"] += n_train
        counts["val"] += n_val
        tokens += len(train) + len(val)
        bar.update(n_bytes)
        bar.set_postfix_str(f"{tokens / max(time.perf_counter() - t0, 1e-9):,.0f} tok/s", refresh=False)

    try:
        if workers == 1:
            _init_worker(*worker_args)
            for first, group in _chunks(docs, chunk_bytes):
                write(_encode_chunk(first, group))
            return counts
        with _pool(workers, worker_args) as pool:
            pending: deque = deque()
            for first, group in _chunks(docs, chunk_bytes):
                pending.append(pool.apply_async(_encode_chunk, (first, group)))
                if len(pending) >= 2 * workers:  # bounded: never more than this many chunks in memory
                    write(pending.popleft().get())
            while pending:
                write(pending.popleft().get())
        return counts
    finally:
        bar.close()


def _pool(workers: int, worker_args: tuple):
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    # HF tokenizers warns in a forked child unless parallelism is configured; a worker encodes
    # on one thread (the processes are the parallelism)
    had = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return ctx.Pool(workers, initializer=_init_worker, initargs=worker_args)
    finally:
        if had is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = had

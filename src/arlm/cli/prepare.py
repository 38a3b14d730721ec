"""``arlm prepare``: tokenize a corpus once into token shards that `arlm train --data DIR` memory-maps."""

from __future__ import annotations

import argparse

from .common import UsageError, out


def prepare(args: argparse.Namespace) -> int:
    """Tokenize a corpus once into memory-mapped token shards for large-corpus training.

    SOURCE is a text file, a .gz, a folder of text files, a .jsonl or .jsonl.gz file of records
    (the text in --text-field), a Parquet file or folder, or a Hugging Face dataset saved with
    save_to_disk (Parquet and datasets need the 'datasets' extra). DIR receives
    train-NNNNN.bin and val-NNNNN.bin (little-endian uint16, or uint32 for vocabularies over
    65536 ids), tokenizer.json and dataset.json (tokenizer fingerprint, token and byte counts per
    shard and split, the source). Each document is followed by a separator: the end-of-text
    token (bpe) or the byte 0xFF (byte). Every (1/F)-th document goes to validation. The shards
    are byte-identical for the same source and options, whatever --workers. DIR appears only
    when everything is written; an interrupted run leaves nothing training would accept.

    Text files are cut into documents of about --doc-bytes at line ends. Then train with
    `arlm train --data DIR` (the folder's tokenizer and split are used; add
    --data.document_mask true to keep attention inside each document) and score with
    `arlm eval RUN --data DIR` (its validation split).

    examples:
      arlm prepare corpus.txt --out data/corpus
      arlm prepare docs.jsonl.gz --out data/docs --tokenizer bpe --bpe-vocab-size 8192 --workers 8
      arlm train --preset tiny --data data/docs --out runs/docs
    """
    from arlm.data import prepare as run_prepare

    for flag, value in (("--workers", args.workers), ("--doc-bytes", args.doc_bytes),
                        ("--shard-tokens", args.shard_tokens), ("--bpe-sample-bytes", args.bpe_sample_bytes)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if not 0.0 < args.val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    options = {k: getattr(args, k) for k in ("doc_bytes", "shard_tokens", "bpe_sample_bytes")
               if getattr(args, k) is not None}
    meta = run_prepare(args.source, args.out, tokenizer=args.tokenizer, bpe_vocab_size=args.bpe_vocab_size,
                       val_fraction=args.val_fraction, workers=args.workers, text_field=args.text_field,
                       progress=not args.no_progress, log=out, **options)
    tok, splits = meta["tokenizer"], meta["splits"]
    mb = sum(s["bytes"] for s in splits.values()) / 1e6
    out(f"prepared {args.out}: {meta['documents']:,} documents, {tok['kind']} tokenizer ({tok['vocab_size']} ids), "
        f"{meta['dtype']} shards")
    for name, s in splits.items():
        out(f"  {name}: {s['documents']:,} documents, {s['tokens']:,} tokens, {s['bytes']:,} bytes, "
            f"{len(s['shards'])} shard(s)")
    out(f"  {mb:,.1f} MB in {meta['seconds']:.1f} s ({mb / max(meta['seconds'], 1e-9):,.1f} MB/s)")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    from arlm.tokenizers import KINDS

    p.add_argument("source", metavar="SOURCE", help="text file, .gz, folder, .jsonl(.gz), Parquet file or folder, "
                   "or a saved Hugging Face dataset")
    p.add_argument("--out", required=True, metavar="DIR", help="the prepared folder to create (must not exist)")
    p.add_argument("--tokenizer", choices=KINDS, default="byte", help="byte (256 ids) or bpe trained on the "
                   "source (default: byte)")
    p.add_argument("--bpe-vocab-size", type=int, default=4096, metavar="N",
                   help="BPE ids, the end-of-text token included (default: 4096)")
    p.add_argument("--bpe-sample-bytes", type=int, metavar="N", help="train BPE on the first N bytes of "
                   "documents (default: 32 MiB)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="fraction of the documents held out for validation (default: 0.1)")
    p.add_argument("--workers", type=int, metavar="N", help="tokenizing processes (default: the cores)")
    p.add_argument("--text-field", default="text", metavar="NAME",
                   help="the field (JSON lines) or column (Parquet, datasets) holding the text (default: text)")
    p.add_argument("--doc-bytes", type=int, metavar="N", help="text files are cut into documents of about N "
                   "bytes at line ends (default: 65536)")
    p.add_argument("--shard-tokens", type=int, metavar="N", help="tokens per shard file at most "
                   "(default: 268435456)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

"""The one door to training data: a raw corpus (read and tokenized now) or a prepared folder (memory-mapped)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from arlm.data.corpus import DataError, load_corpus
from arlm.data.dataset import TokenSplits, split_tokens
from arlm.data.shards import TOKENIZER_FILE, PreparedData, is_prepared, looks_unfinished, open_prepared, \
    read_sidecar, tokenizer_fingerprint
from arlm.tokenizers import build_tokenizer, load_tokenizer


@dataclass
class TrainingData(TokenSplits):
    """Both splits (numpy arrays, or memory-mapped shards), their byte counts, the tokenizer, and
    ``corpus_id``, which a checkpoint records to notice a changed corpus on resume."""

    tokenizer: object = None
    corpus_id: dict | None = None
    prepared: PreparedData | None = None
    doc_separator: int | None = None  # the separator id when data.document_mask is on


def align_data_config(data_cfg, log: Callable[[str], None] = print) -> None:
    """When ``data.path`` is a prepared folder, its tokenizer and split decide ``data.tokenizer``,
    ``data.bpe_vocab_size`` and ``data.val_fraction``; set them (saying so when they change) so the
    run's config.yaml tells the truth."""
    meta = read_sidecar(Path(data_cfg.path)) if data_cfg.path else None
    if meta is None:
        return
    tok = meta["tokenizer"]
    want = {"tokenizer": tok["kind"], "val_fraction": meta["val_fraction"]}
    if tok["kind"] == "bpe":
        want["bpe_vocab_size"] = tok["vocab_size"]
    changed = [f"data.{k}={getattr(data_cfg, k)!r} -> {v!r}" for k, v in want.items() if getattr(data_cfg, k) != v]
    for k, v in want.items():
        setattr(data_cfg, k, v)
    if changed:
        log(f"{data_cfg.path} is a prepared folder; its tokenizer and split are used: {', '.join(changed)}")


def open_training_data(data_cfg, seq_len: int, tokenizer=None) -> TrainingData:
    """Open ``data_cfg.path`` for training or evaluation with ``seq_len``-token windows.

    A prepared folder (``arlm prepare``) is memory-mapped; its tokenizer is used, or, when
    ``tokenizer`` is given (a resumed run's), must be the one it was prepared with. Anything else
    is a raw corpus (``load_corpus``): read, tokenized with ``tokenizer`` or a new
    ``data.tokenizer``, and split as ``split_tokens`` does.
    """
    path = data_cfg.path
    if path is not None and is_prepared(path):
        data = _open_prepared(Path(path), seq_len, tokenizer)
        if data_cfg.document_mask:
            data.doc_separator = int(data.prepared.meta["separator"]["id"])
        return data
    if data_cfg.document_mask:
        raise DataError(f"data.document_mask needs a prepared folder (arlm prepare), whose separators mark the "
                        f"documents; {path or 'the built-in corpus'} is raw text. Prepare it, or set "
                        "data.document_mask false")
    if path is not None and looks_unfinished(Path(path).expanduser()):
        raise DataError(f"{path} holds token shards but no dataset.json: an arlm prepare that did not finish; "
                        "run arlm prepare again")
    corpus = load_corpus(path)
    corpus_id = {"sha256": hashlib.sha256(corpus).hexdigest(), "bytes": len(corpus)}
    if tokenizer is None:
        tokenizer = build_tokenizer(data_cfg.tokenizer, corpus, data_cfg.bpe_vocab_size)
    s = split_tokens(corpus, tokenizer, data_cfg.val_fraction, seq_len + 1)
    return TrainingData(train=s.train, val=s.val, train_bytes=s.train_bytes, val_bytes=s.val_bytes,
                        replaced_bytes=s.replaced_bytes, tokenizer=tokenizer, corpus_id=corpus_id)


def check_tokenizer(root: Path, meta: dict, tokenizer, whose: str = "this run's") -> None:
    """DataError unless ``tokenizer`` is the one the prepared folder ``root`` was tokenized with."""
    made = meta["tokenizer"]
    if tokenizer_fingerprint(tokenizer) != made["fingerprint"]:
        raise DataError(
            f"{root} was prepared with a different tokenizer ({made['kind']}, {made['vocab_size']} ids, "
            f"fingerprint {made['fingerprint'][:12]}) than {whose} ({tokenizer.kind}, {tokenizer.vocab_size} ids, "
            f"fingerprint {tokenizer_fingerprint(tokenizer)[:12]}): its token ids mean other text to this "
            "model. Use the folder the run was trained on, or prepare the text again for a new run"
        )


def _open_prepared(root: Path, seq_len: int, tokenizer) -> TrainingData:
    data = open_prepared(root)
    if tokenizer is None:
        try:
            tokenizer = load_tokenizer(root / TOKENIZER_FILE)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot load the tokenizer of the prepared folder {root}: {e}") from None
        if tokenizer_fingerprint(tokenizer) != data.meta["tokenizer"]["fingerprint"]:
            raise DataError(f"{root / TOKENIZER_FILE} is not the tokenizer {root} was prepared with; "
                            "the folder is damaged: run arlm prepare again")
    else:
        check_tokenizer(root, data.meta, tokenizer)
    for split, tokens in (("train", data.train), ("val", data.val)):
        if len(tokens) < seq_len + 1:
            need = math.ceil((seq_len + 1) / min(data.meta["val_fraction"], 1 - data.meta["val_fraction"]))
            raise DataError(
                f"the prepared folder {root} has {len(tokens)} {split} tokens, fewer than one window of "
                f"seq_len + 1 = {seq_len + 1}; use a smaller data.seq_len, or prepare more text (about {need} "
                "tokens in all)"
            )
    return TrainingData(train=data.train, val=data.val, train_bytes=data.bytes("train"),
                        val_bytes=data.bytes("val"), tokenizer=tokenizer, corpus_id=data.corpus_id, prepared=data)

"""The on-disk form of a prepared corpus: token shards, their JSON sidecar, and a memory-mapped view.

A prepared folder holds ``train-00000.bin ...`` and ``val-00000.bin ...`` (raw little-endian token
ids, uint16 when the vocabulary fits, else uint32, as nanoGPT writes them), ``tokenizer.json`` and
``dataset.json``, the sidecar, which is written last: a folder without it was never finished.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arlm.data.corpus import DataError

SIDECAR = "dataset.json"
FORMAT = "arlm-token-shards/1"
SPLITS = ("train", "val")
TOKENIZER_FILE = "tokenizer.json"


def shard_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's canonical JSON: equal exactly when the two encode alike."""
    return tokenizer.fingerprint


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.bin"


class ShardWriter:
    """Appends token arrays to ``{split}-NNNNN.bin`` files of at most ``shard_tokens`` tokens each.

    Records tokens and bytes per shard (``byte_len[id]`` is the bytes a token stands for; the
    separator counts 0) and a running sha256 of everything written.
    """

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int, byte_len: np.ndarray):
        self.folder, self.split, self.dtype = folder, split, dtype
        self.shard_tokens = shard_tokens
        self.byte_len = byte_len
        self.shards: list[dict] = []
        self.sha = hashlib.sha256()
        self._file = None

    def write(self, ids: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=self.dtype)
        while len(ids):
            if self._file is None or self.shards[-1]["tokens"] == self.shard_tokens:
                self._roll()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            piece, ids = ids[:room], ids[room:]
            data = piece.tobytes()
            self._file.write(data)
            self.sha.update(data)
            self.shards[-1]["tokens"] += len(piece)
            self.shards[-1]["bytes"] += int(self.byte_len[piece].sum())

    def _roll(self) -> None:
        if self._file is not None:
            self._file.close()
        name = shard_name(self.split, len(self.shards))
        self._file = open(self.folder / name, "wb")
        self.shards.append({"file": name, "tokens": 0, "bytes": 0})

    def close(self) -> dict:
        """Finish the last shard; returns the split's sidecar entry."""
        if self._file is not None:
            self._file.close()
            self._file = None
        return {
            "tokens": sum(s["tokens"] for s in self.shards),
            "bytes": sum(s["bytes"] for s in self.shards),
            "sha256": self.sha.hexdigest(),
            "shards": self.shards,
        }


class ShardedTokens:
    """Read-only 1-D view of one split's shards, memory-mapped: nothing is read until sliced.

    Supports ``len``, ``ndim`` and ``[a:b]`` slices (which may cross shard boundaries), all that
    ``ChunkSampler`` and ``eval_batches`` need.
    """

    ndim = 1

    def __init__(self, paths: list[Path], dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        # an empty file cannot be mapped; it holds nothing anyway
        self._maps = [np.memmap(p, dtype=self.dtype, mode="r") for p in paths if p.stat().st_size]
        self._ends = np.cumsum([len(m) for m in self._maps], dtype=np.int64)  # exclusive end of each shard

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("ShardedTokens supports slices only (tokens[a:b])")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("ShardedTokens slices take no step")
        parts = []
        shard = int(np.searchsorted(self._ends, start, side="right"))
        while start < stop:
            first = int(self._ends[shard - 1]) if shard else 0
            end = min(stop, int(self._ends[shard]))
            parts.append(self._maps[shard][start - first : end - first])
            start, shard = end, shard + 1
        if len(parts) == 1:
            return np.asarray(parts[0])
        return np.concatenate(parts) if parts else np.empty(0, dtype=self.dtype)


@dataclass
class PreparedData:
    """An opened prepared folder: its sidecar, and each split as memory-mapped tokens."""

    root: Path
    meta: dict
    train: ShardedTokens
    val: ShardedTokens

    def bytes(self, split: str) -> int:
        return int(self.meta["splits"][split]["bytes"])

    @property
    def corpus_id(self) -> dict:
        """What a checkpoint records to recognise this data: a hash over both splits' tokens."""
        splits = self.meta["splits"]
        digest = hashlib.sha256("".join(splits[s]["sha256"] for s in SPLITS).encode()).hexdigest()
        return {"sha256": digest, "bytes": sum(splits[s]["bytes"] for s in SPLITS), "prepared": str(self.root)}


def read_sidecar(folder: Path) -> dict | None:
    """The sidecar of a prepared folder, or None when ``folder`` is not one."""
    path = Path(folder) / SIDECAR
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def is_prepared(path) -> bool:
    """Whether ``path`` is a folder written by ``arlm prepare``."""
    return path is not None and Path(path).is_dir() and read_sidecar(Path(path)) is not None


def looks_unfinished(folder: Path) -> bool:
    """A folder holding token shards but no sidecar: a prepare that never finished."""
    return folder.is_dir() and not is_prepared(folder) and any(folder.glob("train-*.bin"))


def open_prepared(folder) -> PreparedData:
    """Memory-map a prepared folder's shards after checking them against the sidecar."""
    root = Path(folder).expanduser()
    meta = read_sidecar(root)
    if meta is None:
        raise DataError(f"{root} is not a prepared data folder (it has no valid {SIDECAR}); run arlm prepare")
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    views = {}
    for split in SPLITS:
        paths = []
        for shard in meta["splits"][split]["shards"]:
            path = root / shard["file"]
            want = shard["tokens"] * dtype.itemsize
            have = path.stat().st_size if path.is_file() else None
            if have != want:
                raise DataError(
                    f"{path} should hold {want} bytes ({shard['tokens']} tokens), but "
                    f"{'is missing' if have is None else f'holds {have}'}; the folder is damaged: "
                    "run arlm prepare again"
                )
            paths.append(path)
        views[split] = ShardedTokens(paths, dtype)
    return PreparedData(root=root, meta=meta, train=views["train"], val=views["val"])

"""Documents from any corpus source, streamed: text files, gzip, folders, JSON lines, Parquet, saved datasets.

Every reader yields documents as UTF-8 (or raw) bytes, one at a time, in a fixed order, so the
corpus never has to fit in memory and the same source always gives the same documents.
A record (a JSON line, a Parquet or dataset row) is one document; a text file is cut into
documents of about ``doc_bytes`` bytes at line ends, so a single large file still splits into
train and validation by document.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

from arlm.data.corpus import TEXT_SUFFIXES, DataError

READ_BYTES = 1 << 20
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")
PARQUET_SUFFIXES = (".parquet",)
HF_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


def _extra(name: str, module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"reading this source needs the '{name}' extra: pip install 'arlm[{name}]'") from None


def source_kind(path: Path) -> str:
    """"hf-dataset", "parquet", "folder", "jsonl" or "text" (any other file)."""
    if path.is_dir():
        if any((path / m).is_file() for m in HF_MARKERS):
            return "hf-dataset"
        return "folder"
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return "text"


def _member(path: Path) -> bool:
    """Whether a file in a source folder is read: text, JSON lines or Parquet, not hidden."""
    name = path.name.lower()
    if name.startswith(".") or not path.is_file():
        return False
    if name.endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES):
        return True
    if name.endswith(".gz"):
        name = name[:-3]
    return Path(name).suffix in TEXT_SUFFIXES


def source_files(root: Path) -> list[Path]:
    """The files a source reads, in order: itself, or a folder's members sorted by relative path."""
    if root.is_file():
        return [root]
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder, f) for f in files if _member(Path(folder, f))]
    return sorted(found, key=lambda f: f.relative_to(root).as_posix())


def check_source(source, text_field: str) -> tuple[Path, str, list[Path]]:
    """(path, kind, files) of a usable source, or DataError saying what is wrong."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"source {path} does not exist; give a text file, a .gz, a folder of text files, a .jsonl, "
            "a Parquet file or folder, or a Hugging Face dataset saved with save_to_disk"
        )
    kind = source_kind(path)
    if kind == "hf-dataset":
        return path, kind, []
    files = source_files(path)
    if not files:
        raise DataError(
            f"source folder {path} holds no readable files (looked for {' '.join(sorted(TEXT_SUFFIXES))}, "
            f"{' '.join(JSONL_SUFFIXES)}, .parquet, each optionally gzipped)"
        )
    if not text_field:
        raise DataError("text_field must name the field that holds each document's text")
    return path, kind, files


def documents(source, text_field: str = "text", doc_bytes: int = 1 << 16) -> Iterator[bytes]:
    """Every document of ``source`` in order (empty ones skipped)."""
    path, kind, files = check_source(source, text_field)
    if kind == "hf-dataset":
        yield from _hf_dataset(path, text_field)
        return
    for file in files:
        name = file.name.lower()
        if name.endswith(JSONL_SUFFIXES):
            yield from _jsonl(file, text_field)
        elif name.endswith(PARQUET_SUFFIXES):
            yield from _parquet(file, text_field)
        else:
            yield from _text_blocks(file, doc_bytes)


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _read(stream, path: Path, size: int) -> bytes:
    try:
        return stream.read(size)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path}: {e} (is it a valid gzip file?)") from None


def _text_blocks(path: Path, doc_bytes: int) -> Iterator[bytes]:
    """A text file as documents of at least ``doc_bytes`` bytes each, cut just after a newline.

    Joined, the blocks are the file. A file with no newline in 4 * doc_bytes is cut at a UTF-8
    character boundary instead, so no block splits a character.
    """
    buf = b""
    with _open(path) as f:
        while True:
            data = _read(f, path, READ_BYTES)
            buf += data
            pos = 0  # cut blocks off the front of buf; drop them from buf once per read
            while len(buf) - pos >= doc_bytes:
                cut = buf.find(b"\n", pos + doc_bytes - 1) + 1
                if cut == 0:
                    if len(buf) - pos < 4 * doc_bytes and data:
                        break  # read more before giving up on a newline
                    cut = pos + doc_bytes
                    while pos < cut < len(buf) and buf[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte
                        cut -= 1
                    if cut == pos:
                        cut = pos + doc_bytes
                yield buf[pos:cut]
                pos = cut
            buf = buf[pos:]
            if not data:
                break
    if buf:
        yield buf


def _text_of(value, where: str, text_field: str) -> bytes:
    if not isinstance(value, str):
        raise DataError(f"{where}: field {text_field!r} holds {type(value).__name__}, not text; choose the "
                        "text field with --text-field")
    return value.encode("utf-8")


def _jsonl(path: Path, text_field: str) -> Iterator[bytes]:
    with _open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(f"{path}, line {n}: not a JSON object ({e})") from None
            if not isinstance(record, dict) or text_field not in record:
                keys = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
                raise DataError(f"{path}, line {n}: no {text_field!r} field (it has: {keys}); choose the text "
                                "field with --text-field")
            doc = _text_of(record[text_field], f"{path}, line {n}", text_field)
            if doc:
                yield doc


def _columns(names, path, text_field: str) -> None:
    if text_field not in names:
        raise DataError(f"{path} has no column {text_field!r} (it has: {', '.join(names)}); choose the text "
                        "column with --text-field")


def _parquet(path: Path, text_field: str) -> Iterator[bytes]:
    pq = _extra("datasets", "pyarrow.parquet")
    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid for a file that is not Parquet
        raise DataError(f"{path} is not a readable Parquet file ({e})") from None
    _columns(table.schema_arrow.names, path, text_field)
    for batch in table.iter_batches(batch_size=1024, columns=[text_field]):
        for value in batch.column(0).to_pylist():
            doc = _text_of(value, str(path), text_field)
            if doc:
                yield doc


def _hf_dataset(path: Path, text_field: str) -> Iterator[bytes]:
    """A dataset saved with ``save_to_disk``; a DatasetDict gives its splits in name order."""
    datasets = _extra("datasets", "datasets")
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises several types for folders it cannot read
        raise DataError(f"{path} is not a readable saved dataset ({e})") from None
    parts = [loaded[k] for k in sorted(loaded)] if isinstance(loaded, datasets.DatasetDict) else [loaded]
    for part in parts:
        _columns(part.column_names, path, text_field)
        for batch in part.select_columns([text_field]).iter(batch_size=1024):
            for value in batch[text_field]:
                doc = _text_of(value, str(path), text_field)
                if doc:
                    yield doc


def source_bytes(kind: str, files: list[Path]) -> int | None:
    """The total document bytes when known in advance (uncompressed text files), else None."""
    if kind != "text" and kind != "folder":
        return None
    if any(not _plain_text(f) for f in files):
        return None
    return sum(f.stat().st_size for f in files)


def _plain_text(path: Path) -> bool:
    name = path.name.lower()
    return not name.endswith((".gz",) + JSONL_SUFFIXES + PARQUET_SUFFIXES)

"""Where training text comes from: the built-in corpus, a file (gzip too) or a folder of files."""

from __future__ import annotations

import gzip
import os
import sysconfig
import zlib
from pathlib import Path


class DataError(ValueError):
    """The corpus or its split is unusable; the message says why and what to do."""


# Pure-Python standard-library modules present on CPython 3.10 to 3.13, read in this order.
DEFAULT_MODULES = (
    "argparse.py",
    "ast.py",
    "bisect.py",
    "calendar.py",
    "collections/__init__.py",
    "configparser.py",
    "contextlib.py",
    "dataclasses.py",
    "difflib.py",
    "enum.py",
    "fractions.py",
    "functools.py",
    "heapq.py",
    "inspect.py",
    "ipaddress.py",
    "json/decoder.py",
    "json/encoder.py",
    "logging/__init__.py",
    "pickle.py",
    "pprint.py",
    "random.py",
    "shlex.py",
    "statistics.py",
    "string.py",
    "textwrap.py",
    "tokenize.py",
    "typing.py",
)
DEFAULT_CORPUS_DESCRIPTION = (
    "The built-in corpus is about 1.3 MB of Python source: some 25 modules of the running "
    "interpreter's own standard library (argparse, difflib, enum, inspect, typing, ...), "
    "so it exists offline on any machine with Python installed."
)
DEFAULT_NAMES = (None, "default", "builtin")
TEXT_SUFFIXES = frozenset(
    ".txt .md .rst .text .tex .html .xml .json .csv .yaml .yml "
    ".py .c .h .js .ts .rs .go .java".split()
)
_TARGET_BYTES = 1_200_000
_MIN_DEFAULT_BYTES = 200_000


def load_corpus(path: str | os.PathLike | None = None) -> bytes:
    """The corpus as bytes.

    ``None``, "default" or "builtin": the built-in corpus (see ``DEFAULT_CORPUS_DESCRIPTION``).
    A file: its bytes, decompressed if it ends in ``.gz``. A folder: its text files
    (``TEXT_SUFFIXES``, optionally gzipped) in sorted path order, skipping hidden ones,
    joined by newlines.
    """
    if path is None or (isinstance(path, str) and path in DEFAULT_NAMES):
        return default_corpus()
    where = Path(path).expanduser()
    if where.is_dir():
        files = _text_files(where)
        if not files:
            raise DataError(
                f"corpus {where} is empty: the folder holds no text files "
                f"(looked for {' '.join(sorted(TEXT_SUFFIXES))}, or those + .gz)"
            )
        data = b"\n".join(_read_file(f) for f in files)
    elif where.is_file():
        data = _read_file(where)
    elif where.exists():  # /dev/null, a pipe, a socket: nothing to train on, and not "missing" either
        raise DataError(
            f"corpus {where} is not a regular file or folder (a device, pipe or socket); give a text "
            "file, a .gz, a folder of text files, or 'default' for the built-in corpus"
        )
    else:
        raise DataError(
            f"corpus {where} does not exist; give a text file, a folder of text files, "
            "or 'default' for the built-in corpus"
        )
    if not data:
        raise DataError(f"corpus {where} is empty; point data.path at some text")
    return data


def default_corpus() -> bytes:
    """The built-in corpus: standard-library sources, the same for a given Python version."""
    root = stdlib_dir()
    parts: list[bytes] = []
    size = 0

    def add(name: str) -> None:
        nonlocal size
        part = f"\n# ---- {name} ----\n".encode() + (root / name).read_bytes()
        parts.append(part)
        size += len(part)

    for name in DEFAULT_MODULES:
        if size >= _TARGET_BYTES:
            break
        if (root / name).is_file():
            add(name)
    if size < _MIN_DEFAULT_BYTES and root.is_dir():  # a stripped install: take any sources
        for file in sorted(root.glob("*.py")):
            if size >= _TARGET_BYTES:
                break
            if file.name not in DEFAULT_MODULES:
                add(file.name)
    if not parts:
        raise DataError(
            f"the built-in corpus needs the Python standard library sources, but {root} has "
            "no .py files; set data.path to a text file or folder instead"
        )
    return b"".join(parts)


def stdlib_dir() -> Path:
    """The folder holding the running interpreter's standard-library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def _is_text(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return Path(name).suffix in TEXT_SUFFIXES


def _text_files(root: Path) -> list[Path]:
    """Regular, non-hidden text files under ``root``, sorted by relative path."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            file = Path(folder, name)
            if not name.startswith(".") and _is_text(file) and file.is_file():
                found.append(file)
    return sorted(found, key=lambda f: f.relative_to(root).as_posix())


def _read_file(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"corpus file {path} is not a valid gzip file ({e})") from None
    return data

"""Replace a file whole: temporary file in the same folder, fsync, rename; never half a file."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    try:
        fsync_path(path)
    except OSError:  # some platforms/filesystems cannot fsync a directory; the rename is still atomic
        pass


def disk_full_hint(e: BaseException) -> str:
    return "the disk is full; " if getattr(e, "errno", None) == errno.ENOSPC else ""


def write_atomic(path: str | Path, data: str | bytes | Callable[[Path], object]) -> Path:
    """Replace ``path`` with ``data`` (text, bytes, or a function that writes the file it is given).

    The data goes to ``.NAME.tmp-PID`` beside ``path``, is fsynced and renamed over ``path``
    (``os.replace`` is atomic within a folder). On any failure the temporary file is removed,
    ``path`` keeps its old content, and ``OSError`` names ``path`` (and says when the disk is full).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        fsync_path(tmp)
        os.replace(tmp, path)
    except Exception as e:  # OSError, and what tokenizers / torch raise for an I/O failure under them
        tmp.unlink(missing_ok=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        err = OSError(f"cannot write {path}: {reason}; {disk_full_hint(e)}the previous {path.name} is intact")
        err.errno = getattr(e, "errno", None) or errno.EIO  # kept for callers; the message reads without "[Errno N]"
        raise err from e
    fsync_dir(path.parent)
    return path

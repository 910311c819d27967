"""Atomic file writes (standard library only: the schedule reader must not import torch)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Iterable


def atomic_write_text(path: str | os.PathLike, chunks: Iterable[str]) -> Path:
    """Write ``chunks`` to ``path`` through a temporary file in the same folder, then ``os.replace`` it.

    A crash or an exception mid-write leaves the previous file intact and no temporary file behind. The
    file's permissions follow the umask. Creates missing parent folders. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fp:
            for chunk in chunks:
                fp.write(chunk)
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path

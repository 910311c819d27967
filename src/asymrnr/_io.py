"""Safe file writes (standard library only: the schedule reader must not import torch).

* :func:`atomic_write_text` / :func:`atomic_write_bytes`: write through a temporary file in the target's
  folder, then ``os.replace`` it over the target.
* :func:`exclusive_temp`: a new, empty temporary file next to a target, for writers that need a path
  (h5py); the caller renames it into place or removes it.
* :func:`check_output_path`: refuse an output that is one of the command's inputs, or that exists and is
  not a regular file (a device, a FIFO, ``/dev/stdout``, a folder).
* :func:`folder_lock`: one writer at a time into a folder (``fcntl.flock`` on a lock file inside it).

Every temporary file has an unpredictable name and is created exclusively (``O_CREAT | O_EXCL``, which
also refuses a symbolic link planted at that name), so nothing prepared in the folder beforehand is
followed or overwritten.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .errors import AsymRnRError

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


class OutputPathError(AsymRnRError, ValueError):
    """An output path that must not be written: one of the command's inputs, or not a regular file."""


class FolderLockedError(AsymRnRError):
    """Another process holds the lock of a folder (see :func:`folder_lock`)."""


def _kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


#: Folders of device and process files: ``/dev/stdout`` or ``/proc/self/fd/1`` may lead to a regular file
#: (stdout redirected), but renaming over them would replace the link itself.
_SYSTEM_DIRS = ("/dev", "/proc")


def _in_system_dir(path: Path) -> bool:
    for candidate in (os.path.abspath(path), os.path.realpath(path)):
        if any(candidate == d or candidate.startswith(d + os.sep) for d in _SYSTEM_DIRS):
            return True
    return False


def _refuse_special(path: Path) -> None:
    """Raise OutputPathError when ``path`` exists (following links) and is not a regular file, or lies in
    /dev or /proc."""
    if _in_system_dir(path):
        raise OutputPathError(
            f"cannot write {path}: it is a device or process file (under {' or '.join(_SYSTEM_DIRS)}), not a "
            "regular file; choose a file path"
        )
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # a file in the way of its folder is reported by callers
        return
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        what = _kind_of(st.st_mode)
        raise OutputPathError(
            f"cannot write {path}: it exists and is {what}, not a regular file; choose a file path"
            + (" inside that folder" if stat.S_ISDIR(st.st_mode) else "")
        )


def temp_name(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """An unpredictable sibling name of ``path`` (hidden, ``.<name>.<random><suffix>``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}{suffix}")


def exclusive_temp(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """Create a new, empty file with an unpredictable name in ``path``'s folder (``O_EXCL``) and return it.

    The caller owns it: rename it over the target when complete (``os.replace``), or unlink it.
    """
    for _ in range(16):
        tmp = temp_name(path, suffix)
        try:
            os.close(os.open(tmp, _OPEN_FLAGS, 0o666))
        except FileExistsError:  # pragma: no cover - 64 random bits
            continue
        return tmp
    raise FileExistsError(f"could not create a temporary file next to {path}")  # pragma: no cover


def _atomic_write(path: str | os.PathLike, chunks: Iterable, binary: bool) -> Path:
    path = Path(path)
    _refuse_special(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(16):
        tmp = temp_name(path)
        try:
            fd = os.open(tmp, _OPEN_FLAGS, 0o666)
        except FileExistsError:  # pragma: no cover - 64 random bits
            continue
        break
    else:  # pragma: no cover
        raise FileExistsError(f"could not create a temporary file next to {path}")
    try:
        if binary:
            fp = os.fdopen(fd, "wb")
        else:
            fp = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        with fp:
            for chunk in chunks:
                fp.write(chunk)
            fp.flush()
            os.fsync(fp.fileno())
        _refuse_special(path)  # it may have become a device or FIFO meanwhile
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, chunks: Iterable[str]) -> Path:
    """Write ``chunks`` (UTF-8 text) to ``path`` through a temporary file in the same folder, then
    ``os.replace`` it.

    A crash or an exception mid-write leaves the previous file intact and no temporary file behind. The
    temporary file has an unpredictable name and is created exclusively. An existing ``path`` that is not
    a regular file (a folder, a device, a FIFO) is refused with OutputPathError instead of being replaced.
    The file's permissions follow the umask. Creates missing parent folders. Returns the path.
    """
    return _atomic_write(path, chunks, binary=False)


def atomic_write_bytes(path: str | os.PathLike, chunks: Iterable[bytes]) -> Path:
    """:func:`atomic_write_text` for bytes."""
    return _atomic_write(path, chunks, binary=True)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
        return os.path.samestat(os.stat(a), os.stat(b))
    except (OSError, ValueError):
        return False


def check_output_path(
    path: str | os.PathLike,
    *,
    inputs: Sequence[str | os.PathLike | None] = (),
    option: str | None = None,
) -> Path:
    """Check, before any work, that the command may write ``path``; return it as a Path.

    Refused with OutputPathError: ``path`` is one of ``inputs`` (same resolved path, or the same file
    through another name: same device and inode); ``path`` exists and is not a regular file (a folder, a
    device, a FIFO such as ``/dev/stdout``, a socket); its folder exists but is a file, or is not writable.
    ``option`` names the option in messages (e.g. ``-o``). ``None`` entries of ``inputs`` are skipped.
    """
    path = Path(path)
    where = f" ({option})" if option else ""
    for given in inputs:
        if given is None:
            continue
        if _same_file(path, Path(given)):
            raise OutputPathError(
                f"the output{where} {path} is also an input of this command ({given}); writing it would destroy "
                "that input: choose another output path"
            )
    _refuse_special(path)
    parent = path.parent
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputPathError(f"cannot write {path}{where}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {path}{where}: the folder {probe} is not writable; choose another path")
    return path


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, name: str = ".asymrnr.lock", *, what: str = "another asymrnr process",
                fix: str = "wait for it to finish, or choose another folder") -> Iterator[Path]:
    """Hold an exclusive, non-blocking lock on ``folder`` for the ``with`` block.

    The lock is ``fcntl.flock`` on ``folder/name``, created if needed (never through a symbolic link) and
    removed on exit. When another process holds it, FolderLockedError is raised at once, naming ``what``
    holds it and the ``fix``. Yields the lock file's path.
    """
    import errno
    import fcntl

    path = Path(folder) / name
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(8):
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OutputPathError(f"{path} is a symbolic link; remove it (asymrnr's lock file is a plain file)") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderLockedError(f"{what} is writing into {path.parent} (it holds the lock {path}); {fix}") from None
        except BaseException:
            os.close(fd)
            raise
        # Its previous holder may have removed the file between our open and our lock: then we hold a lock
        # on a file nobody else will open; try again with the file now at that path.
        try:
            current = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(current, os.fstat(fd)):
            break
        os.close(fd)
    else:  # pragma: no cover - a lock file replaced again and again
        raise FolderLockedError(f"{what} keeps replacing {path}; {fix}")
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


__all__ = [
    "OutputPathError",
    "FolderLockedError",
    "atomic_write_text",
    "atomic_write_bytes",
    "exclusive_temp",
    "temp_name",
    "check_output_path",
    "folder_lock",
]

"""Atomic file and folder writes: a reader never sees a half-written output, even after ``kill -9``."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

PARTIAL_TAG = ".partial-"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem, dot, ext = path.name.partition(".")
    # keep the extension last: SimpleITK and nibabel pick their format from it
    tmp = path.with_name(f"{stem}{PARTIAL_TAG}{uuid.uuid4().hex[:8]}{dot}{ext}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{PARTIAL_TAG}{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def remove_partials(folder: str | Path) -> list[Path]:
    """Delete leftovers of interrupted atomic writes under ``folder``; returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.exists():
        return removed
    for p in sorted(folder.rglob(f"*{PARTIAL_TAG}*")):
        if not p.exists():
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
        removed.append(p)
    return removed


@contextlib.contextmanager
def exclusive_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder/.medue.lock`` exclusively for the block; a second holder gets BlockingIOError at once.

    The lock is an OS advisory lock (``flock``), released by the kernel when the process dies, so a kill -9
    never leaves a stale lock behind. The holder removes the file when it is done; a run that took the lock of a
    file another holder had just removed (a different inode than the path's now) is refused like any second holder.
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".medue.lock"
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            if not path.exists() or os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino:
                raise BlockingIOError("the lock file was replaced by another run")
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            try:
                yield
            finally:
                path.unlink(missing_ok=True)
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

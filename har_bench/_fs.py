"""Crash-safe file writes, shared by run artifacts, checkpoints, caches and downloads.

Standard library only, so data loaders and the CLI can use it without heavy imports.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """``write(tmp)``, fsync, then rename over ``path``: readers see the old file or the new one.

    The temp file sits in the same folder (a rename across filesystems is not atomic), has a
    unique name (concurrent writers never share one) and keeps ``path``'s suffix (matplotlib
    and numpy pick the format from it). Without the fsync a power cut after the rename can
    leave an empty file under the final name. On any error the temp file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=path.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        # mkstemp creates 0600; run dirs are shared with collaborators, so use ordinary
        # file permissions (or keep those of the file being replaced).
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else _default_mode())
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_MODE: int | None = None


def _default_mode() -> int:
    # The umask can only be read by setting it; done once, before any worker threads write.
    global _MODE
    if _MODE is None:
        mask = os.umask(0o022)
        os.umask(mask)
        _MODE = 0o666 & ~mask
    return _MODE


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _lock_path(path: str | os.PathLike[str]) -> Path:
    # In the system temp dir, so data caches and run dirs hold nothing but their files. Locks
    # coordinate the processes of one machine.
    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:24]
    lock_dir = Path(tempfile.gettempdir()) / "har_bench-locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    return lock_dir / f"{key}.lock"


@contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock named after ``path`` for the block, waiting for it if needed.

    Parallel sweep jobs on a fresh cache all want the same download and extraction; the first
    does it while the others wait, then find it done. Advisory (``flock``); a no-op where
    ``fcntl`` does not exist (Windows).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(_lock_path(path), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_held: dict[Path, int] = {}


def hold_lock(path: str | os.PathLike[str]) -> bool:
    """Take an exclusive lock named after ``path`` for the rest of this process's life.

    False at once when another process holds it; True when this process now holds it (or
    already did). The OS drops it when the process ends, SIGKILL included, so no stale lock
    is ever left behind. Used to keep two processes from training into one run directory.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return True
    lock = _lock_path(path)
    if lock in _held:
        return True
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _held[lock] = fd
    return True


def release_lock(path: str | os.PathLike[str]) -> None:
    """Give up a lock taken with :func:`hold_lock` (a sweep runs many jobs in one process)."""
    fd = _held.pop(_lock_path(path), None)
    if fd is not None:
        os.close(fd)

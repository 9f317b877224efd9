"""Crash-safe file writes, shared by run artifacts, checkpoints, caches and downloads.

Standard library only, so data loaders and the CLI can use it without heavy imports.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from har_bench.core.errors import UserError

log = logging.getLogger(__name__)

# What the machine, not har-bench or its input, refuses: a full disk, a quota, a read-only or
# failing filesystem. Such a write failure ends a run as failed with one line, no traceback.
STORAGE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EDQUOT", "EROFS", "EFBIG", "EIO")
    if hasattr(errno, name)  # EDQUOT: not on Windows
)


def storage_failure(e: BaseException, where: str | os.PathLike[str] = "") -> str | None:
    """``cannot write FILE: CAUSE`` when ``e`` is a write the machine refused, else None;
    ``where`` (a folder) stands in for an error that names no file."""
    if not isinstance(e, OSError) or e.errno not in STORAGE_ERRNOS:
        return None
    cause = e.strerror or os.strerror(e.errno or 0)
    if e.filename:
        return f"cannot write {e.filename}: {cause}"
    return f"cannot write in {where}: {cause}" if where else f"cannot write: {cause}"


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """``write(tmp)``, fsync, then rename over ``path``: readers see the old file or the new one.

    The temp file sits in the same folder (a rename across filesystems is not atomic), has a
    unique name (concurrent writers never share one) and keeps ``path``'s suffix (matplotlib
    and numpy pick the format from it). Without the fsync a power cut after the rename can
    leave an empty file under the final name. On any error the temp file is removed; temp
    files that a killed process left behind are removed by a later write of the same file.

    An OSError names ``path`` (not the temp file), so a full disk reads as
    ``[Errno 28] No space left on device: '.../last.pt'``. Inside a directory given to
    :func:`confine_writes`, a write that a symbolic link would lead out of it is refused.
    """
    path = Path(path)
    _check_confined(path)
    try:
        _write_and_replace(path, write)
    except OSError as e:
        if e.errno is None or e.filename == str(path):
            raise
        # OSError(errno, ...) is the matching subclass (PermissionError for EACCES, ...).
        raise OSError(e.errno, e.strerror, str(path)) from e


def _write_and_replace(path: Path, write: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        # mkstemp creates 0600; run dirs are shared with collaborators, so use ordinary
        # file permissions (or keep those of the file being replaced).
        # Filesystems without permissions (vfat, some CIFS mounts) refuse chmod: no matter.
        with contextlib.suppress(OSError):
            os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else _default_mode())
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # On a read-only filesystem the unlink fails too; the write's own error is the one
        # to report.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


_STALE_SECONDS = 3600  # no write of one artifact takes this long


def _remove_stale_temps(path: Path) -> None:
    # A SIGKILL or power cut between mkstemp and the rename leaves ".<name>.XXXX<suffix>".
    now = time.time()
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_SECONDS:
                tmp.unlink()
        except OSError:
            pass


_MODE: int | None = None


def _default_mode() -> int:
    global _MODE
    if _MODE is None:
        mask = None
        try:  # Linux: read the umask without changing it (other threads may be creating files)
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("Umask:"):
                    mask = int(line.split()[1], 8)
        except (OSError, ValueError):
            pass
        if mask is None:
            mask = os.umask(0o022)
            os.umask(mask)
        _MODE = 0o666 & ~mask
    return _MODE


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# -- no writes through links out of a run directory -------------------------------------------


class LinkOutError(UserError):
    """A symbolic link would take a write out of a run directory (into someone's files)."""

    def __init__(self, what: Path, target: str, root: str | os.PathLike[str]) -> None:
        super().__init__(
            f"{what} leads through a symbolic link to {target}, outside the run directory "
            f"{root}; har-bench does not write through such links: remove the link"
        )


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def refuse_links_out(root: str | os.PathLike[str]) -> None:
    """Raise :class:`LinkOutError` for a symbolic link at or below ``root`` that leads out of it.

    A planted ``train.log -> ~/.bashrc`` or ``checkpoints -> /elsewhere`` would otherwise have
    the run append to or write into whatever the link names. Links that stay inside are fine.
    """
    real_root = os.path.realpath(root)
    # followlinks=False: a linked folder is looked at, never entered.
    for folder, dirs, files in os.walk(real_root):
        for name in (*dirs, *files):
            entry = os.path.join(folder, name)
            if os.path.islink(entry):
                target = os.path.realpath(entry)
                if not _inside(target, real_root):
                    raise LinkOutError(Path(entry), target, root)


_confined: dict[str, str] = {}  # a run directory (absolute, as given) -> its real path


def confine_writes(root: str | os.PathLike[str]) -> None:
    """Refuse links out of ``root`` now (:func:`refuse_links_out`) and, until
    :func:`release_writes`, every :func:`atomic_write` below ``root`` that one planted later
    would lead out of it."""
    refuse_links_out(root)
    _confined[os.path.abspath(root)] = os.path.realpath(root)


def release_writes(root: str | os.PathLike[str]) -> None:
    _confined.pop(os.path.abspath(root), None)


def _check_confined(path: Path) -> None:
    where = os.path.abspath(path)
    for given, real in _confined.items():
        if _inside(where, given) or _inside(where, real):
            # The folder the temp file and the rename go to; the final name itself may be a
            # link, which os.replace replaces rather than follows.
            folder = os.path.realpath(os.path.dirname(where))
            if not _inside(folder, real):
                raise LinkOutError(path, folder, given)


def open_append_no_follow(
    path: str | os.PathLike[str], encoding: str | None = None, errors: str | None = None
) -> TextIO:
    """``open(path, "a")`` that refuses (ELOOP) when ``path`` is a symbolic link, for logs that
    are appended to in place."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o666)
    return open(fd, "a", encoding=encoding, errors=errors)


def _lock_path(path: str | os.PathLike[str]) -> Path | None:
    """The lock file for ``path``, or None (with a warning) where locks cannot be made.

    Locks live in a per-user folder of the system temp dir, so data caches and run dirs hold
    nothing but their files and another user's folder can neither block nor break ours. They
    coordinate the processes of one user on one machine.
    """
    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:24]
    uid = os.getuid() if hasattr(os, "getuid") else 0
    lock_dir = Path(tempfile.gettempdir()) / f"har_bench-locks-{uid}"
    try:
        lock_dir.mkdir(mode=0o700, exist_ok=True)
        if hasattr(os, "getuid") and lock_dir.stat().st_uid != uid:
            raise PermissionError(f"{lock_dir} belongs to another user")
    except OSError as e:
        _warn_once(
            f"file locks unavailable ({e}); concurrent har-bench processes are not coordinated"
        )
        return None
    return lock_dir / f"{key}.lock"


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


@contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock named after ``path`` for the block, waiting for it if needed.

    Parallel sweep jobs on a fresh cache all want the same download and extraction; the first
    does it while the others wait, then find it done. Advisory (``flock``); a no-op where
    ``fcntl`` does not exist (Windows) or no lock file can be made.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock = _lock_path(path)
    if lock is None:
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_held: dict[Path, int] = {}


def hold_lock(path: str | os.PathLike[str]) -> bool:
    """Take an exclusive lock named after ``path`` for the rest of this process's life.

    False at once when another process holds it; True when this process now holds it (or
    already did, or locks are unavailable here). The OS drops it when the process ends,
    SIGKILL included, so no stale lock is ever left behind. Used to keep two processes from
    training into one run directory.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return True
    lock = _lock_path(path)
    if lock is None:
        return True
    if lock in _held:
        return True
    try:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
    except OSError as e:
        _warn_once(f"cannot create lock file {lock} ({e}); run dirs are not locked")
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _held[lock] = fd
    return True


def release_lock(path: str | os.PathLike[str]) -> None:
    """Give up a lock taken with :func:`hold_lock` (a sweep runs many jobs in one process)."""
    lock = _lock_path(path)
    fd = _held.pop(lock, None) if lock is not None else None
    if fd is not None:
        os.close(fd)

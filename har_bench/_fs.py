"""Crash-safe file writes, shared by run artifacts, checkpoints, caches and downloads.

Standard library only, so data loaders and the CLI can use it without heavy imports.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
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

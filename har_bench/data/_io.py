"""File helpers shared by the loaders: compressed text, locating official files, the parsed-array
cache, and archive extraction beyond plain zips (tar.gz)."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import logging
import lzma
import os
import shutil
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import numpy as np

from har_bench._fs import atomic_write, atomic_write_text, file_lock

from .download import _check_member_name, download, extract_zip, filename_from_url

log = logging.getLogger("har_bench.data")

COMPRESSED_SUFFIXES = (".gz", ".xz", ".bz2")


def open_text(path: Path) -> IO[str]:
    """Open plain, ``.gz``, ``.xz`` or ``.bz2`` text (undecodable bytes replaced, not fatal)."""
    opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(path.suffix)
    if opener is None:
        return open(path, encoding="utf-8", errors="replace")
    return opener(path, "rt", encoding="utf-8", errors="replace")


def read_text(path: Path) -> str:
    try:
        with open_text(path) as f:
            return f.read()
    except (OSError, EOFError, lzma.LZMAError) as e:  # truncated/corrupt compressed file
        raise ValueError(f"{path}: cannot be read ({e})") from e


def find_file(folder: Path, name: str, what: str, hint: str = "") -> Path:
    """``folder/name`` or its ``.gz``/``.xz``/``.bz2`` twin; a FileNotFoundError naming every
    name tried otherwise."""
    for candidate in (name, *(name + s for s in COMPRESSED_SUFFIXES)):
        p = folder / candidate
        if p.is_file():
            return p
    msg = f"{what} file not found: looked for {name!r} (or .gz/.xz/.bz2) in {folder}"
    if not folder.is_dir():
        msg += " (that folder does not exist)"
    if hint:
        msg += f"; {hint}"
    raise FileNotFoundError(msg)


def strip_compression(name: str) -> str:
    for s in COMPRESSED_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def cache_key(paths: Iterable[Path], *extra: object) -> str:
    """Size + mtime of every source file plus the parsing options: any edit, replacement or
    option change gives a new key, without hashing hundreds of MB on every load."""
    entries = []
    for p in paths:
        st = p.stat()
        entries.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    blob = json.dumps([entries, [repr(e) for e in extra]]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_cache(path: Path | None, keys: Iterable[str]) -> dict[str, np.ndarray] | None:
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in keys}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # an unreadable cache is a miss; it is rewritten


def save_cache(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    """Atomic (temp file + rename), uncompressed: loading speed is the point of the cache."""
    try:
        atomic_write(path, lambda tmp: np.savez(tmp, **arrays))
    except OSError as e:
        warnings.warn(f"could not write cache {path}: {e}", stacklevel=3)
        return False
    return True


def extract_tar(archive: Path, dest_dir: Path, member_root: str) -> Path:
    """Extract ``member_root/`` of a tar(.gz) archive to ``dest_dir/member_root``, atomically
    (temp dir + rename) and refusing unsafe members (absolute paths, '..', links), like
    :func:`har_bench.data.download.extract_zip` does for zips."""
    archive, dest_dir = Path(archive), Path(dest_dir)
    stamp_file = dest_dir / f".{member_root.strip('/')}.extracted.json"
    # Parallel sweep jobs: one extracts, the others wait and then find the stamp current.
    with file_lock(stamp_file):
        return _extract_tar_locked(archive, dest_dir, member_root, stamp_file)


def _extract_tar_locked(archive: Path, dest_dir: Path, member_root: str, stamp_file: Path) -> Path:
    target = dest_dir / member_root.strip("/")
    st = archive.stat()
    stamp = {"archive": str(archive.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        if target.is_dir() and json.loads(stamp_file.read_text(encoding="utf-8")) == stamp:
            return target
    except (OSError, ValueError):
        pass
    if not tarfile.is_tarfile(archive):
        raise ValueError(f"{archive} is not a tar archive")
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest_dir))
    prefix = member_root.strip("/") + "/"
    try:
        with tarfile.open(archive) as tf:
            found = False
            for m in tf.getmembers():
                _check_member_name(m.name, str(archive))
                if not m.name.startswith(prefix) or not (m.isfile() or m.isdir()):
                    continue  # links and devices are never extracted
                found = True
                out = tmp / m.name
                if m.isdir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                assert src is not None
                with src, open(out, "wb") as f:
                    shutil.copyfileobj(src, f)
        if not found:
            raise FileNotFoundError(f"tar archive {archive} has no folder {member_root!r}")
        if target.exists():
            os.replace(target, tmp / ".old")
        os.replace(tmp / member_root.strip("/"), target)
        atomic_write_text(stamp_file, json.dumps(stamp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_choice(key: str, value: object, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{key}={value!r} is invalid: expected one of {', '.join(choices)}")
    return str(value)


def dataset_root(
    root: str | os.PathLike[str] | None,
    workdir: Path,
    url: str,
    sha256: str | None,
    progress: bool,
    *,
    default_name: str,
    what: str,
    hint: str,
    file_name: str | None = None,
) -> Path:
    """``dataset.root`` as an existing path, or (root None) the official archive downloaded
    into ``workdir`` and checked against ``sha256``, as ``file_name`` (default: the URL's
    file name, else ``default_name``). ``what`` names the dataset in errors."""
    if root is None:
        name = file_name or filename_from_url(url, default_name)
        return download(url, workdir / name, sha256, progress=progress)
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what} root {path} does not exist; {hint}")
    return path


def extract_archive(archive: Path, workdir: Path, member_root: str, what: str, hint: str) -> Path:
    """``member_root/`` of a zip or tar(.gz) archive, extracted once into ``workdir``."""
    if zipfile.is_zipfile(archive):
        return extract_zip(archive, workdir, member_root)
    if tarfile.is_tarfile(archive):
        return extract_tar(archive, workdir, member_root)
    raise ValueError(f"{what}: {archive} is not a zip or tar archive; {hint}")

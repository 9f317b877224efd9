"""Plumbing shared by the loaders: compressed text, strict tables, locating the dataset folder
(downloaded, extracted or given), the parsed-array cache, and config-value checks."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import math
import os
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
from numpy.typing import DTypeLike

from har_bench.core.download import download, filename_from_url
from har_bench.core.errors import MissingInputError, UserError
from har_bench.core.fs import atomic_write
from har_bench.data.archives import extract_archive

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
        raise UserError(f"{path}: cannot be read ({e})") from e


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
    raise MissingInputError(msg)


def strip_compression(name: str) -> str:
    for s in COMPRESSED_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def read_table(
    path: Path, ncols: int, dtype: DTypeLike = np.float64, allow_nan: bool = False
) -> np.ndarray:
    """A whitespace-separated table of exactly ``ncols`` columns, plain or compressed text.

    Every value must be finite: a ``nan`` or ``inf`` sample would only show up as a diverged
    run. ``allow_nan`` admits NaN (a recording's gaps, which the loader fills) but not inf.

    pandas' C parser reads compressed files directly and releases the GIL, so UCI-HAR's 18
    signal files parse in parallel threads, faster than a serial np.loadtxt. It is lenient where
    we must not be (a short row is padded with NaN), so a file it rejects, or with a value that
    is not finite (unless each NaN is a "nan" token of the text, as PAMAP2 has many, and NaN is
    allowed), goes through a strict pass whose error names the line.
    """
    try:
        with np.errstate(over="ignore"):  # a float32 overflow becomes inf, refused below
            arr = pd.read_csv(path, sep=r"\s+", header=None, dtype=dtype, engine="c").to_numpy()
    except (ValueError, OSError, EOFError, lzma.LZMAError):  # ParserError is a ValueError
        return _read_table_strict(path, ncols, dtype, allow_nan)
    if arr.ndim != 2 or arr.shape[1] != ncols:
        return _read_table_strict(path, ncols, dtype, allow_nan)
    if (
        arr.dtype.kind == "f"
        and not np.isfinite(arr).all()
        and (not allow_nan or np.isinf(arr).any() or _count_tokens(path) != arr.size)
    ):
        return _read_table_strict(path, ncols, dtype, allow_nan)
    return np.ascontiguousarray(arr, dtype=dtype)


def _read_table_strict(path: Path, ncols: int, dtype: DTypeLike, allow_nan: bool) -> np.ndarray:
    convert = int if np.dtype(dtype).kind in "iu" else float
    kind = "an integer" if convert is int else "a number"
    rows: list[list] = []
    linenos: list[int] = []
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue  # pandas skips blank lines too
        if len(tokens) != ncols:
            raise UserError(f"{path}, line {lineno}: expected {ncols} values, found {len(tokens)}")
        try:
            row = [convert(t) for t in tokens]
        except ValueError:
            bad = next(t for t in tokens if not _converts(convert, t))
            raise UserError(f"{path}, line {lineno}: {bad!r} is not {kind}") from None
        if convert is float:
            for token, value in zip(tokens, row, strict=True):
                if not math.isfinite(value) and not (allow_nan and math.isnan(value)):
                    raise UserError(
                        f"{path}, line {lineno}: {token!r} is not a finite number"
                        + ("" if allow_nan else " (a missing sample?)")
                    )
        rows.append(row)
        linenos.append(lineno)
    if not rows:
        raise UserError(f"{path}: no data rows")
    with np.errstate(over="ignore"):
        arr = np.asarray(rows, dtype=dtype).reshape(len(rows), ncols)
    if arr.dtype.kind == "f" and np.isinf(arr).any():  # a finite value beyond float32's range
        lineno = linenos[int(np.flatnonzero(np.isinf(arr).any(axis=1))[0])]
        raise UserError(f"{path}, line {lineno}: a value is out of range for {arr.dtype}")
    return arr


def _converts(convert: type, token: str) -> bool:
    try:
        convert(token)
    except ValueError:
        return False
    return True


def _count_tokens(path: Path) -> int:
    """Whitespace-separated tokens in the file, vectorised over its bytes."""
    b = np.frombuffer(read_text(path).encode("utf-8", errors="replace"), dtype=np.uint8)
    if not len(b):
        return 0
    ws = (b == 32) | (b == 9) | (b == 10) | (b == 13)
    starts = ~ws & np.r_[True, ws[:-1]]
    return int(np.count_nonzero(starts))


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


def check_choice(key: str, value: object, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise UserError(f"{key}={value!r} is invalid: expected one of {', '.join(choices)}")
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
        raise MissingInputError(f"{what} root {path} does not exist; {hint}")
    return path


@dataclass(frozen=True)
class Layout:
    """Where one dataset sits in its official archive, and what marks its folder.

    ``member_root``: the archive's folder to extract (also looked for inside a root folder).
    ``marker``: an entry every dataset folder holds, ``name/`` for a folder; a root that *is*
    the marker (``raw/``, the one data file) stands for the folder holding it. ``files``:
    extract only these base names, wherever they sit in the archive, into ``member_root/``.
    ``archive_name``: the download's file name when the URL path has none.
    """

    what: str  # the dataset's name in errors
    member_root: str
    marker: str
    archive_name: str
    hint: str  # what dataset.root may be, appended to every error about it
    files: tuple[str, ...] = ()


def resolve_root(
    root: str | os.PathLike[str] | None,
    workdir: Path,
    url: str,
    sha256: str | None,
    progress: bool,
    layout: Layout,
    file_name: str | None = None,
) -> tuple[Path, Path | None]:
    """The dataset folder, and the archive it was extracted from (None for a folder root).

    ``root`` None downloads ``url`` into ``workdir`` (as ``file_name``, default: the URL's)
    and checks it against ``sha256``; an archive (zip or tar) is extracted once into
    ``workdir``; a folder is used as it is, or its ``member_root/`` when it does not hold the
    marker itself.
    """
    path = dataset_root(
        root,
        workdir,
        url,
        sha256,
        progress,
        default_name=layout.archive_name,
        what=layout.what,
        hint=layout.hint,
        file_name=file_name,
    )
    marker = layout.marker.rstrip("/")
    archive = None
    if path.is_file() and strip_compression(path.name) != marker:
        archive = path
        path = extract_archive(
            path, workdir, layout.member_root, layout.what, layout.hint, files=layout.files
        )
    if strip_compression(path.name) == marker and not _holds(path, layout.marker):
        path = path.parent
    elif not _holds(path, layout.marker) and (path / layout.member_root).is_dir():
        path = path / layout.member_root
    if not layout.marker.endswith("/"):
        find_file(path, layout.marker, layout.what, layout.hint)  # raises, naming the file
    elif not _holds(path, layout.marker):
        raise MissingInputError(f"{layout.what} folder {path} has no {marker}/; {layout.hint}")
    return path, archive


def _holds(folder: Path, marker: str) -> bool:
    if marker.endswith("/"):
        return (folder / marker).is_dir()
    return any((folder / (marker + s)).is_file() for s in ("", *COMPRESSED_SUFFIXES))

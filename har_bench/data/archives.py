"""Crash-safe, once-only extraction of dataset archives (zip and tar, compressed or not).

Nothing here knows about a particular dataset: loaders name the folder (or the files) they
need. Three invariants matter more than speed:

* nothing lands outside the destination: absolute or ``..`` member names are refused, links
  and devices are never extracted;
* an extracted folder only ever appears complete: members go to a temp dir inside the
  destination, which is renamed into place;
* a stamp beside the folder records which archive (path, size, mtime) and which members
  produced it, so a repeated call is free and a changed archive is extracted again. Parallel
  sweep jobs take a lock named after the stamp: one extracts, the others find the stamp current.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Collection, Iterable
from pathlib import Path, PurePosixPath
from typing import IO

from har_bench.core.errors import UserError
from har_bench.core.fs import atomic_write_text, file_lock

# A zip nested deeper than this is not a dataset layout but a zip bomb or a mistake.
MAX_NESTING = 3


def check_member_name(name: str, archive: str) -> None:
    """Reject zip-slip members: absolute paths, drive letters or '..' components."""
    norm = name.replace("\\", "/")
    parts = PurePosixPath(norm).parts
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or ".." in parts:
        raise UserError(f"unsafe path {name!r} in archive {archive}; refusing to extract")


def extract_archive(
    archive: Path,
    dest_dir: Path,
    member_root: str,
    what: str = "dataset",
    hint: str = "",
    *,
    files: Collection[str] = (),
) -> Path:
    """Extract the folder ``member_root`` of a zip or tar archive to ``dest_dir/member_root``.

    If the folder is not in the zip but the zip nests one (the UCI download wraps
    ``UCI HAR Dataset.zip`` plus ``__MACOSX/`` junk), extraction goes through the nested zip.
    With ``files``, only those base names are extracted, wherever they sit in the archive, into
    ``dest_dir/member_root`` (a UEA zip holds the two ``.ts`` files beside others, at varying
    depths). ``what`` and ``hint`` name the dataset and the expected input in errors.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    root = member_root.strip("/")
    target = dest_dir / root
    stamp_file = dest_dir / f".{root}.extracted.json"
    if _is_current(target, stamp_file, _stamp(archive, root, files)):
        return target  # the common case: no lock, no waiting
    with file_lock(stamp_file):
        stamp = _stamp(archive, root, files)
        if _is_current(target, stamp_file, stamp):
            return target
        extract: Callable[[Path, str, Collection[str], Path], None]
        if zipfile.is_zipfile(archive):
            extract = _extract_zip
        elif tarfile.is_tarfile(archive):
            extract = _extract_tar
        else:
            hint = f"; {hint}" if hint else ""
            raise UserError(f"{what}: {archive} is not a zip or tar archive{hint}")
        dest_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest_dir))
        try:
            extract(archive, root, files, tmp / "x")
            if target.exists():
                # os.replace cannot overwrite a non-empty dir: move the old one aside first
                # (into tmp, which is deleted below).
                os.replace(target, tmp / "old")
            os.replace(tmp / "x" / root, target)
            atomic_write_text(stamp_file, json.dumps(stamp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _stamp(archive: Path, root: str, files: Collection[str]) -> dict:
    st = archive.stat()
    return {
        "archive": str(archive.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "member_root": root,
        "files": sorted(files),
    }


def _is_current(target: Path, stamp_file: Path, stamp: dict) -> bool:
    if not (target.is_dir() and stamp_file.is_file()):
        return False
    try:
        return json.loads(stamp_file.read_text(encoding="utf-8")) == stamp
    except (OSError, ValueError):
        return False  # unreadable stamp: extract again


def _is_junk(name: str) -> bool:
    # macOS resource forks ride along in many hand-made archives.
    return name.startswith("__MACOSX/") or PurePosixPath(name).name.startswith("._")


def _targets(names: Iterable[str], root: str, files: Collection[str]) -> dict[str, str]:
    """Archive member -> its path below the extraction folder, for every member wanted; empty
    unless all of ``files`` are there."""
    names = [n for n in names if not _is_junk(n)]
    if not files:
        return {n: n for n in names if n.startswith(root + "/")}
    found = {n: f"{root}/{PurePosixPath(n).name}" for n in names if PurePosixPath(n).name in files}
    return found if len(set(found.values())) == len(set(files)) else {}


def _missing(archive: str, root: str, files: Collection[str], names: list[str]) -> Exception:
    if files:
        present = {PurePosixPath(n).name for n in names}
        return FileNotFoundError(
            f"archive {archive} has no {', '.join(sorted(set(files) - present))}"
        )
    top = sorted({n.split("/", 1)[0] for n in names})
    return FileNotFoundError(
        f"archive {archive} has no folder {root!r} (nor a nested zip containing it); "
        f"top-level entries: {top[:10]}"
    )


def _copy(src: IO[bytes], dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with src, open(dest, "wb") as f:
        shutil.copyfileobj(src, f)


def _extract_zip(
    archive: Path, root: str, files: Collection[str], out: Path, label: str = "", depth: int = 0
) -> None:
    label = label or str(archive)
    with zipfile.ZipFile(archive) as zf:
        names = [i.filename for i in zf.infolist()]
        for name in names:
            check_member_name(name, label)
        regular = [n for n in names if not n.endswith("/")]
        targets = _targets(regular, root, files)
        for name, rel in targets.items():
            _copy(zf.open(name), out / rel)
        if targets:
            return
        nested = [n for n in regular if n.lower().endswith(".zip") and not _is_junk(n)]
        # Prefer "<member_root>.zip" (the UCI layout); otherwise accept a lone nested zip.
        preferred = [n for n in nested if PurePosixPath(n).stem == root]
        choice = preferred[:1] or (nested if len(nested) == 1 else [])
        if not choice or depth >= MAX_NESTING:
            raise _missing(label, root, files, names)
        inner = out.parent / f".nested-{depth}.zip"
        _copy(zf.open(choice[0]), inner)
    _extract_zip(inner, root, files, out, f"{label}!{choice[0]}", depth + 1)


def _extract_tar(archive: Path, root: str, files: Collection[str], out: Path) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:
            check_member_name(m.name, str(archive))
        regular = {m.name: m for m in members if m.isfile()}  # links and devices: never
        targets = _targets(regular, root, files)
        if not targets:
            raise _missing(str(archive), root, files, [m.name for m in members])
        for name, rel in targets.items():
            src = tf.extractfile(regular[name])
            assert src is not None  # extractfile returns None only for non-regular members
            _copy(src, out / rel)

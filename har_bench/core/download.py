"""Checksummed downloads of dataset archives (extraction: :mod:`har_bench.data.archives`).

Nothing here knows about Hydra or a particular dataset: loaders pass in URLs, paths and
hashes. One invariant matters more than speed: a file only ever appears under its final name
once it is complete and verified (``.part`` file + ``os.replace``), so an interrupted run never
leaves a "cached" archive that later runs would trust.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

from har_bench.core.errors import UserError
from har_bench.core.fs import atomic_write_text, file_lock

_CHUNK = 1 << 20  # 1 MiB: large enough for throughput, small enough for a smooth progress bar
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class ChecksumError(UserError):
    """A downloaded or cached file does not have the expected SHA-256."""


class DownloadError(UserError, OSError):
    """The URL could not be fetched (network error, HTTP error, truncated body): the network's
    or the URL's fault, not a bug, and still an OSError for callers that catch those."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks so large archives do not need to fit in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _normalize_sha256(sha256: str | None) -> str | None:
    # Configs often carry "" or null for "unknown"; treat both as "no expected hash".
    if sha256 is None or not str(sha256).strip():
        return None
    value = str(sha256).strip().lower()
    if not _SHA256_RE.match(value):
        raise UserError(f"sha256 must be 64 hex characters, got {sha256!r}")
    return value


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _read_sidecar(path: Path) -> str | None:
    if not path.is_file():
        return None
    # sha256sum format ("<hash>  <name>"); only the first token matters.
    tokens = path.read_text(encoding="utf-8").split()
    return tokens[0].lower() if tokens else None


def _verify_existing(dest: Path, expected: str | None) -> Path:
    """Check an already-present file against the given hash, else its trust-on-first-use
    sidecar. A mismatch is an error, never a silent re-download: a changed cached archive
    means corruption or tampering, and the user should decide what to do."""
    sidecar = _sidecar(dest)
    source = "configured"
    if expected is None:
        expected = _read_sidecar(sidecar)
        source = f"recorded ({sidecar.name})"
    actual = sha256_file(dest)
    if expected is None:
        # A file placed by hand (or by an older version): trust it now, verify it from now on.
        atomic_write_text(sidecar, f"{actual}  {dest.name}\n")
        return dest
    if actual != expected:
        raise ChecksumError(
            f"cached file {dest} does not match its {source} sha256: expected {expected}, "
            f"got {actual}. It is corrupt or was modified; delete it (and {sidecar.name}, if "
            f"the new content is trusted) to download again."
        )
    return dest


def _progress_bar(enabled: bool):
    # Imported lazily so that importing the data package stays cheap.
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def download(
    url: str,
    dest: Path,
    sha256: str | None = None,
    *,
    progress: bool = True,
    timeout: float = 60,
) -> Path:
    """Download ``url`` to ``dest`` and verify it; return ``dest``.

    If ``dest`` already exists it is not downloaded again but verified against ``sha256``,
    or, when none is given, against the ``<dest>.sha256`` sidecar written on first download
    (trust on first use). On a fresh download a mismatch with ``sha256`` deletes the partial
    file and raises :class:`ChecksumError`; nothing is left behind under ``dest``.
    """
    dest = Path(dest)
    with file_lock(dest):
        return _download_locked(url, dest, _normalize_sha256(sha256), progress, timeout)


def _download_locked(
    url: str, dest: Path, expected: str | None, progress: bool, timeout: float
) -> Path:
    if dest.exists():
        return _verify_existing(dest, expected)

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    source = "configured"
    if expected is None:
        # Archive deleted but its sidecar kept: the re-download must match what was trusted.
        expected = _read_sidecar(_sidecar(dest))
        source = f"recorded in {_sidecar(dest).name}"
    request = urllib.request.Request(url, headers={"User-Agent": "har-bench"})
    h = hashlib.sha256()
    received = 0
    try:
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.URLError as e:
            reason = getattr(e, "reason", e)
            raise DownloadError(
                f"could not download {url}: {reason}. If you already have the data, "
                f"give its folder or archive: dataset.root=PATH"
            ) from e
        try:
            with response, open(part, "wb") as out, _progress_bar(progress) as bar:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                task = bar.add_task(f"download {dest.name}", total=total)
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    received += len(chunk)
                    bar.update(task, advance=len(chunk))
        except (OSError, http.client.HTTPException) as e:
            # Name the URL: a bare "Connection reset by peer" says nothing about what failed.
            raise DownloadError(f"download of {url} failed after {received} bytes: {e}") from e
        if total is not None and received != total:
            raise DownloadError(f"download of {url} was truncated: got {received} of {total} bytes")
        actual = h.hexdigest()
        if expected is not None and actual != expected:
            raise ChecksumError(
                f"checksum mismatch for {url}: expected sha256 {expected} ({source}), "
                f"got {actual}. "
                f"The download was discarded; nothing was cached."
            )
        # Sidecar first: if we crash between the two steps, the archive is simply
        # downloaded again, whereas an archive without sidecar would be trusted blindly.
        atomic_write_text(_sidecar(dest), f"{actual}  {dest.name}\n")
        os.replace(part, dest)
    except BaseException:
        # Includes KeyboardInterrupt: a partial file must never survive.
        part.unlink(missing_ok=True)
        raise
    return dest


def filename_from_url(url: str, default: str = "download.zip") -> str:
    """Last path component of ``url`` (percent-decoded), for naming the cached archive."""
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    return name or default

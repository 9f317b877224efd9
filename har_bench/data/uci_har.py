"""UCI-HAR (Human Activity Recognition Using Smartphones) raw inertial windows.

Reads the nine ``Inertial Signals`` channels of the official release (train then test, the
official split kept in ``official_split``) and caches the parsed arrays as an uncompressed
``.npz`` so that every run after the first loads in a fraction of a second.

Accepted ``root`` values: the ``UCI HAR Dataset`` folder itself, a folder containing it, the
official zip (outer form with a nested ``UCI HAR Dataset.zip``, or the inner zip), or ``None``
to download ``url`` into ``data_dir/uci_har/``. Every text file may also be gzipped
(``name.txt.gz``); the plain file wins when both exist.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from har_bench.core.errors import UserError
from har_bench.data._io import (
    Layout,
    cache_key,
    find_file,
    load_cache,
    open_text,
    read_table,
    resolve_root,
    save_cache,
)
from har_bench.data.base import HARData

DEFAULT_URL = (
    "https://archive.ics.uci.edu/static/public/240/human+activity+recognition+using+smartphones.zip"
)
MEMBER_ROOT = "UCI HAR Dataset"
SPLITS = ("train", "test")
CHANNEL_NAMES = [
    f"{sig}_{axis}" for sig in ("body_acc", "body_gyro", "total_acc") for axis in ("x", "y", "z")
]
WINDOW = 128
SAMPLING_RATE_HZ = 50.0
# Bump when parsing changes so stale caches written by older code are not reused.
_CACHE_VERSION = "2"  # 2: non-finite samples refused at parse time
_HINT = (
    "dataset.root must be the 'UCI HAR Dataset' folder, a folder containing it, or the "
    "official zip (or null to download it)"
)
LAYOUT = Layout(
    "UCI-HAR", MEMBER_ROOT, marker="activity_labels.txt", archive_name="uci_har.zip", hint=_HINT
)


# --------------------------------------------------------------------------- locating


def _source_files(ds: Path) -> dict[str, Path | dict[str, Path | list[Path]]]:
    # Resolve every path before parsing anything: a missing file fails in milliseconds,
    # not after a second of parsing, and the cache key needs the full list anyway.
    files: dict = {"labels": find_file(ds, "activity_labels.txt", "UCI-HAR")}
    for split in SPLITS:
        signal_dir = ds / split / "Inertial Signals"
        files[split] = {
            "signals": [
                find_file(signal_dir, f"{ch}_{split}.txt", "UCI-HAR") for ch in CHANNEL_NAMES
            ],
            "y": find_file(ds / split, f"y_{split}.txt", "UCI-HAR"),
            "subjects": find_file(ds / split, f"subject_{split}.txt", "UCI-HAR"),
        }
    return files


def _all_paths(files: dict) -> list[Path]:
    paths = [files["labels"]]
    for split in SPLITS:
        paths += [*files[split]["signals"], files[split]["y"], files[split]["subjects"]]
    return paths


# --------------------------------------------------------------------------- parsing


def _read_class_names(path: Path) -> list[str]:
    with open_text(path) as f:
        lines = f.read().splitlines()
    names: dict[int, str] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise UserError(f"{path}, line {lineno}: expected '<id> <NAME>', got {line!r}")
        names[int(parts[0])] = parts[1].strip()
    if sorted(names) != list(range(1, len(names) + 1)):
        raise UserError(f"{path}: activity ids must be 1..K, got {sorted(names)}")
    return [names[i] for i in range(1, len(names) + 1)]


def _parse(files: dict) -> dict[str, np.ndarray]:
    class_names = _read_class_names(files["labels"])
    jobs: list[tuple[Path, int, type]] = []
    for split in SPLITS:
        jobs += [(p, WINDOW, np.float32) for p in files[split]["signals"]]
        jobs += [(files[split]["y"], 1, np.int64), (files[split]["subjects"], 1, np.int64)]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(lambda job: read_table(*job), jobs)
        tables = dict(zip([job[0] for job in jobs], results, strict=True))

    xs, ys, subjects = [], [], []
    for split in SPLITS:
        f = files[split]
        named = [(p, tables[p]) for p in [*f["signals"], f["y"], f["subjects"]]]
        counts = {p: len(t) for p, t in named}
        if len(set(counts.values())) != 1:
            detail = ", ".join(f"{p.name}: {n}" for p, n in counts.items())
            raise UserError(
                f"UCI-HAR {split} files in {f['y'].parent} disagree on the number of windows "
                f"({detail})"
            )
        y = tables[f["y"]].ravel()
        bad = np.flatnonzero((y < 1) | (y > len(class_names)))
        if bad.size:
            raise UserError(
                f"{f['y']}, row {bad[0] + 1}: label {y[bad[0]]} is outside 1..{len(class_names)} "
                f"defined in {files['labels'].name}"
            )
        xs.append(np.stack([tables[p] for p in f["signals"]], axis=1))
        ys.append(y - 1)
        subjects.append(tables[f["subjects"]].ravel())
    return {
        "X": np.ascontiguousarray(np.concatenate(xs), dtype=np.float32),
        "y": np.concatenate(ys).astype(np.int64),
        "subjects": np.concatenate(subjects).astype(np.int64),
        "n_train": np.asarray(len(ys[0]), dtype=np.int64),
        "class_names": np.asarray(class_names),
    }


# --------------------------------------------------------------------------- public


def load_uci_har(
    root: str | os.PathLike[str] | None,
    data_dir: str | os.PathLike[str],
    url: str = DEFAULT_URL,
    sha256: str | None = None,
    cache: bool = True,
    progress: bool = True,
    features: bool = False,
) -> HARData:
    """Load UCI-HAR raw inertial windows as ``HARData`` (X: [10299, 9, 128] on the full set).

    With ``features=True``, the 561 engineered features of ``X_train.txt``/``X_test.txt``
    instead, as X [N, 561, 1]: one "channel" per feature (so per-channel standardisation is
    per-feature z-scoring) and a length-1 "window", for MLP and other feature baselines.

    Args:
        root: the ``UCI HAR Dataset`` folder, a folder containing it, the official zip, or
            None to download ``url``.
        data_dir: writable folder; archives, extractions and the parse cache go to
            ``data_dir/uci_har/``.
        url: archive URL used when ``root`` is None.
        sha256: expected SHA-256 of the downloaded archive; None = trust on first use.
        cache: read/write the parsed-array cache ``data_dir/uci_har/cache/raw-<key>.npz``.
        progress: show a progress bar while downloading.
    """
    workdir = Path(data_dir).expanduser() / "uci_har"
    ds, archive = resolve_root(root, workdir, url, sha256, progress, LAYOUT)
    if features:
        return _load_features(ds, archive)
    files = _source_files(ds)

    cache_path: Path | None = None
    if cache:
        cache_path = workdir / "cache" / f"raw-{cache_key(_all_paths(files), _CACHE_VERSION)}.npz"
    arrays = load_cache(cache_path, ("X", "y", "subjects", "n_train", "class_names"))
    if arrays is not None and arrays["X"].shape[1:] != (len(CHANNEL_NAMES), WINDOW):
        arrays = None  # written by code with another layout: parse again
    cache_hit = arrays is not None
    if arrays is None:
        arrays = _parse(files)
        if cache_path is not None and not save_cache(cache_path, arrays):
            cache_path = None

    n_train = int(arrays["n_train"])
    n = len(arrays["X"])
    info: dict = {
        "source": str(ds),
        "cache": str(cache_path) if cache_path is not None else None,
        "cache_hit": cache_hit,
        "n_train": n_train,
        "n_test": n - n_train,
    }
    if archive is not None:
        info["archive"] = str(archive)
    return HARData(
        name="uci_har",
        X=arrays["X"],
        y=arrays["y"],
        subjects=arrays["subjects"],
        class_names=[str(c) for c in arrays["class_names"]],
        channel_names=list(CHANNEL_NAMES),
        official_split=np.repeat(np.array(["train", "test"]), [n_train, n - n_train]),
        sampling_rate_hz=SAMPLING_RATE_HZ,
        info=info,
    )


N_FEATURES = 561


def _load_features(ds: Path, archive: Path | None) -> HARData:
    class_names = _read_class_names(find_file(ds, "activity_labels.txt", "UCI-HAR"))
    names_path = find_file(ds, "features.txt", "UCI-HAR")
    with open_text(names_path) as f:
        rows = [line.split(maxsplit=1) for line in f.read().splitlines() if line.strip()]
    if len(rows) != N_FEATURES or any(len(r) != 2 for r in rows):
        raise UserError(f"{names_path}: expected {N_FEATURES} lines '<id> <name>', got {len(rows)}")
    feature_names = [r[1].strip() for r in rows]
    xs, ys, subjects = [], [], []
    for split in SPLITS:
        folder = ds / split
        X = read_table(find_file(folder, f"X_{split}.txt", "UCI-HAR"), N_FEATURES, np.float32)
        y = read_table(find_file(folder, f"y_{split}.txt", "UCI-HAR"), 1, np.int64).ravel()
        subj = read_table(find_file(folder, f"subject_{split}.txt", "UCI-HAR"), 1, np.int64)
        subj = subj.ravel()
        if not len(X) == len(y) == len(subj):
            raise UserError(
                f"UCI-HAR {split}: X_{split}.txt has {len(X)} rows, y_{split}.txt {len(y)}, "
                f"subject_{split}.txt {len(subj)}"
            )
        bad = np.flatnonzero((y < 1) | (y > len(class_names)))
        if bad.size:
            raise UserError(
                f"{ds / split / f'y_{split}.txt'}, row {bad[0] + 1}: label {y[bad[0]]} is "
                f"outside 1..{len(class_names)}"
            )
        xs.append(X)
        ys.append(y - 1)
        subjects.append(subj)
    n_train = len(ys[0])
    n = n_train + len(ys[1])
    info: dict = {"source": str(ds), "features": True, "n_train": n_train, "n_test": n - n_train}
    if archive is not None:
        info["archive"] = str(archive)
    return HARData(
        name="uci_har",
        X=np.concatenate(xs)[:, :, None],
        y=np.concatenate(ys),
        subjects=np.concatenate(subjects),
        class_names=class_names,
        channel_names=feature_names,
        # The -X/-Y/-Z names are statistics per axis (std, energy, ...), not a vector that a
        # rotation may mix: no channel group.
        channel_groups=[],
        official_split=np.repeat(np.array(["train", "test"]), [n_train, n - n_train]),
        sampling_rate_hz=None,
        info=info,
    )

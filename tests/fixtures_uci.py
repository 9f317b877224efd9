"""Writers for a tiny UCI-HAR dataset in the official layout (plain or gzipped text, folder,
zip, or the nested zip the UCI site currently serves)."""

from __future__ import annotations

import gzip
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASS_NAMES = [
    "WALKING",
    "WALKING_UPSTAIRS",
    "WALKING_DOWNSTAIRS",
    "SITTING",
    "STANDING",
    "LAYING",
]
CHANNELS = [f"{s}_{a}" for s in ("body_acc", "body_gyro", "total_acc") for a in "xyz"]


@dataclass
class UciFixture:
    dataset_dir: Path  # the "UCI HAR Dataset" folder
    X: np.ndarray  # [N, 9, 128] float32, train then test
    y: np.ndarray  # 0-based labels
    subjects: np.ndarray
    n_train: int


def _fmt(v: np.float32) -> str:
    # Official UCI style: right-aligned scientific notation with a 3-digit exponent. The
    # shortest round-tripping float32 digits make the values exactly recoverable.
    # A leading space always separates fields, even when a value needs all 15 characters.
    return " " + np.format_float_scientific(v, unique=True, exp_digits=3).rjust(15)


def _write(path: Path, text: str, gz: bool) -> None:
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wt", encoding="ascii") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="ascii")


def write_uci_dataset(
    base: Path, *, gz: bool = False, n_train: int = 12, n_test: int = 6, seed: int = 0
) -> UciFixture:
    """Write ``base/"UCI HAR Dataset"`` with train subjects 1 and 3, test subject 2."""
    rng = np.random.default_rng(seed)
    ds = base / "UCI HAR Dataset"
    n = n_train + n_test
    X = rng.standard_normal((n, 9, 128)) * 10.0 ** rng.integers(-4, 2, size=(n, 9, 1))
    X = X.astype(np.float32)
    y = (np.arange(n) % 6).astype(np.int64)
    subjects = np.concatenate(
        [
            np.where(np.arange(n_train) < n_train // 2, 1, 3),
            np.full(n_test, 2),
        ]
    ).astype(np.int64)
    ds.mkdir(parents=True)
    _write(
        ds / "activity_labels.txt",
        "".join(f"{i} {name}\n" for i, name in enumerate(CLASS_NAMES, 1)),
        gz,
    )
    for split, sl in (("train", slice(0, n_train)), ("test", slice(n_train, n))):
        sig = ds / split / "Inertial Signals"
        sig.mkdir(parents=True)
        for c, ch in enumerate(CHANNELS):
            text = "".join("".join(_fmt(v) for v in row) + "\n" for row in X[sl, c])
            _write(sig / f"{ch}_{split}.txt", text, gz)
        _write(ds / split / f"y_{split}.txt", "".join(f"{v + 1}\n" for v in y[sl]), gz)
        _write(ds / split / f"subject_{split}.txt", "".join(f"{v}\n" for v in subjects[sl]), gz)
    return UciFixture(ds, X, y, subjects, n_train)


def zip_dataset(dataset_dir: Path, zip_path: Path, *, nested: bool = False) -> Path:
    """Zip ``dataset_dir`` as ``UCI HAR Dataset/...``. With ``nested``, mimic the current UCI
    download: an outer zip holding ``UCI HAR Dataset.zip`` plus ``__MACOSX/`` junk."""
    inner = zip_path.with_name(zip_path.stem + ".inner.zip") if nested else zip_path
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(dataset_dir.rglob("*")):
            zf.write(p, Path(dataset_dir.name) / p.relative_to(dataset_dir))
    if nested:
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(inner, "UCI HAR Dataset.zip")
            zf.writestr("__MACOSX/._UCI HAR Dataset.zip", b"\x00\x05\x16\x07junk")
            zf.writestr("__MACOSX/UCI HAR Dataset/._README.txt", b"junk")
        inner.unlink()
    return zip_path

"""Image datasets for the 2D ResNet/ResNeXt path (``model.layout=2d_image``): X is
[N, 3, H, W] float32 in [0, 1] (optionally normalised by ``mean``/``std``).

* ``cifar10``: the official python batches (``cifar-10-batches-py/data_batch_1..5``,
  ``test_batch``, ``batches.meta``); official split = the 50k/10k train/test batches.
* ``image_folder``: ``root/<class>/<image>`` (classes = sorted folder names), or
  ``root/train/<class>/...`` + ``root/test/<class>/...`` for an official split; read with Pillow,
  converted to RGB and resized.

Images have no subjects. Each image is its own "subject" unless ``group_regex`` extracts a
group id from the file name (e.g. the patient of a clinical photo): augmented copies or several
photos of one patient must not straddle train and test, and the split report checks that they
do not.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np

from ._io import Layout, resolve_root
from .base import HARData

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MEMBER = "cifar-10-batches-py"
CIFAR10_LAYOUT = Layout(
    "CIFAR-10",
    CIFAR10_MEMBER,
    "batches.meta",
    "cifar10.tar.gz",
    "dataset.root must be the official cifar-10-python.tar.gz or its extracted folder",
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _normalise(X: np.ndarray, mean: list[float] | None, std: list[float] | None) -> np.ndarray:
    if mean is None and std is None:
        return X
    c = X.shape[1]
    m = np.asarray(list(mean) if mean is not None else [0.0] * c, dtype=np.float32)
    s = np.asarray(list(std) if std is not None else [1.0] * c, dtype=np.float32)
    if m.shape != (c,) or s.shape != (c,) or np.any(s <= 0):
        raise ValueError(
            f"dataset.mean/std must list {c} values (std > 0), got mean={mean!r} std={std!r}"
        )
    X -= m.reshape(1, c, 1, 1)
    X /= s.reshape(1, c, 1, 1)
    return X


def _check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"dataset.limit={limit!r} is invalid: expected an integer >= 1 or null")
    return limit


# --------------------------------------------------------------------------- CIFAR-10


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({e})") from e


def _batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    try:
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"{path}: CIFAR-10 batch without {e.args[0]!r}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(
            f"{path}: expected data [n, 3072] and n labels, got {data.shape} / {len(labels)}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(
    root: str | os.PathLike[str] | None,
    data_dir: str | os.PathLike[str],
    limit: int | None = None,
    size: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    url: str = CIFAR10_URL,
    sha256: str | None = None,
    progress: bool = True,
) -> HARData:
    """CIFAR-10 (Krizhevsky 2009) from the official python batches.

    Args:
        root: ``cifar-10-batches-py/``, a folder containing it, the official tar.gz, or None
            to download it.
        limit: keep only the first ``limit`` images of train and of test (quick runs).
        size: resize to size x size with Pillow (None keeps 32 x 32).
    """
    limit = _check_limit(limit)
    workdir = Path(data_dir).expanduser() / "cifar10"
    path, _ = resolve_root(root, workdir, url, sha256, progress, CIFAR10_LAYOUT)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    for n in names:
        if not (path / n).is_file():
            raise FileNotFoundError(f"CIFAR-10 file not found: {n!r} in {path}")
    meta = _unpickle(path / "batches.meta")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[b"label_names"]]
    train = [_batch(path / f"data_batch_{i}") for i in range(1, 6)]
    Xtr = np.concatenate([b[0] for b in train])
    ytr = np.concatenate([b[1] for b in train])
    Xte, yte = _batch(path / "test_batch")
    if limit:
        Xtr, ytr, Xte, yte = Xtr[:limit], ytr[:limit], Xte[:limit], yte[:limit]
    X = np.concatenate([Xtr, Xte])
    if size and size != 32:
        X = _resize_all(X, size)
    X = _normalise(X.astype(np.float32) / 255.0, mean, std)
    n, n_train = len(X), len(Xtr)
    return HARData(
        name="cifar10",
        X=X,
        y=np.concatenate([ytr, yte]),
        subjects=np.arange(n, dtype=np.int64),  # no subjects: each image is its own id
        class_names=classes,
        channel_names=["R", "G", "B"],
        official_split=np.repeat(np.array(["train", "test"]), [n_train, n - n_train]),
        info={"source": str(path), "n_train": n_train, "n_test": n - n_train},
    )


def _resize_all(X: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(X), 3, size, size), dtype=np.uint8)
    for i, img in enumerate(X):
        pil = Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)))
        out[i] = np.asarray(pil.resize((size, size), Image.BILINEAR)).transpose(2, 0, 1)
    return out


# --------------------------------------------------------------------------- image folder


def load_image_folder(
    root: str | os.PathLike[str],
    size: int | list[int] = 224,
    group_regex: str | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    limit: int | None = None,
) -> HARData:
    """Images in one subfolder per class (or ``train/`` and ``test/`` each holding those).

    Args:
        size: output side (square) or [height, width]; images are resized with Pillow's
            bilinear filter, aspect ratio not kept.
        group_regex: regular expression with one group, searched in each file name (without
            suffix); images with the same match share a subject id. None = one id per image.
        limit: at most this many images per class (per split), for quick runs.
    """
    from PIL import Image, UnidentifiedImageError

    limit = _check_limit(limit)
    hw = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"dataset.size={size!r} is invalid: expected an int or [height, width]")
    pattern = re.compile(group_regex) if group_regex else None
    if pattern is not None and pattern.groups != 1:
        raise ValueError(f"dataset.group_regex={group_regex!r} must have exactly one (group)")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"image folder {base} does not exist")
    has_split = (base / "train").is_dir() and (base / "test").is_dir()
    sides = {"train": base / "train", "test": base / "test"} if has_split else {"all": base}

    def classes_in(folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    class_names = classes_in(next(iter(sides.values())))
    if not class_names:
        raise FileNotFoundError(f"image folder {base} has no class subfolders")
    if has_split and classes_in(base / "test") != class_names:
        raise ValueError(
            f"{base}/train and {base}/test have different class folders: "
            f"{class_names} vs {classes_in(base / 'test')}"
        )
    images, labels, groups, side_of = [], [], [], []
    for side, folder in sides.items():
        for k, cls in enumerate(class_names):
            files = sorted(
                p for p in (folder / cls).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
            )
            for p in files[:limit] if limit else files:
                try:
                    with Image.open(p) as im:
                        arr = np.asarray(im.convert("RGB").resize(hw[::-1], Image.BILINEAR))
                except (OSError, UnidentifiedImageError) as e:
                    raise ValueError(f"{p}: cannot be read as an image ({e})") from e
                images.append(arr.transpose(2, 0, 1))
                labels.append(k)
                side_of.append(side)
                if pattern is None:
                    groups.append(str(p.relative_to(base)))
                else:
                    m = pattern.search(p.stem)
                    if not m:
                        raise ValueError(
                            f"dataset.group_regex={group_regex!r} does not match {p.name!r}"
                        )
                    groups.append(m.group(1))
    if not images:
        raise FileNotFoundError(f"image folder {base}: no {', '.join(IMAGE_SUFFIXES)} files")
    X = _normalise(np.stack(images).astype(np.float32) / 255.0, mean, std)
    subject_ids = np.unique(np.asarray(groups), return_inverse=True)[1].astype(np.int64)
    return HARData(
        name="image_folder",
        X=X,
        y=np.asarray(labels, dtype=np.int64),
        subjects=subject_ids,
        class_names=class_names,
        channel_names=["R", "G", "B"],
        official_split=np.asarray(side_of) if has_split else None,
        info={"source": str(base), "groups": int(subject_ids.max() + 1), "size": list(hw)},
    )

"""Image datasets for the 2D ResNet/ResNeXt path (``model.layout=2d_image``).

X is uint8 [N, 3, H, W] at the images' stored size: CIFAR-10 is 184 MB that way, against
36 GB as float32 resized to 224 up front. ``HARData.image`` (an :class:`ImageSpec`) says what the
network sees; the run resizes, crops and normalises each batch on the training device.

* ``cifar10``: the official python batches (``cifar-10-batches-py/data_batch_1..5``,
  ``test_batch``, ``batches.meta``); official split = the 50k/10k train/test batches.
* ``image_folder``: ``root/<class>/<image>`` (classes = sorted folder names), or
  ``root/train/<class>/...`` + ``root/test/<class>/...`` for an official split; read with Pillow
  and converted to RGB.

Images have no subjects. Each image is its own "subject" unless ``group_regex`` extracts a
group id from the file name (e.g. the patient of a clinical photo): augmented copies or several
photos of one patient must not straddle train and test, and the split report checks that they
do not.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from har_bench.core.errors import MissingInputError, UserError, check_memory, check_optional_int
from har_bench.data._io import Layout, resolve_root
from har_bench.data.base import HARData, image_spec

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
# Images per chunk when statistics are taken: bounds the float64 temporaries to ~50 MB at 32 px.
_STATS_CHUNK = 2048


def channel_stats(X: np.ndarray, index: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (in [0, 1] units) of the uint8 images ``X[index]``.

    Summed in chunks: the whole training part in float64 would be 8x the images' memory.
    """
    index = np.asarray(index, dtype=np.int64)
    c = X.shape[1]
    total = np.zeros(c)
    squares = np.zeros(c)
    for start in range(0, len(index), _STATS_CHUNK):
        chunk = X[index[start : start + _STATS_CHUNK]].astype(np.float64)
        chunk = chunk.transpose(1, 0, *range(2, X.ndim)).reshape(c, -1)
        total += chunk.sum(1)
        squares += np.square(chunk).sum(1)
    count = max(len(index) * int(np.prod(X.shape[2:])), 1)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std[std < 1e-8 * 255] = 255.0  # a constant channel stays constant, as in standardise()
    return (mean / 255).tolist(), (std / 255).tolist()


# --------------------------------------------------------------------------- CIFAR-10


# Every global a CIFAR-10 python batch may name: NumPy's array reconstruction (numpy.core in
# the official Python 2 pickles, numpy._core when NumPy 2 re-pickled them; _frombuffer for
# protocol 5) and the codec Python 3 uses for bytes at protocol 2. Anything else (os.system,
# builtins.eval, ...) would run code while loading a data file.
CIFAR_PICKLE_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class CifarUnpickler(pickle.Unpickler):
    """Rebuilds only what a CIFAR-10 batch holds (dicts, lists, bytes/str, numbers, NumPy
    arrays); any other global is refused before it is looked up, so nothing in the file runs."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"it references {module}.{name}, which a CIFAR-10 batch never holds; "
                f"refusing to load it"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = CifarUnpickler(f, encoding="bytes").load()
    # What a damaged pickle raises besides UnpicklingError (pickle's documentation).
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError) as e:  # fmt: skip
        raise UserError(f"{path}: not a CIFAR-10 python batch ({e})") from e
    if not isinstance(d, dict):
        raise UserError(f"{path}: not a CIFAR-10 python batch (a {type(d).__name__}, not a dict)")
    return d


def _batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    try:
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except KeyError as e:
        raise UserError(f"{path}: CIFAR-10 batch without {e.args[0]!r}") from None
    except (ValueError, TypeError, OverflowError) as e:
        raise UserError(f"{path}: CIFAR-10 batch data or labels are not numbers ({e})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1 or len(labels) != len(data):
        raise UserError(
            f"{path}: expected data [n, 3072] and n labels, got {data.shape} / {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(
    root: str | os.PathLike[str] | None,
    data_dir: str | os.PathLike[str],
    limit: int | None = None,
    size: int | Sequence[int] | None = None,
    crop_ratio: float = 1.0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    url: str = CIFAR10_URL,
    sha256: str | None = None,
    progress: bool = True,
) -> HARData:
    """CIFAR-10 (Krizhevsky 2009) from the official python batches, as uint8 32 x 32 images.

    Args:
        root: ``cifar-10-batches-py/``, a folder containing it, the official tar.gz, or None
            to download it.
        limit: keep only the first ``limit`` images of train and of test (quick runs).
        size: what the network sees (side, or [height, width]); the run resizes each batch.
            None = 32, the stored size.
        crop_ratio, mean, std: see :class:`~har_bench.data.base.ImageSpec`.
    """
    limit = check_optional_int("dataset.limit", limit)
    spec = image_spec(32 if size is None else size, crop_ratio, mean, std)
    workdir = Path(data_dir).expanduser() / "cifar10"
    path, _ = resolve_root(root, workdir, url, sha256, progress, CIFAR10_LAYOUT)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    for n in names:
        if not (path / n).is_file():
            raise MissingInputError(f"CIFAR-10 file not found: {n!r} in {path}")
    meta = _unpickle(path / "batches.meta")
    if not isinstance(meta.get(b"label_names"), list):
        raise UserError(
            f"{path / 'batches.meta'}: CIFAR-10 batches.meta without a label_names list"
        )
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[b"label_names"]]
    # One batch in memory at a time, copied into its place: the peak stays near the result.
    parts: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {
        "train": ([], []),
        "test": ([], []),
    }
    for name in names[:-1]:
        side = "test" if name == "test_batch" else "train"
        left = None if limit is None else limit - sum(len(x) for x in parts[side][0])
        if left is not None and left <= 0:
            continue
        x, y = _batch(path / name)
        parts[side][0].append(x[:left].copy() if left is not None else x)
        parts[side][1].append(y[:left])
    n_train = sum(len(x) for x in parts["train"][0])
    n = n_train + sum(len(x) for x in parts["test"][0])
    X = np.empty((n, 3, 32, 32), dtype=np.uint8)
    at = 0
    for side in ("train", "test"):
        while parts[side][0]:
            x = parts[side][0].pop(0)
            X[at : at + len(x)] = x
            at += len(x)
    y = np.concatenate(parts["train"][1] + parts["test"][1])
    return HARData(
        name="cifar10",
        X=X,
        y=y,
        subjects=np.arange(n, dtype=np.int64),  # no subjects: each image is its own id
        class_names=classes,
        channel_names=["R", "G", "B"],
        official_split=np.repeat(np.array(["train", "test"]), [n_train, n - n_train]),
        info={"source": str(path), "n_train": n_train, "n_test": n - n_train},
        image=spec,
    )


# --------------------------------------------------------------------------- image folder


def load_image_folder(
    root: str | os.PathLike[str],
    size: int | Sequence[int] = 224,
    crop_ratio: float = 0.875,
    store_size: int | Sequence[int] | None = None,
    group_regex: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    limit: int | None = None,
) -> HARData:
    """Images in one subfolder per class (or ``train/`` and ``test/`` each holding those),
    kept as uint8 RGB.

    Args:
        size: what the network sees (side, or [height, width]); the run resizes each batch.
        crop_ratio, mean, std: see :class:`~har_bench.data.base.ImageSpec`.
        store_size: the size held in memory (side, or [height, width]). None = the images' own
            size when they all share one; otherwise each is resized (Pillow, bilinear, aspect
            not kept) to ``size / crop_ratio``, what the evaluation resize would give anyway.
        group_regex: regular expression with one group, searched in each file name (without
            suffix); images with the same match share a subject id. None = one id per image.
        limit: at most this many images per class (per split), for quick runs.
    """
    from PIL import Image, UnidentifiedImageError

    limit = check_optional_int("dataset.limit", limit)
    spec = image_spec(size, crop_ratio, mean, std)
    stored = None if store_size is None else image_spec(store_size).size
    pattern = re.compile(group_regex) if group_regex else None
    if pattern is not None and pattern.groups != 1:
        raise UserError(f"dataset.group_regex={group_regex!r} must have exactly one (group)")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise MissingInputError(f"image folder {base} does not exist")
    has_split = (base / "train").is_dir() and (base / "test").is_dir()
    sides = {"train": base / "train", "test": base / "test"} if has_split else {"all": base}

    def classes_in(folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    class_names = classes_in(next(iter(sides.values())))
    if not class_names:
        raise MissingInputError(f"image folder {base} has no class subfolders")
    if has_split and classes_in(base / "test") != class_names:
        raise UserError(
            f"{base}/train and {base}/test have different class folders: "
            f"{class_names} vs {classes_in(base / 'test')}"
        )
    paths, labels, groups, side_of = [], [], [], []
    for side, folder in sides.items():
        for k, cls in enumerate(class_names):
            files = sorted(
                p for p in (folder / cls).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
            )
            for p in files[:limit] if limit else files:
                paths.append(p)
                labels.append(k)
                side_of.append(side)
                if pattern is None:
                    groups.append(str(p.relative_to(base)))
                else:
                    m = pattern.search(p.stem)
                    if not m:
                        raise UserError(
                            f"dataset.group_regex={group_regex!r} does not match {p.name!r}"
                        )
                    groups.append(m.group(1))
    if not paths:
        raise MissingInputError(f"image folder {base}: no {', '.join(IMAGE_SUFFIXES)} files")

    def unreadable(p: Path, e: Exception) -> ValueError:
        return ValueError(f"{p}: cannot be read as an image ({e})")

    if stored is None:
        # Headers only (Pillow opens lazily): the common size decides whether to resize.
        sizes = set()
        for p in paths:
            try:
                with Image.open(p) as im:
                    sizes.add((im.height, im.width))
            except (OSError, UnidentifiedImageError) as e:
                raise unreadable(p, e) from e
        if len(sizes) == 1:
            stored = sizes.pop()
        else:
            h, w = spec.size
            stored = (round(h / spec.crop_ratio), round(w / spec.crop_ratio))
    check_memory(
        f"{len(paths):,} images of 3 x {stored[0]} x {stored[1]}",
        3.0 * len(paths) * stored[0] * stored[1],
        "lower dataset.store_size (or dataset.size)",
    )
    X = np.empty((len(paths), 3, *stored), dtype=np.uint8)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                rgb = im.convert("RGB")
                if (rgb.height, rgb.width) != stored:
                    rgb = rgb.resize(stored[::-1], Image.BILINEAR)
                X[i] = np.asarray(rgb).transpose(2, 0, 1)
        except (OSError, UnidentifiedImageError) as e:
            raise unreadable(p, e) from e
    subject_ids = np.unique(np.asarray(groups), return_inverse=True)[1].astype(np.int64)
    return HARData(
        name="image_folder",
        X=X,
        y=np.asarray(labels, dtype=np.int64),
        subjects=subject_ids,
        class_names=class_names,
        channel_names=["R", "G", "B"],
        official_split=np.asarray(side_of) if has_split else None,
        info={
            "source": str(base),
            "groups": int(subject_ids.max() + 1),
            "stored_size": list(stored),
            "size": list(spec.size),
        },
        image=spec,
    )

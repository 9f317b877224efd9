"""Write scikit-learn's bundled handwritten digits as an image folder (``<out>/<digit>/*.png``).

A small real image set that needs no download: 1,797 8 x 8 grey-level scans (UCI "Optical
Recognition of Handwritten Digits", 43 writers), shipped inside scikit-learn. Two disjoint
class sets make a pretraining task and a fine-tuning task, e.g.::

    python scripts/digits_image_folder.py /tmp/digits_0to4 --digits 0 1 2 3 4
    python scripts/digits_image_folder.py /tmp/digits_5to9 --digits 5 6 7 8 9 --per-class 60

With ``--train-per-class N`` the first N images of each digit go to ``<out>/train/<digit>/`` and
the rest to ``<out>/test/<digit>/`` (``split=official``): few training images, a large test set::

    python scripts/digits_image_folder.py /tmp/digits_5to9_few --digits 5 6 7 8 9 \
        --train-per-class 40

The PNGs keep the stored 8 x 8 size (grey levels 0..16 scaled to 0..255); ``dataset.size``
decides what the network sees, and the run resizes each batch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write(
    out: Path, digits: list[int], per_class: int | None, train_per_class: int | None = None
) -> dict[str, int]:
    """The images of ``digits`` (the first ``per_class`` of each, in the set's order) as
    ``out/<digit>/<index>.png``, or split into ``out/train/`` (the first ``train_per_class``)
    and ``out/test/``; how many per folder."""
    bunch = load_digits()
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)
    counts: dict[str, int] = {}
    for digit in digits:
        index = np.flatnonzero(bunch.target == digit)[:per_class]
        if train_per_class is None:
            parts = {str(digit): index}
        else:
            parts = {
                f"train/{digit}": index[:train_per_class],
                f"test/{digit}": index[train_per_class:],
            }
        for name, part in parts.items():
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                Image.fromarray(images[i]).save(folder / f"{i:04d}.png")  # 2-D uint8: grey
            counts[name] = len(part)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write <digit>/<index>.png into")
    parser.add_argument("--digits", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--per-class", type=int, default=None, help="at most this many per digit")
    parser.add_argument(
        "--train-per-class",
        type=int,
        default=None,
        help="the first N of each digit to train/, the rest to test/ (split=official)",
    )
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty")
    counts = write(args.out, args.digits, args.per_class, args.train_per_class)
    print(f"{sum(counts.values())} images in {args.out}: {counts}")


if __name__ == "__main__":
    main()

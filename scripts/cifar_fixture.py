"""Write a CIFAR-10-format fixture (``<out>/cifar-10-batches-py/``) of N images, for measuring
memory and speed of ``dataset=cifar10`` without the 170 MB download::

    python scripts/cifar_fixture.py /tmp/cifar_fixture --images 2000
    har-bench dataset=cifar10 dataset.root=/tmp/cifar_fixture dataset.size=224 ...

The official layout and pickle format: five ``data_batch_*`` (five sixths of the images, as in
CIFAR-10's 50k/10k) and a ``test_batch``, each ``{b"data": uint8 [n, 3072], b"labels": [...]}``,
plus ``batches.meta``. The pixels are random (a fixture, not a data set): for real images use
the official archive.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

CLASSES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
           b"ship", b"truck"]  # fmt: skip


def write(out: Path, images: int, seed: int = 0) -> Path:
    """The fixture under ``out/cifar-10-batches-py``; returns that folder."""
    folder = out / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    test = images // 6
    train_sizes = [len(a) for a in np.array_split(np.arange(images - test), 5)]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": CLASSES, b"num_cases_per_batch": train_sizes[0]}, f)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, n in zip(names, [*train_sizes, test], strict=True):
        batch = {
            b"batch_label": name.encode(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=2000, help="train + test images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.images < 12:
        parser.error("--images must be at least 12 (every batch needs images)")
    print(f"{args.images} images in {write(args.out, args.images, args.seed)}")


if __name__ == "__main__":
    main()

"""Peak memory of the data stage for CIFAR-10 at a given network input size.

Loads a CIFAR-format folder (the official one, or ``scripts/cifar_fixture.py``'s), splits it and
prepares it as a run does (``prepare_data``), then turns one training batch into the
network's input. Reports the process's peak RSS before and after, and what the images take::

    python scripts/cifar_fixture.py /tmp/cifar_fixture --images 2000
    python benchmarks/image_memory.py /tmp/cifar_fixture --size 224

Only stable APIs are used (``load_cifar10(root, data_dir, size=...)``,
``prepare_data(load, split, name, run_dir)``), so the same script measures an older checkout
with ``PYTHONPATH=<checkout>``. Peak RSS is the kernel's ``ru_maxrss`` (Linux: KiB).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a folder holding cifar-10-batches-py/")
    parser.add_argument("--size", type=int, default=224, help="dataset.size")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    import torch

    from har_bench.data.images import load_cifar10
    from har_bench.data.splits import official_split
    from har_bench.experiment.prepare import prepare_data

    torch.zeros(1)  # torch's own allocations before the baseline
    before = peak_mb()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(
            lambda: load_cifar10(args.root, tmp, size=args.size, progress=False),
            lambda d: official_split(d, val_fraction=0.2),
            "official",
            Path(tmp),
        )
    seconds = time.perf_counter() - t0
    after_data = peak_mb()
    parts = (data.train, data.val, data.test)
    held = sum(p.X.element_size() * p.X.nelement() for p in parts)
    prepare = getattr(data, "model_input", lambda x: x)  # older checkouts: X is the input
    batch = prepare(data.train.X[: args.batch])
    after_batch = peak_mb()
    print(f"images: {sum(len(p) for p in parts)}, held as {data.train.X.dtype} "
          f"{tuple(data.train.X.shape[1:])}: {held / 2**20:.1f} MiB in train/val/test")  # fmt: skip
    print(f"network input batch: {tuple(batch.shape)} {batch.dtype}")
    print(f"peak RSS: {before:.0f} MiB after imports, {after_data:.0f} MiB after the data stage "
          f"(+{after_data - before:.0f}), {after_batch:.0f} MiB after one batch; "
          f"data stage {seconds:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()

"""Index batching from in-memory tensors vs a DataLoader over the same windows.

    python benchmarks/batching.py [--repeats 5] [--threads 2]

har-bench's trainer keeps the windows as tensors and takes each batch by indexing with a
shuffled permutation. The usual alternative is ``DataLoader(TensorDataset(X, y),
shuffle=True)``, which fetches every window through ``__getitem__`` and re-stacks them in
``collate``. Both are timed side by side in one process on UCI-HAR-sized data
(7352 windows x 9 channels x 128 samples, batch 64): one epoch of batches alone, and one
training epoch of the default model (resnext_har). Medians of ``--repeats`` runs and their
ratio are printed; the machine's load moves both columns alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from har_bench.models import ResNet

N, C, T, K, BATCH = 7352, 9, 128, 6, 64


def index_batches(X: torch.Tensor, y: torch.Tensor, g: torch.Generator):
    for idx in torch.randperm(len(X), generator=g).split(BATCH):
        yield X[idx], y[idx]


def loader_batches(X: torch.Tensor, y: torch.Tensor, g: torch.Generator):
    yield from DataLoader(TensorDataset(X, y), batch_size=BATCH, shuffle=True, generator=g)


def epoch(batches, model=None, opt=None) -> float:
    t0 = time.perf_counter()
    for xb, yb in batches:
        if model is not None:
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--train-repeats", type=int, default=3)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    X, y = torch.randn(N, C, T), torch.randint(0, K, (N,))
    g = torch.Generator().manual_seed(0)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{N} x {C} x {T} windows, batch {BATCH}"
    )
    print(f"{'what':40s} {'index (s)':>10s} {'DataLoader (s)':>15s} {'ratio':>7s}")

    idx_t = [epoch(index_batches(X, y, g)) for _ in range(args.repeats)]
    dl_t = [epoch(loader_batches(X, y, g)) for _ in range(args.repeats)]
    a, b = statistics.median(idx_t), statistics.median(dl_t)
    print(f"{'batches only, one epoch':40s} {a:10.3f} {b:15.3f} {b / a:6.1f}x")

    model = ResNet(
        C,
        K,
        layers=[1, 1, 1, 1],
        cardinality=16,
        base_width=8,
        stem_width=16,
        stem_kernel_size=5,
        stem_stride=1,
        stem_pool=False,
        zero_init_residual=True,
    )
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    idx_t, dl_t = [], []
    for _ in range(args.train_repeats):  # interleaved so drifting load hits both alike
        idx_t.append(epoch(index_batches(X, y, g), model, opt))
        dl_t.append(epoch(loader_batches(X, y, g), model, opt))
    a, b = statistics.median(idx_t), statistics.median(dl_t)
    print(f"{'training epoch, resnext_har':40s} {a:10.3f} {b:15.3f} {b / a:6.2f}x")


if __name__ == "__main__":
    main()

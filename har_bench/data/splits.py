"""Train / validation / test splits that keep subjects apart.

Validation always comes from training subjects; the test set is never used for model selection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from har_bench.data.base import HARData


@dataclass
class Split:
    train: np.ndarray  # window indices
    val: np.ndarray
    test: np.ndarray

    def subjects(self, data: HARData) -> dict[str, list[int]]:
        return {
            name: sorted(int(s) for s in np.unique(data.subjects[idx]))
            for name, idx in (("train", self.train), ("val", self.val), ("test", self.test))
        }


def official_split(data: HARData, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """The dataset's own train/test split, with ``val_fraction`` of the training *subjects*
    held out for validation (chosen by ``seed``; at least one when the fraction is > 0)."""
    if data.official_split is None:
        raise ValueError(
            f"split=official: dataset {data.name!r} defines no official train/test split"
        )
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"split.val_fraction={val_fraction!r} is invalid: expected 0 <= f < 1")
    is_train = data.official_split == "train"
    is_test = data.official_split == "test"
    train_subjects = np.unique(data.subjects[is_train])
    n_val = math.ceil(val_fraction * len(train_subjects)) if val_fraction > 0 else 0
    if n_val >= len(train_subjects) and n_val > 0:
        raise ValueError(
            f"split.val_fraction={val_fraction} leaves no training subject "
            f"({len(train_subjects)} subjects in the training split)"
        )
    rng = np.random.default_rng(seed)
    val_subjects = rng.choice(train_subjects, size=n_val, replace=False) if n_val else []
    is_val = is_train & np.isin(data.subjects, val_subjects)
    split = Split(
        train=np.flatnonzero(is_train & ~is_val),
        val=np.flatnonzero(is_val),
        test=np.flatnonzero(is_test),
    )
    check_disjoint(data, split)
    return split


def check_disjoint(data: HARData, split: Split) -> None:
    """Raise if a window or a subject sits on two sides of the split."""
    parts = {"train": split.train, "val": split.val, "test": split.test}
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = np.intersect1d(parts[a], parts[b])
            if len(shared):
                raise ValueError(f"split leaks: {len(shared)} windows are in both {a} and {b}")
            subj = np.intersect1d(data.subjects[parts[a]], data.subjects[parts[b]])
            if len(subj):
                raise ValueError(
                    f"split leaks: subjects {sorted(int(s) for s in subj)} are in both {a} and {b}"
                )


def standardise(X: np.ndarray, train_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel z-score with mean/std of the training windows only (no test statistics)."""
    train = X[train_idx]
    axes = (0, *range(2, X.ndim))  # every axis but the channel one: works for [N,C,T] and images
    mean = train.mean(axis=axes, dtype=np.float64).astype(np.float32)
    std = train.std(axis=axes, dtype=np.float64).astype(np.float32)
    std[std < 1e-8] = 1.0  # a constant channel stays constant rather than dividing by zero
    shape = (1, -1) + (1,) * (X.ndim - 2)
    return ((X - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32), mean, std

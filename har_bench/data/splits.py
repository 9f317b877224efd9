"""Train / validation / test splits that keep subjects apart, and the report that proves it.

Validation always comes from training subjects; the test set is never used for model selection.
Every split is a function ``(data, **config) -> Split`` (Hydra ``_partial_: true``); the only one
that may put a subject on two sides is ``random``, and only with ``allow_leakage=true``.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from har_bench.core.errors import UserError, check_int, is_number
from har_bench.data.base import HARData

log = logging.getLogger(__name__)

PARTS = ("train", "val", "test")
MAX_LISTED_SUBJECTS = 1000


@dataclass
class Split:
    train: np.ndarray  # window indices
    val: np.ndarray
    test: np.ndarray
    kind: str = "official"
    # True only for an explicitly requested leaky split (split=random, allow_leakage=true): the
    # split report then records the leakage instead of failing the run.
    leakage_allowed: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def parts(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def subjects(self, data: HARData) -> dict[str, list[int]]:
        return {
            name: sorted(int(s) for s in np.unique(data.subjects[idx]))
            for name, idx in self.parts().items()
        }


# --------------------------------------------------------------------------- helpers


def _check_fraction(name: str, value: object, *, upper_open: bool = True) -> float:
    if not is_number(value):
        raise UserError(f"split.{name}={value!r} is invalid: expected a number in [0, 1)")
    if not 0.0 <= float(value) < 1.0:
        raise UserError(f"split.{name}={value!r} is invalid: expected 0 <= f < 1")
    return float(value)


def _subject_list(name: str, values: object) -> list[int]:
    if values is None:
        return []
    if isinstance(values, numbers.Integral) and not isinstance(values, bool):
        return [int(values)]
    if isinstance(values, str) or not isinstance(values, Sequence):
        try:
            values = list(values)  # type: ignore[call-overload]  # OmegaConf ListConfig
        except TypeError:
            raise UserError(
                f"split.{name}={values!r} is invalid: expected a list of subject ids"
            ) from None
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise UserError(f"split.{name} entry {v!r} is invalid: expected an integer subject id")
        out.append(int(v))
    return out


def _hold_out_validation(
    data: HARData, train_mask: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Move ``val_fraction`` of the training *subjects* (at least one when > 0) to validation."""
    train_subjects = np.unique(data.subjects[train_mask])
    n_val = math.ceil(val_fraction * len(train_subjects)) if val_fraction > 0 else 0
    if n_val and n_val >= len(train_subjects):
        raise UserError(
            f"split.val_fraction={val_fraction} leaves no training subject "
            f"({len(train_subjects)} subjects outside the test set)"
        )
    rng = np.random.default_rng(seed)
    val_subjects = rng.choice(train_subjects, size=n_val, replace=False) if n_val else []
    val_mask = train_mask & np.isin(data.subjects, val_subjects)
    return train_mask & ~val_mask, val_mask, sorted(int(s) for s in val_subjects)


def _from_test_subjects(
    data: HARData,
    test_subjects: Sequence[int],
    val_fraction: float,
    seed: int,
    kind: str,
    info: dict[str, Any],
) -> Split:
    is_test = np.isin(data.subjects, list(test_subjects))
    train, val, val_subjects = _hold_out_validation(data, ~is_test, val_fraction, seed)
    split = Split(
        train=np.flatnonzero(train),
        val=np.flatnonzero(val),
        test=np.flatnonzero(is_test),
        kind=kind,
        info={**info, "test_subjects": sorted(int(s) for s in test_subjects)},
    )
    split.info["val_subjects"] = val_subjects
    check_disjoint(data, split)
    return split


# --------------------------------------------------------------------------- splits


def official_split(data: HARData, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """The dataset's own train/test split, with ``val_fraction`` of the training *subjects*
    held out for validation (chosen by ``seed``; at least one when the fraction is > 0)."""
    if data.official_split is None:
        raise UserError(
            f"split=official: dataset {data.name!r} defines no official train/test split; "
            f"use split=group_kfold, split=loso or split=subjects"
        )
    val_fraction = _check_fraction("val_fraction", val_fraction)
    is_train = data.official_split == "train"
    is_test = data.official_split == "test"
    train, val, val_subjects = _hold_out_validation(data, is_train, val_fraction, seed)
    split = Split(
        train=np.flatnonzero(train),
        val=np.flatnonzero(val),
        test=np.flatnonzero(is_test),
        kind="official",
        info={"val_subjects": val_subjects},
    )
    check_disjoint(data, split)
    return split


def subjects_split(
    data: HARData,
    test_subjects: Sequence[int] | None = None,
    val_subjects: Sequence[int] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> Split:
    """Explicit test subjects; validation = ``val_subjects`` if given, else ``val_fraction`` of
    the remaining subjects."""
    test = _subject_list("test_subjects", test_subjects)
    if not test:
        raise UserError("split.test_subjects is empty: list the subject ids to test on")
    val = _subject_list("val_subjects", val_subjects)
    known = set(np.unique(data.subjects).tolist())
    for key, ids in (("test_subjects", test), ("val_subjects", val)):
        unknown = sorted(set(ids) - known)
        if unknown:
            raise UserError(
                f"split.{key} has subjects {unknown} that dataset {data.name!r} does not "
                f"contain (it has {len(known)} subjects: {_abbrev(sorted(known))})"
            )
    val_fraction = _check_fraction("val_fraction", val_fraction)
    if val_subjects is None:
        return _from_test_subjects(data, test, val_fraction, seed, "subjects", {})
    both = sorted(set(val) & set(test))
    if both:
        raise UserError(f"split.val_subjects and split.test_subjects share subjects {both}")
    is_test = np.isin(data.subjects, test)
    is_val = np.isin(data.subjects, val)
    split = Split(
        train=np.flatnonzero(~is_test & ~is_val),
        val=np.flatnonzero(is_val),
        test=np.flatnonzero(is_test),
        kind="subjects",
        info={"test_subjects": sorted(test), "val_subjects": sorted(val)},
    )
    check_disjoint(data, split)
    return split


def subject_folds(data: HARData, n_splits: int) -> list[list[int]]:
    """Subjects in ``n_splits`` folds of near-equal window counts (largest subject first into
    the lightest fold, as scikit-learn's GroupKFold does): deterministic, seed-free, so fold
    ``i`` names the same subjects in every run of a sweep."""
    ids, counts = np.unique(data.subjects, return_counts=True)
    if n_splits > len(ids):
        raise UserError(
            f"split.n_splits={n_splits} is invalid: dataset {data.name!r} has only "
            f"{len(ids)} subjects"
        )
    folds: list[list[int]] = [[] for _ in range(n_splits)]
    load = np.zeros(n_splits, dtype=np.int64)
    # Stable sort on -count, then id: ties broken by subject id, so the result is reproducible.
    for i in np.lexsort((ids, -counts)):
        f = int(np.argmin(load))
        folds[f].append(int(ids[i]))
        load[f] += counts[i]
    return [sorted(f) for f in folds]


def group_kfold_split(
    data: HARData, n_splits: int = 5, fold: int = 0, val_fraction: float = 0.2, seed: int = 0
) -> Split:
    """Subject-grouped k-fold: fold ``fold`` of ``n_splits`` is the test set. A sweep over
    ``split.fold=0..n_splits-1`` tests every subject exactly once."""
    n_splits = check_int("split.n_splits", n_splits, 2)
    fold = check_int("split.fold", fold, 0)
    if fold >= n_splits:
        raise UserError(f"split.fold={fold} is invalid: expected 0..{n_splits - 1}")
    val_fraction = _check_fraction("val_fraction", val_fraction)
    test = subject_folds(data, n_splits)[fold]
    info = {"fold": fold, "n_splits": n_splits}
    return _from_test_subjects(data, test, val_fraction, seed, "group_kfold", info)


def loso_split(data: HARData, fold: int = 0, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """Leave one subject out: the ``fold``-th subject (in ascending id order) is the test set."""
    ids = np.unique(data.subjects)
    fold = check_int("split.fold", fold, 0)
    if fold >= len(ids):
        raise UserError(
            f"split.fold={fold} is invalid: dataset {data.name!r} has {len(ids)} subjects, "
            f"so LOSO folds are 0..{len(ids) - 1}"
        )
    val_fraction = _check_fraction("val_fraction", val_fraction)
    info = {"fold": fold, "n_splits": int(len(ids))}
    return _from_test_subjects(data, [int(ids[fold])], val_fraction, seed, "loso", info)


def random_split(
    data: HARData,
    test_fraction: float = 0.2,
    val_fraction: float = 0.2,
    seed: int = 0,
    allow_leakage: bool = False,
) -> Split:
    """Windows drawn at random, ignoring subjects: the same person (and, with overlapping
    windows, the same samples) lands in train and test, which inflates every metric. Only
    for reproducing published numbers; refused unless ``allow_leakage`` is true."""
    if allow_leakage is not True:
        raise UserError(
            "split=random puts the same subjects (and overlapping windows) in train and test; "
            "set split.allow_leakage=true to run it anyway, or use split=group_kfold / loso"
        )
    test_fraction = _check_fraction("test_fraction", test_fraction)
    val_fraction = _check_fraction("val_fraction", val_fraction)
    if test_fraction == 0:
        raise UserError("split.test_fraction=0 is invalid: expected 0 < f < 1")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.y))
    n_test = max(1, round(test_fraction * len(order)))
    n_val = round(val_fraction * (len(order) - n_test))
    log.warning(
        "split=random with allow_leakage=true: subjects and overlapping windows are shared "
        "between train, validation and test; the metrics of this run overestimate performance "
        "on new people"
    )
    return Split(
        train=np.sort(order[n_test + n_val :]),
        val=np.sort(order[n_test : n_test + n_val]),
        test=np.sort(order[:n_test]),
        kind="random",
        leakage_allowed=True,
        info={"test_fraction": test_fraction},
    )


def check_disjoint(data: HARData, split: Split) -> None:
    """Raise if a window or a subject sits on two sides of the split."""
    parts = split.parts()
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = np.intersect1d(parts[a], parts[b])
            if len(shared):
                raise UserError(f"split leaks: {len(shared)} windows are in both {a} and {b}")
            subj = np.intersect1d(data.subjects[parts[a]], data.subjects[parts[b]])
            if len(subj):
                raise UserError(
                    f"split leaks: subjects {sorted(int(s) for s in subj)} are in both {a} and {b}"
                )


# --------------------------------------------------------------------------- report


def _abbrev(values: list[int], limit: int = 12) -> str:
    shown = ", ".join(map(str, values[:limit]))
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def overlapping_windows(data: HARData, a: np.ndarray, b: np.ndarray) -> int:
    """Pairs of windows, one from ``a`` and one from ``b``, that share samples of the same
    recording (same ``recording`` id, overlapping ``[start, start + T)``).

    After sorting by (recording, start), any overlapping pair from different sides implies an
    overlapping *adjacent* pair from different sides (all windows have length T), so checking
    neighbours is exact for "is there leakage" and counts the boundaries where it happens.
    """
    if data.recording is None or data.start is None:
        raise UserError("dataset has no recording/start per window")
    T = data.window_length
    idx = np.concatenate([a, b])
    side = np.concatenate([np.zeros(len(a), bool), np.ones(len(b), bool)])
    rec = data.recording[idx]
    start = data.start[idx]
    order = np.lexsort((start, rec))
    rec, start, side = rec[order], start[order], side[order]
    same_rec = rec[1:] == rec[:-1]
    overlap = start[1:] < start[:-1] + T
    cross = side[1:] != side[:-1]
    # Identical windows (same recording and start) listed on both sides also count here.
    return int(np.count_nonzero(same_rec & overlap & cross))


def split_report(
    data: HARData, split: Split, name: str | None = None, extra: dict | None = None
) -> dict[str, Any]:
    """What went where, and whether anything is shared between train, validation and test.

    ``clean`` is false when a window index, a subject or a sample of a recording (overlapping
    windows) appears on two sides. :func:`assert_clean` turns that into an error unless the
    split was an explicit leaky one (``split.leakage_allowed``).
    """
    parts = split.parts()
    n = len(data.y)
    problems: list[str] = []
    report: dict[str, Any] = {
        "dataset": data.name,
        "split": name or split.kind,
        "kind": split.kind,
        "leakage_allowed": bool(split.leakage_allowed),
        "clean": True,
        "num_windows": n,
        "window_length": int(data.X.shape[2]) if data.X.ndim == 3 else list(data.X.shape[2:]),
        "sampling_rate_hz": data.sampling_rate_hz,
        "parts": {},
        "checks": {},
        "info": dict(split.info),
        # The loader's notes (skipped malformed lines, unaligned samples, cache) belong with the
        # run: they say what the numbers were computed on.
        "dataset_info": dict(data.info),
    }
    used = np.zeros(n, dtype=np.int64)
    for part, idx in parts.items():
        idx = np.asarray(idx)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise UserError(f"split {part} has window indices outside 0..{n - 1}")
        np.add.at(used, idx, 1)
        dup = len(idx) - len(np.unique(idx))
        if dup:
            problems.append(f"{dup} windows are listed twice in {part}")
        subjects, sub_counts = np.unique(data.subjects[idx], return_counts=True)
        class_counts = np.bincount(data.y[idx], minlength=data.num_classes)
        listed = len(subjects) <= MAX_LISTED_SUBJECTS
        report["parts"][part] = {
            "windows": int(len(idx)),
            "num_subjects": int(len(subjects)),
            # Datasets without subjects (UEA, images) have one id per sample: tens of thousands
            # of ids would bury the report, so only counts are kept for them.
            "subjects": [int(s) for s in subjects] if listed else None,
            "windows_per_subject": {
                str(int(s)): int(c) for s, c in zip(subjects, sub_counts, strict=True)
            }
            if listed
            else None,
            "per_class": {c: int(k) for c, k in zip(data.class_names, class_counts, strict=True)},
            "missing_classes": [
                c for c, k in zip(data.class_names, class_counts, strict=True) if k == 0
            ],
        }
    report["unused_windows"] = int(np.count_nonzero(used == 0))

    shared_windows: dict[str, int] = {}
    shared_subjects: dict[str, list[int]] = {}
    overlaps: dict[str, int] | None = {}
    overlap_note = "checked: same recording, overlapping [start, start + window) ranges"
    if data.recording is None or data.start is None:
        overlaps = None
        overlap_note = (
            "not checkable: the dataset gives no recording/start per window (pre-cut "
            "windows); subject disjointness covers it"
        )
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            key = f"{a}/{b}"
            shared = np.intersect1d(parts[a], parts[b])
            shared_windows[key] = int(len(shared))
            subj = np.intersect1d(data.subjects[parts[a]], data.subjects[parts[b]])
            shared_subjects[key] = [int(s) for s in subj[:MAX_LISTED_SUBJECTS]]
            if len(shared):
                problems.append(f"{len(shared)} windows are in both {a} and {b}")
            if len(subj):
                problems.append(
                    f"{len(subj)} subjects are in both {a} and {b}: {_abbrev(shared_subjects[key])}"
                )
            if overlaps is not None:
                k = overlapping_windows(data, parts[a], parts[b])
                overlaps[key] = k
                if k:
                    problems.append(
                        f"{k} pairs of {a}/{b} windows overlap in time within one recording"
                    )
    report["checks"] = {
        "shared_windows": shared_windows,
        "shared_subjects": shared_subjects,
        "overlapping_windows": overlaps,
        "overlap_check": overlap_note,
    }
    report["problems"] = problems
    report["clean"] = not problems
    if extra:
        report.update(extra)
    return report


def assert_clean(report: dict[str, Any]) -> None:
    """Fail the run when the split leaks, unless leakage was explicitly allowed (then warn)."""
    if report["clean"]:
        return
    detail = "; ".join(report["problems"])
    if report.get("leakage_allowed"):
        log.warning("split %s leaks (allowed by split.allow_leakage): %s", report["split"], detail)
        return
    raise UserError(
        f"split {report['split']} leaks: {detail} (the run directory's split report lists it)"
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

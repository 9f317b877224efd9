"""Subject-disjoint splits, fold coverage, and the split report's leakage check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from har_bench.data.base import HARData
from har_bench.data.splits import (
    Split,
    assert_clean,
    group_kfold_split,
    loso_split,
    official_split,
    random_split,
    split_report,
    subject_folds,
    subjects_split,
)
from har_bench.data.synthetic import load_synthetic
from har_bench.data.windowing import Recording, window_recordings


def windowed(subjects=(1, 2, 3, 4, 5, 6, 7), n=64, window=8, step=4) -> HARData:
    """Overlapping windows (step < window) from one recording per subject with 2 labels."""
    recs = [
        Recording(np.random.default_rng(s).standard_normal((n, 2)), np.repeat([0, 1], n // 2), s)
        for s in subjects
    ]
    w = window_recordings(recs, window, step)
    return HARData(
        name="toy",
        X=w.X,
        y=w.y,
        subjects=w.subjects,
        class_names=["a", "b"],
        channel_names=["c0", "c1"],
        recording=w.recording,
        start=w.start,
    )


def test_loso_sweep_covers_every_subject_once():
    data = windowed()
    ids = sorted(set(data.subjects.tolist()))
    seen = []
    for fold in range(len(ids)):
        split = loso_split(data, fold=fold, val_fraction=0.2, seed=3)
        subj = split.subjects(data)
        assert len(subj["test"]) == 1
        seen += subj["test"]
        assert subj["val"] and not set(subj["val"]) & set(subj["train"])
        assert sorted([*split.train, *split.val, *split.test]) == list(range(len(data.y)))
        assert split_report(data, split)["clean"]
    assert seen == ids
    with pytest.raises(ValueError, match=r"split.fold=7 .* 0..6"):
        loso_split(data, fold=7)


def test_group_kfold_sweep_covers_every_subject_once_and_balances():
    data = load_synthetic(num_subjects=11, windows_per_subject=10)
    folds = subject_folds(data, 4)
    assert sorted(s for f in folds for s in f) == list(range(1, 12))
    tested = []
    for fold in range(4):
        split = group_kfold_split(data, n_splits=4, fold=fold, seed=0)
        tested += split.subjects(data)["test"]
        assert split.info["fold"] == fold and split.kind == "group_kfold"
    assert sorted(tested) == list(range(1, 12))
    assert {len(f) for f in folds} == {2, 3}  # equal windows per subject: near-equal folds
    # Fold membership does not depend on the seed (a sweep must not reshuffle folds).
    assert group_kfold_split(data, 4, 1, seed=1).test.tolist() == (
        group_kfold_split(data, 4, 1, seed=2).test.tolist()
    )
    with pytest.raises(ValueError, match="split.fold=4"):
        group_kfold_split(data, n_splits=4, fold=4)
    with pytest.raises(ValueError, match="split.n_splits=12"):
        group_kfold_split(data, n_splits=12)


def test_subjects_split_explicit_lists_and_errors():
    data = load_synthetic(num_subjects=6, windows_per_subject=5)
    split = subjects_split(data, test_subjects=[2, 5], val_subjects=[1])
    assert split.subjects(data) == {"train": [3, 4, 6], "val": [1], "test": [2, 5]}
    drawn = subjects_split(data, test_subjects=[2], val_fraction=0.4, seed=0)
    assert len(drawn.subjects(data)["val"]) == 2 and 2 not in drawn.subjects(data)["val"]
    with pytest.raises(ValueError, match=r"split.test_subjects has subjects \[99\]"):
        subjects_split(data, test_subjects=[99])
    with pytest.raises(ValueError, match="share subjects"):
        subjects_split(data, test_subjects=[2], val_subjects=[2])
    with pytest.raises(ValueError, match="empty"):
        subjects_split(data, test_subjects=[])
    with pytest.raises(ValueError, match=r"split.val_subjects entry 'a' is invalid"):
        subjects_split(data, test_subjects=[2], val_subjects=[1, "a"])


def test_official_split_needs_one_and_keeps_validation_in_training_subjects():
    data = windowed()
    with pytest.raises(ValueError, match="no official"):
        official_split(data)
    syn = load_synthetic(num_subjects=10, windows_per_subject=4)
    split = official_split(syn, val_fraction=0.3, seed=1)
    subj = split.subjects(syn)
    train_subjects = set(syn.subjects[syn.official_split == "train"].tolist())
    assert set(subj["val"]) <= train_subjects and len(subj["val"]) == 3
    with pytest.raises(ValueError, match="split.val_fraction=1.0"):
        official_split(syn, val_fraction=1.0)


def test_random_split_refused_without_opt_in_then_recorded(caplog):
    data = windowed()
    with pytest.raises(ValueError, match="allow_leakage"):
        random_split(data)
    split = random_split(data, allow_leakage=True, seed=0)
    assert "allow_leakage=true" in caplog.text
    report = split_report(data, split, name="random")
    assert not report["clean"] and report["leakage_allowed"]
    assert report["checks"]["shared_subjects"]["train/test"]
    assert sum(report["checks"]["overlapping_windows"].values()) > 0
    assert_clean(report)  # allowed: warns, does not raise
    assert "leaks (allowed" in caplog.text


def test_report_catches_planted_overlap_even_without_shared_subject_ids():
    data = windowed(subjects=(1, 2, 3))
    split = loso_split(data, fold=0, val_fraction=0.5, seed=0)
    report = split_report(data, split)
    assert report["clean"] and report["problems"] == []
    # Plant: give one test window the recording of a training window, overlapping it, and
    # relabel its subject so the subject check alone would not notice.
    tr, te = split.train[0], split.test[0]
    data.recording[te] = data.recording[tr]
    data.start[te] = data.start[tr] + 3
    data.subjects[te] = 1  # subject 1 is the test subject already
    bad = split_report(data, split)
    assert not bad["clean"]
    # It overlaps the training windows starting at +0 and +4: two neighbouring pairs.
    assert bad["checks"]["overlapping_windows"]["train/test"] == 2
    assert bad["checks"]["shared_subjects"]["train/test"] == []
    with pytest.raises(ValueError, match="train/test windows overlap in time"):
        assert_clean(bad)
    # Touching but not overlapping is fine: right after the recording's last train window.
    same = split.train[data.recording[split.train] == data.recording[tr]]
    data.start[te] = data.start[same].max() + 8
    assert split_report(data, split)["clean"]


def test_report_catches_shared_window_and_subject():
    data = windowed(subjects=(1, 2, 3, 4))
    split = loso_split(data, fold=0, val_fraction=0.3, seed=0)
    leaky = Split(
        train=np.append(split.train, split.test[:2]), val=split.val, test=split.test, kind="x"
    )
    report = split_report(data, leaky, name="x")
    assert report["checks"]["shared_windows"]["train/test"] == 2
    assert report["checks"]["shared_subjects"]["train/test"] == [1]
    with pytest.raises(ValueError, match="split x leaks: 2 windows are in both train and test"):
        assert_clean(report)


def test_report_contents_per_split_and_class():
    data = load_synthetic(num_subjects=6, windows_per_subject=8, num_classes=4)
    split = official_split(data, val_fraction=0.25, seed=0)
    report = json.loads(json.dumps(split_report(data, split, name="official")))  # serialisable
    parts = report["parts"]
    assert sum(p["windows"] for p in parts.values()) == report["num_windows"] == 48
    for name, idx in split.parts().items():
        assert parts[name]["windows"] == len(idx)
        assert sum(parts[name]["per_class"].values()) == len(idx)
        assert sum(parts[name]["windows_per_subject"].values()) == len(idx)
        assert parts[name]["subjects"] == split.subjects(data)[name]
    assert report["checks"]["overlapping_windows"] is None  # pre-cut windows
    assert "not checkable" in report["checks"]["overlap_check"]
    assert report["unused_windows"] == 0


def test_report_keeps_counts_only_for_per_sample_ids():
    data = load_synthetic(num_subjects=2500, windows_per_subject=1, window=8)
    report = split_report(data, official_split(data, val_fraction=0.2, seed=0))
    train = report["parts"]["train"]
    assert train["subjects"] is None and train["windows_per_subject"] is None
    assert train["num_subjects"] == train["windows"] > 1000 and report["clean"]

"""The evaluation guards, each fed the fault it exists to catch.

No subject on two sides of a split, standardisation statistics from the training windows only,
per-class figures that mean what scikit-learn means, export parity measured against the eager
model, and a refit record that names the subjects the refit really trained on. Each test fails
when its guard is disabled (docs/mutation.md lists how that was checked).
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support
from torch import nn

from har_bench.core.metrics import classification_metrics, confusion_counts, row_normalise
from har_bench.data.base import HARData
from har_bench.data.splits import (
    Split,
    assert_clean,
    check_disjoint,
    group_kfold_split,
    official_split,
    split_report,
    standardise,
    subjects_split,
)
from har_bench.data.synthetic import load_synthetic
from har_bench.deploy.report import Form, build_report
from har_bench.experiment.fit import refit
from har_bench.experiment.prepare import prepare_data
from har_bench.experiment.spec import Training
from har_bench.training.engine import Trainer


def toy(subjects: list[int]) -> HARData:
    n = len(subjects)
    return HARData(
        name="toy",
        X=np.zeros((n, 1, 4), np.float32),
        y=np.arange(n) % 2,
        subjects=np.asarray(subjects),
        class_names=["a", "b"],
        channel_names=["c"],
    )


def split(train: list[int], val: list[int], test: list[int]) -> Split:
    return Split(np.asarray(train, int), np.asarray(val, int), np.asarray(test, int))


# -- 1. a leaky split is refused, by name ------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        (([0, 1], [2], [1, 3]), r"1 windows are in both train and test"),
        (([0, 1], [1, 2], [3]), r"1 windows are in both train and val"),
        (([0], [1, 2], [2, 3]), r"1 windows are in both val and test"),
        # Different windows, one person: windows 1 and 4 are both subject 11's.
        (([0, 1], [2], [4]), r"subjects \[11\] are in both train and test"),
        (([0, 1], [4], [3]), r"subjects \[11\] are in both train and val"),
        (([0], [2], [3, 5]), r"subjects \[12\] are in both val and test"),
    ],
)
def test_check_disjoint_refuses_a_hand_made_leaky_split(parts, message):
    data = toy([10, 11, 12, 13, 11, 12])
    with pytest.raises(ValueError, match=rf"^split leaks: {message}$"):
        check_disjoint(data, split(*parts))


def test_check_disjoint_passes_a_clean_split():
    data = toy([10, 11, 12, 13, 11, 12])
    check_disjoint(data, split([0, 1, 4], [2, 5], [3]))
    check_disjoint(data, split([0, 1, 4], [], [2, 3, 5]))  # no validation part


# -- 2. standardisation statistics come from the training windows ------------------------------


def shifted_test_data() -> HARData:
    """Synthetic windows whose test subjects are offset by +5 and scaled by 3 per channel, so
    any statistic that looks at them differs from the training windows' one."""
    data = load_synthetic(num_subjects=6, windows_per_subject=6, window=16, num_channels=3)
    is_test = data.official_split == "test"
    data.X[is_test] = data.X[is_test] * 3 + 5
    data.X[:, 2] = 7.0  # a constant channel stays constant instead of dividing by zero
    return data


def test_standardise_uses_the_training_windows_statistics_only():
    data = shifted_test_data()
    train = np.flatnonzero(data.official_split == "train")
    X, mean, std = standardise(data.X, train)
    expected_mean = data.X[train].mean(axis=(0, 2), dtype=np.float64)
    expected_std = data.X[train].std(axis=(0, 2), dtype=np.float64)
    np.testing.assert_allclose(mean[:2], expected_mean[:2], rtol=1e-5)
    np.testing.assert_allclose(std[:2], expected_std[:2], rtol=1e-5)
    assert mean[2] == pytest.approx(7.0) and std[2] == 1.0
    # All windows' statistics are far from these: test windows did not leak in.
    everything = data.X.mean(axis=(0, 2)), data.X.std(axis=(0, 2))
    assert np.all(np.abs(everything[0][:2] - mean[:2]) > 0.5)
    assert np.all(np.abs(everything[1][:2] - std[:2]) > 0.5)
    # The training windows come out at mean 0, std 1; the test ones stay shifted.
    np.testing.assert_allclose(X[train].mean(axis=(0, 2))[:2], 0, atol=1e-4)
    np.testing.assert_allclose(X[train].std(axis=(0, 2))[:2], 1, atol=1e-4)
    np.testing.assert_array_equal(X[:, 2], 0.0)
    assert X.dtype == np.float32 and mean.dtype == np.float32 and std.dtype == np.float32
    test = data.official_split == "test"
    assert np.all(X[test].mean(axis=(0, 2))[:2] > 1)


def test_standardise_works_per_channel_for_images_too():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 3, 4, 4)).astype(np.float32) * [[[[1.0]], [[2.0]], [[3.0]]]]
    X[5:] += 10  # windows 5.. are not in training
    Z, mean, std = standardise(X.astype(np.float32), np.arange(5))
    np.testing.assert_allclose(mean, X[:5].mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, X[:5].std(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(Z[:5].mean(axis=(0, 2, 3)), 0, atol=1e-5)


def test_prepared_data_is_standardised_with_the_training_part_only(tmp_path):
    data = shifted_test_data()
    prepared = prepare_data(
        lambda: data, lambda d: official_split(d, val_fraction=0.25, seed=0), "official", tmp_path
    )
    train = prepared.split.train
    np.testing.assert_allclose(prepared.mean[:2], data.X[train].mean(axis=(0, 2))[:2], rtol=1e-5)
    np.testing.assert_allclose(prepared.std[:2], data.X[train].std(axis=(0, 2))[:2], rtol=1e-5)
    # Neither the validation nor the test windows counted.
    with_val = np.concatenate([train, prepared.split.val])
    assert np.abs(prepared.mean[:2] - data.X[with_val].mean(axis=(0, 2))[:2]).max() > 1e-3
    np.testing.assert_allclose(prepared.train.X.mean(dim=(0, 2))[:2], 0, atol=1e-4)
    # Each part carries the dataset indices of its rows.
    for name, part in (("train", prepared.train), ("val", prepared.val), ("test", prepared.test)):
        np.testing.assert_array_equal(part.index, getattr(prepared.split, name))
        np.testing.assert_array_equal(part.y.numpy(), data.y[part.index])


# -- 3. export parity is measured against the eager model's logits -----------------------------


def test_export_parity_compares_each_form_with_its_reference(tmp_path):
    rng = np.random.default_rng(0)
    eager = rng.normal(size=(6, 3)).astype(np.float32)
    fp32 = eager.copy()
    fp32[0] += [0.0, 0.0, 0.25]  # the largest difference anywhere
    fp32[1] += 0.01
    fp32[3] += 0.2  # so int8 against eager would differ from int8 against fp32
    fp32[2, eager[2].argmin()] += 100.0  # one window changes its class: agreement 5/6
    int8 = np.zeros_like(fp32)  # set below
    y = eager.argmax(1)
    for name, size in (("fp32", 1000), ("int8", 250)):
        (tmp_path / f"{name}.onnx").write_bytes(b"0" * size)
    forms = {
        "eager": Form("eager", "torch", summary={"params": 10, "size_mb": 1.0}, logits=eager),
        "fp32": Form("fp32", "onnxruntime", None, tmp_path / "fp32.onnx", logits=fp32),
        "int8": Form("int8", "onnxruntime", None, tmp_path / "int8.onnx", logits=int8),
    }
    timing = {"p50": 2.0, "p95": 3.0, "repeats": 3}
    run = SimpleNamespace(
        path=tmp_path,
        data=SimpleNamespace(class_names=["a", "b", "c"]),
        choices=SimpleNamespace(model="m", dataset="d"),
        preprocessing=SimpleNamespace(input_shape=[3]),
    )
    rows = build_report(
        run,  # type: ignore[arg-type]
        {k: v for k, v in forms.items() if k != "int8"},
        y,
        {n: timing for n in forms},
        {n: timing for n in forms},
        4,
        1,
    )["forms"]
    assert rows["fp32"]["vs"] == "eager" and "vs" not in rows["eager"]
    assert rows["fp32"]["max_abs_logit_diff"] == pytest.approx(100.0)
    assert rows["fp32"]["agreement"] == pytest.approx(5 / 6)
    assert rows["fp32"]["accuracy"] == pytest.approx(5 / 6) and rows["eager"]["accuracy"] == 1.0
    assert rows["fp32"]["accuracy_delta_points"] == pytest.approx(-100 / 6)

    fp32[2] = eager[2]  # now only the small differences remain
    report = build_report(
        run,  # type: ignore[arg-type]
        {k: v for k, v in forms.items() if k != "int8"},
        y,
        {n: timing for n in forms},
        {n: timing for n in forms},
        4,
        1,
    )
    assert report["forms"]["fp32"]["max_abs_logit_diff"] == pytest.approx(0.25)
    assert report["forms"]["fp32"]["agreement"] == 1.0
    assert report["summary"]["parity_max_abs_logit"] == pytest.approx(0.25)
    parity = {t["key"]: t for t in report["targets"]}
    assert parity["parity_max_abs_logit"]["met"] is False
    assert parity["parity_agreement"]["met"] is True
    # int8 is compared with fp32, the model it was quantised from, not with eager.
    int8[:] = fp32 - 0.5
    int8[3] += [0.0, 0.0, 2.0]
    int8[3, fp32[3].argmax()] += 50.0  # its largest difference, in fp32's class
    int8_row = build_report(
        run,  # type: ignore[arg-type]
        forms,
        y,
        {n: timing for n in forms},
        {n: timing for n in forms},
        4,
        1,
    )["forms"]["int8"]
    expected = np.abs(int8 - fp32)
    assert int8_row["vs"] == "fp32"
    assert int8_row["max_abs_logit_diff"] == pytest.approx(float(expected.max()))
    assert np.abs(int8 - eager).max() != pytest.approx(float(expected.max()))
    assert int8_row["agreement"] == 1.0


# -- 4. per-class figures agree with scikit-learn, class by class ------------------------------


def test_per_class_precision_recall_f1_match_sklearn_per_class():
    rng = np.random.default_rng(1)
    y_true = rng.choice(4, size=400, p=[0.5, 0.3, 0.15, 0.05])
    # Biased errors (class 0 over-predicted): precision and recall differ for every class.
    y_pred = np.where(
        rng.random(400) < 0.6, y_true, rng.choice(4, size=400, p=[0.7, 0.1, 0.1, 0.1])
    )
    names = ["w", "x", "y", "z"]
    m = classification_metrics(y_true, y_pred, names)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(4), zero_division=0)
    assert not np.allclose(p, r)
    for i, name in enumerate(names):
        got = m["per_class"][name]
        assert got["precision"] == pytest.approx(p[i])
        assert got["recall"] == pytest.approx(r[i])
        assert got["f1"] == pytest.approx(f[i])
        assert got["support"] == s[i]
        # And by hand: precision is over the predictions, recall over the truth.
        hits = np.sum((y_true == i) & (y_pred == i))
        assert got["precision"] == pytest.approx(hits / np.sum(y_pred == i))
        assert got["recall"] == pytest.approx(hits / np.sum(y_true == i))
        assert got["accuracy"] == pytest.approx(got["recall"])
    assert m["macro_recall"] == pytest.approx(r.mean())
    assert m["balanced_accuracy"] == pytest.approx(r.mean())
    assert m["num_samples"] == 400


# -- 5. the refit's record is derived from the windows it trained on ---------------------------


def refit_record(
    tmp_path, feed_test: bool, patience: int | None = None, best_epoch: int = 1
) -> tuple[dict, dict]:
    data = load_synthetic(num_subjects=6, windows_per_subject=6, window=16, num_channels=2)
    prepared = prepare_data(
        lambda: data, lambda d: official_split(d, val_fraction=0.25, seed=0), "official", tmp_path
    )
    if feed_test:  # the fault: test windows handed to the refit as if they were validation
        prepared = dataclasses.replace(prepared, val=prepared.test)
    trainer = Trainer(max_epochs=2, batch_size=32, progress=False, device="cpu", patience=patience)
    training = Training(trainer, torch.optim.SGD, None, seed=0, refit=True)

    def make_model(channels: int, classes: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(channels * 16, classes))

    selected = SimpleNamespace(best_epoch=best_epoch)
    refitted = refit(training, make_model, prepared, selected, tmp_path)  # type: ignore[arg-type]
    report = json.loads((tmp_path / "split_report.json").read_text())
    return report, refitted.info


@pytest.mark.parametrize(
    ("patience", "best_epoch", "epochs"),
    [
        (None, 1, 2),  # a fixed schedule: all of it, whatever epoch validation liked
        (1, 3, 3),  # early stopping chose the epoch count
        (1, 0, 1),  # at least one epoch
    ],
)
def test_refit_record_names_the_subjects_it_trained_on(tmp_path, patience, best_epoch, epochs):
    report, info = refit_record(tmp_path, False, patience, best_epoch)
    parts = report["parts"]
    record = report["refit"]
    assert record["test_subjects_in_training"] == []
    assert record["train_subjects"] == sorted(parts["train"]["subjects"] + parts["val"]["subjects"])
    assert record["train_windows"] == parts["train"]["windows"] + parts["val"]["windows"]
    assert record["epochs"] == epochs == len(info["history"])
    assert info["train_subjects"] == record["train_subjects"]
    assert info["epochs_from"] == ("schedule" if patience is None else "best_epoch")


def test_refit_fed_test_windows_is_reported_as_such(tmp_path):
    report, _ = refit_record(tmp_path, feed_test=True)
    test_subjects = report["parts"]["test"]["subjects"]
    assert test_subjects
    assert report["refit"]["test_subjects_in_training"] == test_subjects
    assert set(test_subjects) <= set(report["refit"]["train_subjects"])


# -- what mutation testing found unchecked around the guards ------------------------------------


def test_validation_subjects_are_drawn_by_the_split_seed():
    data = load_synthetic(num_subjects=9, windows_per_subject=2)
    for seed in range(4):
        split = group_kfold_split(data, n_splits=3, fold=1, val_fraction=0.3, seed=seed)
        rest = np.unique(data.subjects[np.concatenate([split.train, split.val])])
        drawn = np.random.default_rng(seed).choice(rest, size=2, replace=False)
        assert split.info["val_subjects"] == sorted(int(s) for s in drawn)


def test_a_refused_or_allowed_leak_names_every_problem(caplog):
    report = {"clean": False, "split": "mine", "problems": ["first", "second"]}
    with pytest.raises(ValueError, match=r"^split mine leaks: first; second \(the run"):
        assert_clean(report)
    with caplog.at_level("WARNING", logger="har_bench.data.splits"):
        assert_clean({**report, "leakage_allowed": True})
    assert caplog.messages == ["split mine leaks (allowed by split.allow_leakage): first; second"]


def test_macro_figures_give_zero_not_one_to_a_class_never_true():
    # Class 2 is predicted but never true: its recall is 0/0, counted as 0.
    m = classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 2]), ["a", "b", "c"])
    assert m["macro_recall"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["per_class"]["c"]["recall"] == 0.0 and m["per_class"]["c"]["precision"] == 0.0


def test_a_class_with_one_window_gets_its_accuracy():
    m = classification_metrics(np.array([0, 0, 1]), np.array([0, 1, 1]), ["a", "b"])
    assert m["per_class"]["b"]["accuracy"] == 1.0 and m["per_class"]["a"]["accuracy"] == 0.5
    norm = row_normalise(confusion_counts(np.array([0, 0, 1]), np.array([0, 1, 1]), 3))
    assert norm.tolist() == [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]


def test_split_report_checks_every_pair_of_parts_and_counts_windows():
    data = toy([10, 11, 12, 13, 11, 12, 14])
    # Subject 12 in validation and test: the pair next to each other in (train, val, test).
    report = split_report(data, split([0, 1, 1], [2], [5, 3]))
    assert not report["clean"]
    assert report["checks"]["shared_subjects"] == {
        "train/val": [],
        "train/test": [],
        "val/test": [12],
    }
    assert report["problems"][0] == "1 windows are listed twice in train"
    assert report["unused_windows"] == 2  # windows 4 and 6
    assert report["parts"]["train"]["missing_classes"] == []
    assert report["parts"]["val"]["missing_classes"] == ["b"]  # window 2 is a
    assert report["parts"]["test"]["missing_classes"] == ["a"]  # windows 5 and 3 are b
    with pytest.raises(ValueError, match=r"^split test has window indices outside 0\.\.6$"):
        split_report(data, split([0], [1], [7]))


def test_validation_hold_out_takes_no_subject_at_zero_and_never_all():
    data = load_synthetic(num_subjects=4, windows_per_subject=2)
    assert len(subjects_split(data, test_subjects=[1, 2], val_fraction=0).val) == 0
    # Two subjects outside the test set: 0.6 of them rounds up to both.
    with pytest.raises(ValueError, match=r"val_fraction=0.6 leaves no training subject"):
        subjects_split(data, test_subjects=[1, 2], val_fraction=0.6)

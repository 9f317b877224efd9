import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score

from har_bench.core.metrics import (
    classification_metrics,
    confusion_counts,
    macro_f1,
    row_normalise,
)


def test_metrics_agree_with_sklearn():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 500)
    y_pred = np.where(rng.random(500) < 0.7, y_true, rng.integers(0, 5, 500))
    names = [f"c{i}" for i in range(5)]
    m = classification_metrics(y_true, y_pred, names)
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert m["macro_precision"] == pytest.approx(precision_score(y_true, y_pred, average="macro"))
    cm = confusion_matrix(y_true, y_pred)
    for i, name in enumerate(names):
        assert m["per_class"][name]["support"] == cm[i].sum()
        assert m["per_class"][name]["accuracy"] == pytest.approx(cm[i, i] / cm[i].sum())
    assert m["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())


def test_absent_class_gives_zero_not_nan():
    m = classification_metrics(np.array([0, 0, 1]), np.array([0, 1, 1]), ["a", "b", "c"])
    assert m["per_class"]["c"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
        "accuracy": 0.0,
    }


def test_confusion_rows_true_columns_predicted_and_normalised():
    cm = confusion_counts(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1]), 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 0], [0, 0, 0]]
    norm = row_normalise(cm)
    assert norm[0].tolist() == pytest.approx([2 / 3, 1 / 3, 0])
    assert norm[2].tolist() == [0, 0, 0]


def test_macro_averages_skip_classes_absent_from_truth_and_predictions():
    # A LOSO test subject who never did class 2: perfect predictions must score 1, not 2/3.
    y = np.array([0, 0, 1, 1])
    m = classification_metrics(y, y, ["a", "b", "c"])
    assert m["macro_f1"] == m["macro_recall"] == m["macro_precision"] == 1.0
    assert m["macro_f1"] == macro_f1(y, y) == m["balanced_accuracy"]
    # A class predicted but never true still counts (as a false positive).
    m = classification_metrics(np.array([0, 0]), np.array([0, 2]), ["a", "b", "c"])
    assert m["macro_f1"] == pytest.approx(macro_f1(np.array([0, 0]), np.array([0, 2])))
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)

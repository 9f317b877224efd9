"""Classification metrics, computed by scikit-learn so the numbers mean what papers mean."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> dict:
    """Accuracy, balanced accuracy, macro P/R/F1, weighted F1 and per-class figures.

    Per-class ``accuracy`` is the diagonal of the row-normalised confusion matrix (the share of
    a class's windows classified correctly), which is what HAR articles plot per class. A class
    absent from ``y_true`` gets recall/accuracy 0 and support 0 rather than a warning.

    Macro averages run over the classes that occur in ``y_true`` or ``y_pred`` (scikit-learn's
    default), not over every class of the dataset: a LOSO test subject who never did an
    activity must not score 0 on it. See :func:`macro_f1`.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    labels = np.arange(len(class_names))
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    mp, mr, mf, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=_present(y_true, y_pred), average="macro", zero_division=0
    )
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    support = cm.sum(axis=1)
    per_class_acc = np.divide(
        np.diag(cm), support, out=np.zeros(len(labels), dtype=float), where=support > 0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "macro_precision": float(mp),
        "macro_recall": float(mr),
        "macro_f1": float(mf),
        "weighted_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
        ),
        "num_samples": int(len(y_true)),
        "per_class": {
            name: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
                "accuracy": float(per_class_acc[i]),
            }
            for i, name in enumerate(class_names)
        },
    }


def _present(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    return np.union1d(np.asarray(y_true), np.asarray(y_pred))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-F1 over the classes present in ``y_true`` or ``y_pred``: the one definition used
    for early stopping, ``best_val_metric`` and the reported ``macro_f1``."""
    if len(y_true) == 0:
        return float("nan")
    return float(
        f1_score(y_true, y_pred, labels=_present(y_true, y_pred), average="macro", zero_division=0)
    )


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    return confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))


def row_normalise(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its total; rows of absent classes stay zero."""
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros(cm.shape, dtype=float), where=totals > 0)

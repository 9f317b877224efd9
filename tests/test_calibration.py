"""Calibrated probabilities: the temperature lowers the NLL of an over-confident model and
leaves a calibrated one alone; --reject labels the unsure windows unknown; a bad P is one line."""

from __future__ import annotations

import numpy as np
import pytest
from cli_helpers import assert_one_line_error
from test_predict import run_cli

from har_bench.core.calibration import (
    UNKNOWN,
    Calibration,
    expected_calibration_error,
    fit_temperature,
    labels_with_reject,
    nll,
    reject_curve,
    softmax,
)


def overconfident(n: int = 2000, classes: int = 4, right: float = 0.7, seed: int = 0):
    """Logits that put ~99.9% on their class while only ``right`` of them are correct."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    pred = np.where(rng.random(n) < right, y, (y + rng.integers(1, classes, n)) % classes)
    logits = rng.normal(0, 0.5, (n, classes))
    logits[np.arange(n), pred] += 8.0
    return logits, y


def test_temperature_lowers_the_nll_of_an_overconfident_model():
    logits, y = overconfident()
    t = fit_temperature(logits, y)
    assert t > 2  # softened
    assert nll(logits, y, t) < 0.5 * nll(logits, y)
    before = expected_calibration_error(softmax(logits), y)
    after = expected_calibration_error(softmax(logits, t), y)
    assert before > 0.25 and after < 0.05
    # The predicted class never changes.
    assert (softmax(logits, t).argmax(1) == logits.argmax(1)).all()


def test_a_calibrated_model_keeps_a_temperature_near_one():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (4000, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(logits)])  # labels drawn from its probs
    assert fit_temperature(logits, y) == pytest.approx(1.0, abs=0.1)


def test_windows_all_right_with_a_margin_leave_the_logits_alone():
    # Every window right: the NLL keeps falling as T shrinks, so these windows cannot fix T,
    # and the search's edge would make any new window's error near-certain.
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 200)
    logits = rng.normal(0, 0.3, (200, 3))
    logits[np.arange(200), y] += 1.0
    assert nll(logits, y, 0.01) < nll(logits, y, 0.1) < nll(logits, y)
    assert fit_temperature(logits, y) == 1.0
    # Ties are no errors either.
    tied = logits.copy()
    tied[0, (y[0] + 1) % 3] = tied[0, y[0]]
    assert fit_temperature(tied, y) == 1.0
    # A class the model cannot score (-inf): no temperature helps, the logits stay.
    unseen = logits.copy()
    unseen[1, y[1]] = -np.inf
    assert fit_temperature(unseen, y) == 1.0
    # One confident error among them and T is determined again.
    logits[0] = 0.0
    logits[0, (y[0] + 1) % 3] = 2.0
    assert 0.01 < fit_temperature(logits, y) < 1.0


def test_calibration_record_on_held_out_and_test_parts():
    logits, y = overconfident()
    test_logits, test_y = overconfident(seed=2)
    c = Calibration.fit(logits, y, "val", "held out", test_logits, test_y)
    assert c.n_windows == len(y) and c.fitted_on == "val"
    for part in ("fit", "test"):
        assert c.ece[part]["after"] < c.ece[part]["before"]
        assert c.nll[part]["after"] < c.nll[part]["before"]
    assert Calibration.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match="positive"):
        Calibration.from_json(c.to_json() | {"temperature": 0})


def test_reject_labels_unknown_below_p():
    probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.3, 0.7], [0.5, 0.5]])
    names = ["sit", "walk"]
    assert list(labels_with_reject(probs, names, None)) == ["sit", "sit", "walk", "sit"]
    assert list(labels_with_reject(probs, names, 0.6)) == ["sit", UNKNOWN, "walk", UNKNOWN]
    # A top probability equal to P is kept.
    assert list(labels_with_reject(probs, names, 0.7)) == ["sit", UNKNOWN, "walk", UNKNOWN]
    assert list(labels_with_reject(probs, names, 0.71)) == ["sit", UNKNOWN, UNKNOWN, UNKNOWN]


def test_reject_curve_trades_coverage_for_accuracy():
    logits, y = overconfident()
    logits[:, 0] += np.random.default_rng(3).normal(0, 4, len(y))  # some unsure windows
    t = fit_temperature(logits, y)
    curve = reject_curve(softmax(logits, t), y)
    cov, acc = np.array(curve["coverage"]), np.array(curve["accuracy"])
    assert curve["threshold"][0] == 0 and cov[0] == 1.0
    assert (np.diff(cov) <= 0).all()  # a higher P keeps fewer windows
    kept = ~np.isnan(acc)
    assert acc[kept][-1] > acc[0]  # and those it keeps are more often right


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2", "abc", "nan"])
def test_bad_reject_is_one_line(tmp_path, value):
    code, err = run_cli("predict", str(tmp_path), "--input", "rec.csv", "--reject", value)
    assert_one_line_error(code, err, f"--reject={value} is invalid", "between 0 and 1")

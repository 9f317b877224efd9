"""Calibrated probabilities: one temperature for the logits, its record, expected calibration
error and the coverage-versus-accuracy trade of rejecting the least confident windows.

Temperature scaling (Guo et al., 2017) divides every logit by one scalar ``T`` fitted to
minimise the negative log-likelihood on held-out windows: the predicted class never changes,
only how sure the probabilities say the model is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from har_bench.core.errors import UserError

# The temperature is searched on log T in this range: wide enough for a network's logits and a
# ridge classifier's small decision scores (MiniRocket); the bound keeps a degenerate fitting
# part (every window wrong) finite.
LOG_T_BOUNDS = (float(np.log(1e-3)), float(np.log(1e3)))
# Equal-width confidence bins of the expected calibration error.
ECE_BINS = 15
# The thresholds of the reject curve: 0 (keep everything) to 0.99.
REJECT_THRESHOLDS = np.round(np.arange(0.0, 1.0, 0.01), 2)
# What a window whose calibrated top probability is below the reject threshold is labelled.
UNKNOWN = "unknown"
# The column of a class's probability in a table of predictions: ``p_<class>`` (predict's
# output, a run's test_predictions.csv).
PROBABILITY_PREFIX = "p_"


def probability_column(class_name: str) -> str:
    return f"{PROBABILITY_PREFIX}{class_name}"


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes under ``softmax(logits / T)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), np.asarray(y, dtype=np.int64)].mean())


def none_wrong(logits: np.ndarray, y: np.ndarray) -> bool:
    """Whether no window's true class is beaten by another class's logit (ties count as not
    wrong: their NLL too only falls as T shrinks)."""
    rivals = np.array(logits, dtype=np.float64)
    picked = (np.arange(len(y)), np.asarray(y, dtype=np.int64))
    true = rivals[picked]
    rivals[picked] = -np.inf
    return bool((true >= rivals.max(axis=1)).all())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the NLL of ``y``. One bounded scalar search (scipy's Brent),
    deterministic and without a learning rate to tune. 1.0 (the logits left alone) for no
    windows, for windows none of which is wrong, and when a window's true class cannot be
    predicted at all (a class the model never saw: its NLL is infinite at every T)."""
    from scipy.optimize import minimize_scalar

    if len(y) == 0 or none_wrong(logits, y) or not np.isfinite(nll(logits, y)):
        # None wrong: the NLL falls for ever as T shrinks, and sharpening to the search's edge
        # would make every new window's error near-certain. Infinite: no T changes it. Either
        # way these windows say nothing about T.
        return 1.0
    res = minimize_scalar(
        lambda log_t: nll(logits, y, float(np.exp(log_t))),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-4},
    )
    t = float(np.exp(res.x))
    # Never worse than leaving the logits alone (the search is on a bounded range).
    return t if nll(logits, y, t) <= nll(logits, y, 1.0) else 1.0


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """The windows' weighted mean gap between confidence (top probability) and accuracy over
    equal-width confidence bins; NaN for no windows."""
    if len(y) == 0:
        return float("nan")
    conf = probs.max(axis=1)
    right = probs.argmax(axis=1) == np.asarray(y)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            gap += in_bin.sum() * abs(conf[in_bin].mean() - right[in_bin].mean())
    return float(gap / len(y))


def reject_curve(
    probs: np.ndarray, y: np.ndarray, thresholds: np.ndarray = REJECT_THRESHOLDS
) -> dict[str, list[float]]:
    """Per threshold P: the share of windows kept (top probability >= P) and the accuracy on
    them (NaN once none is kept)."""
    conf = probs.max(axis=1)
    right = probs.argmax(axis=1) == np.asarray(y)
    coverage, accuracy = [], []
    for p in thresholds:
        kept = conf >= p
        coverage.append(float(kept.mean()) if len(y) else float("nan"))
        accuracy.append(float(right[kept].mean()) if kept.any() else float("nan"))
    return {
        "threshold": [float(t) for t in thresholds],
        "coverage": coverage,
        "accuracy": accuracy,
    }


def labels_with_reject(
    probs: np.ndarray, class_names: list[str] | np.ndarray, reject: float | None
) -> np.ndarray:
    """The predicted class name per window, :data:`UNKNOWN` where the top probability is below
    ``reject``."""
    names = np.asarray(class_names, dtype=object)[probs.argmax(axis=1)]
    if reject is not None:
        names = np.where(probs.max(axis=1) < reject, UNKNOWN, names)
    return names


def check_reject(value: Any, flag: str = "--reject") -> float:
    """``value`` as a probability strictly between 0 and 1, else a UserError naming it."""
    try:
        p = float(value)
    except (TypeError, ValueError):
        p = float("nan")
    if not 0.0 < p < 1.0:
        raise UserError(
            f"{flag}={value} is invalid: expected a probability between 0 and 1 (exclusive), "
            "e.g. 0.6"
        )
    return p


@dataclass(frozen=True)
class Calibration:
    """``calibration.json``: the temperature, which windows it was fitted on and how well the
    probabilities matched the accuracy before and after."""

    temperature: float
    # "val" (held out from the tested model), "val (first phase)" (held out from a refit's first
    # model), "train (leave-one-out)" / "train+val (leave-one-out)", or the windows the tested
    # model was trained on: "train", "train+val"
    fitted_on: str
    n_windows: int
    rule: str  # why those windows, in one sentence
    nll: dict[str, dict[str, float]] = field(default_factory=dict)  # part -> before/after
    ece: dict[str, dict[str, float]] = field(default_factory=dict)  # part -> before/after

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Calibration:
        names = {f.name for f in dataclasses.fields(cls)}
        t = float(obj["temperature"])
        if not np.isfinite(t) or t <= 0:
            raise ValueError(f"temperature {t} is not a positive number")
        return cls(**{k: v for k, v in obj.items() if k in names} | {"temperature": t})

    @classmethod
    def fit(
        cls,
        fit_logits: np.ndarray,
        fit_y: np.ndarray,
        fitted_on: str,
        rule: str,
        test_logits: np.ndarray,
        test_y: np.ndarray,
    ) -> Calibration:
        """The temperature fitted on one part, with NLL and ECE before/after on it and on the
        test part."""
        t = fit_temperature(fit_logits, fit_y)
        figures: dict[str, dict[str, dict[str, float]]] = {"nll": {}, "ece": {}}
        parts = {"fit": (fit_logits, fit_y), "test": (test_logits, test_y)}
        for part, (logits, y) in parts.items():
            if len(y) == 0:
                continue
            for when, temp in (("before", 1.0), ("after", t)):
                figures["nll"].setdefault(part, {})[when] = nll(logits, y, temp)
                figures["ece"].setdefault(part, {})[when] = expected_calibration_error(
                    softmax(logits, temp), y
                )
        return cls(t, fitted_on, int(len(fit_y)), rule, figures["nll"], figures["ece"])

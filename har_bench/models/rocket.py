"""MiniRocket (Dempster et al. 2021): the strong non-deep baseline for time-series classification.

Random dilated convolution features and a ridge classifier whose penalty is chosen by
leave-one-out cross-validation on the training windows: nothing is selected on validation or
test data. With more training windows than ``alpha_search_windows`` (below MiniRocket's ~10,000
features), the penalty is chosen on that many windows drawn at random and the ridge is then
fitted on all of them: scikit-learn's leave-one-out is quick while windows do not outnumber
features and far slower once they do. This wraps aeon's implementation (the
optional extra ``har-bench[rocket]``); it is a scikit-learn estimator, not a torch module, so the
runner fits and predicts it directly instead of training it with the
:class:`~har_bench.training.engine.Trainer`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import RidgeClassifier, RidgeClassifierCV
from sklearn.preprocessing import LabelBinarizer

from har_bench.core.errors import MissingExtraError, UserError

# aeon's grid for the ridge penalty (10^-3 .. 10^3) extended by three of its steps upward, so that
# a choice of aeon's largest value is not a choice at the grid's edge.
ALPHAS = np.logspace(-3, 5, 13)
# Below MiniRocket's ~10,000 features, where scikit-learn's leave-one-out stays quick.
ALPHA_SEARCH_WINDOWS = 8_000
# The leave-one-out scores a temperature is fitted on (when no window is held out) come from at
# most this many training windows (an n x n eigendecomposition of seconds): up to it, exactly the
# tested ridge's; above it, a ridge of the same penalty on a seeded subset of that many.
LOO_WINDOWS = 2_000
# MiniRocket's kernels are 9 samples long; aeon refuses shorter series and advises zero padding.
MIN_LENGTH = 9


def pad_to_min_length(X: np.ndarray) -> np.ndarray:
    """``X`` [N, C, T] as float32, zeros appended after the end up to :data:`MIN_LENGTH`."""
    X = X.astype(np.float32)
    short = MIN_LENGTH - X.shape[-1]
    return np.pad(X, ((0, 0), (0, 0), (0, short))) if short > 0 else X


def leave_one_out_scores(X: np.ndarray, Y: np.ndarray, alpha: float) -> np.ndarray:
    """Each window's ridge scores (targets ``Y`` [N, K], intercept unpenalised) from the ridge
    fitted on all the other windows: ``Y - (Y - fitted) / (1 - h)``, ``h`` the hat matrix's
    diagonal, from one eigendecomposition of the centred Gram matrix. Written out because
    RidgeClassifierCV keeps only the squared leave-one-out errors (unless its penalty is chosen
    by another score)."""
    Xc = np.asarray(X, np.float64)
    Xc = Xc - Xc.mean(axis=0)
    Y = np.asarray(Y, np.float64)
    eigvals, V = np.linalg.eigh(Xc @ Xc.T)
    shrink = np.clip(eigvals, 0.0, None) / (np.clip(eigvals, 0.0, None) + alpha)
    h = (V**2) @ shrink + 1.0 / len(Y)
    mean = Y.mean(axis=0)
    fitted = V @ (shrink[:, None] * (V.T @ (Y - mean))) + mean
    return Y - (Y - fitted) / (1.0 - h)[:, None]


class SubsampledRidgeClassifierCV(ClassifierMixin, BaseEstimator):
    """RidgeClassifierCV whose leave-one-out penalty search sees at most ``max_windows`` windows
    (a seeded random subset); the chosen penalty is then fitted on every window.

    With ``max_windows`` at least the number of windows it is exactly ``RidgeClassifierCV``.
    """

    def __init__(
        self, max_windows: int | None = ALPHA_SEARCH_WINDOWS, random_state: int | None = None
    ) -> None:
        self.max_windows = max_windows
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> SubsampledRidgeClassifierCV:
        search = np.arange(len(y))
        if self.max_windows is not None and len(y) > self.max_windows:
            rng = np.random.default_rng(self.random_state)
            search = np.sort(rng.choice(len(y), self.max_windows, replace=False))
        cv = RidgeClassifierCV(alphas=ALPHAS).fit(X[search], y[search])
        self.search_windows_ = len(search)
        self.alpha_ = float(cv.alpha_)
        self.ridge_ = cv if len(search) == len(y) else RidgeClassifier(alpha=self.alpha_).fit(X, y)
        self.classes_ = self.ridge_.classes_
        self.coef_, self.intercept_ = self.ridge_.coef_, self.ridge_.intercept_
        return self

    def leave_one_out_decision(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Scores of the windows ``X`` (labels ``y``), each from this penalty's ridge fitted on
        the other windows given: the shape of :meth:`decision_function`'s."""
        # The ridge's own ±1 targets; one column for two classes, as its decision_function.
        Y = LabelBinarizer(pos_label=1, neg_label=-1).fit(self.classes_).transform(y)
        scores = leave_one_out_scores(X, Y, self.alpha_)
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.ridge_.decision_function(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.ridge_.predict(X)


class MiniRocket:
    """aeon's ``MiniRocketClassifier`` (MiniRocket transform, scaling, ridge classifier).

    Args:
        in_channels / num_classes: the dataset's, as every model gets them (checked on fit).
        n_kernels: number of random convolution features (aeon's default 10,000).
        max_dilations_per_kernel: as in aeon.
        n_jobs: threads for the transform; -1 = as many as torch uses (a parallel sweep's
            launcher sets that to each job's share of the cores).
        alpha_search_windows: the ridge penalty is chosen by leave-one-out on at most this many
            training windows (null = all; see the module note).
        random_state: seed of the kernels' biases and dilations, and of that subset.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        n_kernels: int = 10_000,
        max_dilations_per_kernel: int = 32,
        n_jobs: int = 1,
        alpha_search_windows: int | None = ALPHA_SEARCH_WINDOWS,
        random_state: int = 0,
    ) -> None:
        try:
            from aeon.classification.convolution_based import MiniRocketClassifier
        except ImportError:
            raise MissingExtraError(
                "model=minirocket needs aeon: pip install 'har-bench[rocket]'"
            ) from None
        if isinstance(n_kernels, bool) or not isinstance(n_kernels, int) or n_kernels < 84:
            raise UserError(
                f"model.n_kernels={n_kernels!r} is invalid: expected an integer >= 84 "
                "(MiniRocket uses multiples of its 84 base kernels)"
            )
        if alpha_search_windows is not None and (
            isinstance(alpha_search_windows, bool)
            or not isinstance(alpha_search_windows, int)
            or alpha_search_windows < 2
        ):
            raise UserError(
                f"model.alpha_search_windows={alpha_search_windows!r} is invalid: expected an "
                "integer >= 2, or null to search the penalty on every training window"
            )
        self.in_channels, self.num_classes = in_channels, num_classes
        self.random_state = random_state
        self.classifier = MiniRocketClassifier(
            n_kernels=n_kernels,
            max_dilations_per_kernel=max_dilations_per_kernel,
            estimator=SubsampledRidgeClassifierCV(alpha_search_windows, random_state),
            n_jobs=torch.get_num_threads() if n_jobs == -1 else n_jobs,
            random_state=random_state,
        )

    def fit(self, X: np.ndarray, y: np.ndarray) -> MiniRocket:
        if X.ndim != 3 or X.shape[1] != self.in_channels:
            raise UserError(
                f"model=minirocket takes windows [N, {self.in_channels}, T], got {X.shape}"
            )
        self.classifier.fit(pad_to_min_length(X), y)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Ridge scores [N, num_classes]; their argmax is the prediction. A class never seen
        in training scores -inf."""
        return self._class_columns(
            self.classifier.pipeline_.decision_function(pad_to_min_length(X))
        )

    def held_out_scores(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For the temperature when no window is held out: the windows ``X`` it was fitted on
        (labels ``y``), each scored by the ridge fitted without it, and their labels. Above
        :data:`LOO_WINDOWS` windows, a seeded subset of that many, scored by leave-one-out
        among themselves. Not part of fitting: a run does not count it as training time."""
        keep = np.arange(len(y))
        if len(y) > LOO_WINDOWS:
            rng = np.random.default_rng(self.random_state)
            keep = np.sort(rng.choice(len(y), LOO_WINDOWS, replace=False))
        features = self.classifier.pipeline_[:-1].transform(pad_to_min_length(X[keep]))
        ridge = self.classifier.pipeline_[-1]
        return self._class_columns(ridge.leave_one_out_decision(features, y[keep])), y[keep]

    def _class_columns(self, scores: np.ndarray) -> np.ndarray:
        if scores.ndim == 1:
            # scikit-learn's binary ridge gives one score, positive for classes_[1]: the two
            # columns are its two signs.
            scores = np.stack([-scores, scores], axis=1)
        out = np.full((len(scores), self.num_classes), -np.inf, dtype=np.float32)
        out[:, self.classifier.classes_.astype(int)] = scores
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.decision_function(X).argmax(1)

    def summary(self) -> dict[str, Any]:
        """What ``model_summary.json`` holds for a torch model, as far as it applies."""
        ridge = self.classifier.pipeline_[-1]
        n_features = int(ridge.coef_.shape[-1])  # binary: coef_ is 1-D
        params = int(ridge.coef_.size + np.size(ridge.intercept_))
        return {
            "params": params,
            "trainable_params": params,
            "features": n_features,
            "ridge_alpha": ridge.alpha_,
            "ridge_alpha_search_windows": ridge.search_windows_,
            # The transform's multiply-adds per window are data-dependent in aeon's kernels
            # (dilations follow the series length), so no FLOP count is claimed.
            "flops_per_sample": None,
            "macs_per_sample": None,
        }

"""MiniRocket (Dempster et al. 2021): the strong non-deep baseline for time-series classification.

Random dilated convolution features and a ridge classifier whose penalty is chosen by
leave-one-out cross-validation on the training windows: nothing is selected on validation or
test data. This wraps aeon's implementation (the optional extra ``har-bench[rocket]``); it is a
scikit-learn estimator, not a torch module, so the runner fits and predicts it directly instead
of training it with the :class:`~har_bench.engine.Trainer`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class MiniRocket:
    """aeon's ``MiniRocketClassifier`` (MiniRocket transform, scaling, RidgeClassifierCV).

    Args:
        in_channels / num_classes: the dataset's, as every model gets them (checked on fit).
        n_kernels: number of random convolution features (aeon's default 10,000).
        max_dilations_per_kernel: as in aeon.
        n_jobs: threads for the transform (-1 = all cores).
        random_state: seed of the kernels' biases and dilations.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        n_kernels: int = 10_000,
        max_dilations_per_kernel: int = 32,
        n_jobs: int = 1,
        random_state: int = 0,
    ) -> None:
        try:
            from aeon.classification.convolution_based import MiniRocketClassifier
        except ImportError:
            raise ImportError(
                "model=minirocket needs aeon: pip install 'har-bench[rocket]'"
            ) from None
        if isinstance(n_kernels, bool) or not isinstance(n_kernels, int) or n_kernels < 84:
            raise ValueError(
                f"model.n_kernels={n_kernels!r} is invalid: expected an integer >= 84 "
                "(MiniRocket uses multiples of its 84 base kernels)"
            )
        self.in_channels, self.num_classes = in_channels, num_classes
        self.classifier = MiniRocketClassifier(
            n_kernels=n_kernels,
            max_dilations_per_kernel=max_dilations_per_kernel,
            n_jobs=n_jobs,
            random_state=random_state,
        )

    def fit(self, X: np.ndarray, y: np.ndarray) -> MiniRocket:
        if X.ndim != 3 or X.shape[1] != self.in_channels:
            raise ValueError(
                f"model=minirocket takes windows [N, {self.in_channels}, T], got {X.shape}"
            )
        self.classifier.fit(X.astype(np.float32), y)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Ridge scores [N, num_classes]; their argmax is the prediction."""
        scores = self.classifier.pipeline_.decision_function(X.astype(np.float32))
        out = np.full((len(X), self.num_classes), -np.inf, dtype=np.float32)
        out[:, self.classifier.classes_.astype(int)] = scores
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.decision_function(X).argmax(1)

    def summary(self) -> dict[str, Any]:
        """What ``model_summary.json`` holds for a torch model, as far as it applies."""
        ridge = self.classifier.pipeline_[-1]
        n_features = int(ridge.coef_.shape[1])
        params = int(ridge.coef_.size + np.size(ridge.intercept_))
        return {
            "params": params,
            "trainable_params": params,
            "features": n_features,
            "ridge_alpha": float(ridge.alpha_),
            # The transform's multiply-adds per window are data-dependent in aeon's kernels
            # (dilations follow the series length), so no FLOP count is claimed.
            "flops_per_sample": None,
            "macs_per_sample": None,
        }

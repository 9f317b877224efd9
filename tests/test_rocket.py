"""model=minirocket: aeon's MiniRocket behind the same model interface (skipped without aeon)."""

from __future__ import annotations

import numpy as np
import pytest
from hydra.utils import instantiate

pytest.importorskip("aeon", reason="model=minirocket needs the [rocket] extra")


def test_minirocket_config_fits_and_predicts_separable_classes(compose_cfg):
    rng = np.random.default_rng(0)
    n, t = 60, 64
    y = np.repeat([0, 1, 2], n // 3)
    time = np.arange(t)
    # Three frequencies, noisy: trivially separable for random convolution features.
    X = np.stack([np.sin(2 * np.pi * (k + 1) * time / t) for k in y])[:, None, :]
    X = np.repeat(X, 3, axis=1) + 0.3 * rng.standard_normal((n, 3, t))
    cfg = compose_cfg("model=minirocket", "model.n_kernels=168")
    model = instantiate(cfg.model, in_channels=3, num_classes=4)
    model.fit(X[::2].astype(np.float32), y[::2])
    scores = model.decision_function(X[1::2])
    assert scores.shape == (n // 2, 4) and np.isneginf(scores[:, 3]).all()  # class 3 unseen
    assert (model.predict(X[1::2]) == y[1::2]).mean() >= 0.9
    summary = model.summary()
    assert summary["params"] > 0 and summary["flops_per_sample"] is None


def test_leave_one_out_scores_are_the_ridge_fitted_without_each_window():
    from sklearn.linear_model import Ridge

    from har_bench.models.rocket import leave_one_out_scores

    rng = np.random.default_rng(2)
    for n, p in ((25, 60), (40, 8)):  # more features than windows, and fewer
        X = rng.standard_normal((n, p))
        Y = np.sign(rng.standard_normal((n, 3)))
        loo = leave_one_out_scores(X, Y, 1.5)
        for i in (0, n // 2, n - 1):
            alone = Ridge(alpha=1.5).fit(np.delete(X, i, 0), np.delete(Y, i, 0))
            np.testing.assert_allclose(loo[i], alone.predict(X[i : i + 1])[0], atol=1e-9)


def test_minirocket_scores_its_training_windows_held_out(monkeypatch):
    from har_bench.models import rocket
    from har_bench.models.rocket import MiniRocket

    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    t = np.arange(48)
    X = np.sin(2 * np.pi * (y[:, None] + 1) * t / 48)[:, None, :] + 0.8 * rng.standard_normal(
        (40, 1, 48)
    )
    model = MiniRocket(1, 3, n_kernels=84).fit(X, y * 2)  # classes 0 and 2 of three
    scores, labels = model.held_out_scores(X, y * 2)
    fitted = model.decision_function(X)
    assert scores.shape == fitted.shape == (40, 3) and (labels == y * 2).all()
    assert np.isneginf(scores[:, 1]).all()
    # Each window scored without itself: its miss of its own ±1 target is the fitted score's,
    # enlarged (divided by 1 - its leverage).
    target = np.where(labels == 2, 1.0, -1.0)
    miss, fitted_miss = target - scores[:, 2], target - fitted[:, 2]
    assert (np.sign(miss) == np.sign(fitted_miss)).all()
    assert (np.abs(miss) >= np.abs(fitted_miss) - 1e-5).all()
    assert np.abs(miss).mean() > 1.05 * np.abs(fitted_miss).mean()
    # Above LOO_WINDOWS windows: a seeded subset of that many, scored among themselves.
    monkeypatch.setattr(rocket, "LOO_WINDOWS", 25)
    sub_scores, sub_labels = model.held_out_scores(X, y * 2)
    again = model.held_out_scores(X, y * 2)
    assert sub_scores.shape == (25, 3) and np.array_equal(sub_scores, again[0])
    assert np.isin(sub_labels, [0, 2]).all() and np.array_equal(sub_labels, again[1])


def test_minirocket_bad_settings_name_the_key():
    from har_bench.models.rocket import MiniRocket

    with pytest.raises(ValueError, match="model.n_kernels=10 is invalid"):
        MiniRocket(3, 2, n_kernels=10)
    model = MiniRocket(3, 2)
    with pytest.raises(ValueError, match=r"takes windows \[N, 3, T\]"):
        model.fit(np.zeros((4, 2, 16), np.float32), np.array([0, 1, 0, 1]))


def test_penalty_search_on_a_subset_is_ridge_cv_when_the_subset_is_everything():
    from sklearn.linear_model import RidgeClassifierCV

    from har_bench.models.rocket import ALPHAS, SubsampledRidgeClassifierCV

    rng = np.random.default_rng(1)
    X = rng.standard_normal((120, 10)).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.standard_normal(120) > 0).astype(int)
    full = SubsampledRidgeClassifierCV(max_windows=None).fit(X, y)
    reference = RidgeClassifierCV(alphas=ALPHAS).fit(X, y)
    assert full.alpha_ == reference.alpha_ and full.search_windows_ == 120
    np.testing.assert_allclose(full.decision_function(X), reference.decision_function(X), rtol=1e-5)

    sub = SubsampledRidgeClassifierCV(max_windows=40, random_state=0).fit(X, y)
    again = SubsampledRidgeClassifierCV(max_windows=40, random_state=0).fit(X, y)
    assert sub.search_windows_ == 40 and sub.alpha_ == again.alpha_
    assert sub.alpha_ in ALPHAS
    # The chosen penalty is fitted on every window, not only the searched ones.
    refit = RidgeClassifierCV(alphas=[sub.alpha_]).fit(X, y)
    np.testing.assert_allclose(sub.coef_, refit.coef_, rtol=1e-4, atol=1e-6)


def test_minirocket_records_how_its_penalty_was_chosen(compose_cfg):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 2, 32)).astype(np.float32)
    y = np.arange(30) % 2
    cfg = compose_cfg("model=minirocket", "model.n_kernels=84", "model.alpha_search_windows=20")
    model = instantiate(cfg.model, in_channels=2, num_classes=2).fit(X, y)
    summary = model.summary()
    assert summary["ridge_alpha_search_windows"] == 20 and summary["ridge_alpha"] > 0
    from har_bench.models.rocket import MiniRocket

    with pytest.raises(ValueError, match="model.alpha_search_windows=1 is invalid"):
        MiniRocket(2, 2, alpha_search_windows=1)


def test_minirocket_two_classes_score_one_column_per_class():
    from har_bench.models.rocket import MiniRocket

    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    t = np.arange(48)
    X = np.sin(2 * np.pi * (y[:, None] + 1) * t / 48)[:, None, :] + 0.2 * rng.standard_normal(
        (40, 1, 48)
    )
    train, test = slice(0, 20), slice(20, 40)
    model = MiniRocket(1, 2, n_kernels=84).fit(X[train], y[train])
    scores = model.decision_function(X[test])
    assert scores.shape == (20, 2) and np.isfinite(scores).all()
    # The prediction is aeon's own.
    assert (scores.argmax(1) == model.classifier.predict(X[test].astype(np.float32))).all()
    assert (model.predict(X[test]) == y[test]).mean() >= 0.9
    # Two classes seen in training out of three: the unseen one scores -inf.
    three = MiniRocket(1, 3, n_kernels=84).fit(X[train], y[train] * 2)
    assert np.isneginf(three.decision_function(X[test])[:, 1]).all()


def test_minirocket_pads_series_shorter_than_its_kernels():
    from har_bench.models.rocket import MIN_LENGTH, MiniRocket

    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 2, 3)).astype(np.float32)
    y = np.arange(20) % 3
    model = MiniRocket(2, 3, n_kernels=84).fit(X, y)
    assert model.decision_function(X[:4]).shape == (4, 3)
    padded = np.concatenate([X[:4], np.zeros((4, 2, MIN_LENGTH - 3), np.float32)], axis=2)
    np.testing.assert_array_equal(model.decision_function(X[:4]), model.decision_function(padded))

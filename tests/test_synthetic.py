from __future__ import annotations

import math

import numpy as np
import pytest

from har_bench.data import HARData, load_synthetic


def test_shapes_and_contract():
    data = load_synthetic(
        num_subjects=5, windows_per_subject=8, num_classes=3, num_channels=2, window=32
    )
    assert isinstance(data, HARData)
    assert data.X.shape == (40, 2, 32) and data.X.dtype == np.float32
    assert data.y.dtype == np.int64 and data.subjects.dtype == np.int64
    assert set(data.y.tolist()) == {0, 1, 2}
    assert data.num_classes == 3 and data.num_channels == 2 and data.window_length == 32
    assert np.isfinite(data.X).all()


def test_deterministic_per_seed():
    a, b = load_synthetic(seed=3), load_synthetic(seed=3)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.official_split, b.official_split)
    assert not np.array_equal(a.X, load_synthetic(seed=4).X)


@pytest.mark.parametrize(("num_subjects", "test_fraction"), [(10, 0.3), (7, 0.2), (2, 0.5)])
def test_split_is_subject_disjoint(num_subjects, test_fraction):
    data = load_synthetic(num_subjects=num_subjects, test_fraction=test_fraction)
    test = data.official_split == "test"
    n_test = math.ceil(test_fraction * num_subjects)
    assert set(data.subjects[test]) == set(range(num_subjects - n_test + 1, num_subjects + 1))
    assert not set(data.subjects[test]) & set(data.subjects[~test])
    assert set(data.official_split) == {"train", "test"}


def test_learnable_above_chance():
    # Nearest class centroid on the FFT magnitude spectrum, trained on train subjects only:
    # a crude stand-in for a CNN that must already beat chance by a wide margin.
    data = load_synthetic(seed=0)
    feats = np.abs(np.fft.rfft(data.X, axis=-1)).reshape(len(data.X), -1)
    train = data.official_split == "train"
    centroids = np.stack([feats[train & (data.y == k)].mean(0) for k in range(data.num_classes)])
    dist = ((feats[~train, None, :] - centroids[None]) ** 2).sum(-1)
    acc = (dist.argmin(1) == data.y[~train]).mean()
    assert acc > 1 / data.num_classes + 0.3


def test_noise_makes_it_harder():
    def centroid_acc(noise: float) -> float:
        data = load_synthetic(noise=noise, seed=1)
        feats = np.abs(np.fft.rfft(data.X, axis=-1)).reshape(len(data.X), -1)
        tr = data.official_split == "train"
        c = np.stack([feats[tr & (data.y == k)].mean(0) for k in range(data.num_classes)])
        pred = ((feats[~tr, None] - c[None]) ** 2).sum(-1).argmin(1)
        return float((pred == data.y[~tr]).mean())

    assert centroid_acc(0.1) >= centroid_acc(3.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_subjects": 1}, "dataset.num_subjects=1 is invalid: expected an integer >= 2"),
        ({"num_classes": 1}, "dataset.num_classes=1 is invalid: expected an integer >= 2"),
        ({"num_channels": 0}, "dataset.num_channels=0 is invalid: expected an integer >= 1"),
        ({"windows_per_subject": 0}, "dataset.windows_per_subject=0 is invalid"),
        ({"window": 2}, "dataset.window=2 is invalid: expected an integer >= 8"),
        ({"window": 64.0}, "dataset.window=64.0 is invalid"),
        ({"num_classes": True}, "dataset.num_classes=True is invalid"),
        ({"noise": -1}, "dataset.noise=-1 is invalid: expected a finite number >= 0"),
        ({"noise": True}, "dataset.noise=True is invalid"),
        (
            {"test_fraction": 0},
            r"dataset.test_fraction=0 is invalid: expected a number in \(0, 1\)",
        ),
        ({"test_fraction": 1.5}, r"dataset.test_fraction=1.5 is invalid"),
        ({"num_subjects": 2, "test_fraction": 0.9}, "puts all 2 subjects in the test split"),
        ({"seed": -1}, "dataset.seed=-1 is invalid: expected an integer >= 0"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_synthetic(**kwargs)

"""Sliding windows: never across a label change, a gap or a recording; resampling."""

from __future__ import annotations

import numpy as np
import pytest

from har_bench.data.windowing import Recording, label_runs, resample, window_recordings


def ramp(n: int, channels: int = 2) -> np.ndarray:
    # Value = sample index (channel 1 negated): every window shows where it came from.
    t = np.arange(n, dtype=np.float32)
    return np.stack([t, -t][:channels], axis=1)


def test_windows_never_cross_label_change_or_recording():
    labels = np.array([0] * 10 + [1] * 7 + [0] * 12)
    recs = [Recording(ramp(29), labels, subject=5), Recording(ramp(9), 2, subject=6)]
    w = window_recordings(recs, window=4, step=2)
    # run [0,10): starts 0,2,4,6; run [10,17): 10,12; run [17,29): 17..25 step 2; rec 2: 0,2,4
    assert w.start.tolist() == [0, 2, 4, 6, 10, 12, 17, 19, 21, 23, 25, 0, 2, 4]
    assert w.y.tolist() == [0] * 4 + [1] * 2 + [0] * 5 + [2] * 3
    assert w.recording.tolist() == [0] * 11 + [1] * 3
    assert w.subjects.tolist() == [5] * 11 + [6] * 3
    assert w.X.shape == (14, 2, 4) and w.X.dtype == np.float32
    # Each window holds samples start..start+3, and a single label.
    for x, s, r in zip(w.X, w.start, w.recording, strict=True):
        np.testing.assert_array_equal(x[0], np.arange(s, s + 4))
        window_labels = labels[s : s + 4] if r == 0 else np.full(4, 2)
        assert len(set(window_labels.tolist())) == 1


def test_unlabelled_samples_and_short_pieces_are_skipped():
    labels = np.array([0] * 5 + [-1] * 3 + [1] * 3 + [1] * 0)
    w = window_recordings([Recording(ramp(11), labels, 1)], window=4, step=1)
    assert w.start.tolist() == [0, 1]  # the 3-sample run of class 1 is too short
    empty = window_recordings([Recording(ramp(3), 0, 1)], window=4, step=1)
    assert empty.X.shape == (0, 2, 4)


def test_time_gaps_and_backward_jumps_split_a_recording():
    t = np.array([0, 0.05, 0.1, 0.15, 5.0, 5.05, 5.1, 5.15, 1.0, 1.05, 1.1, 1.15])
    w = window_recordings([Recording(ramp(12), 0, 1, time_s=t)], window=4, step=4, max_gap_s=1)
    assert w.start.tolist() == [0, 4, 8]


def test_step_larger_than_window_and_bad_values():
    w = window_recordings([Recording(ramp(20), 0, 1)], window=3, step=5)
    assert w.start.tolist() == [0, 5, 10, 15]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="dataset.window"):
            window_recordings([], window=bad, step=1)
    with pytest.raises(ValueError, match="channels"):
        window_recordings([Recording(ramp(8, 2), 0, 1), Recording(ramp(8, 1), 0, 1)], 4, 4)


def test_resample_halves_rate_and_keeps_shared_grid():
    # 100 Hz ramp -> 50 Hz: every other sample (after the 2-tap moving average).
    rec = Recording(ramp(40, 1), np.array([0] * 20 + [1] * 20), 1)
    w = window_recordings([rec], window=4, step=4, sampling_rate_hz=100, target_rate_hz=50)
    assert w.start.tolist() == [0, 4, 10, 14]  # second run starts at 100 Hz sample 20 = 10
    # Second-run windows sit on the same 50 Hz grid: start 10 <-> t = 0.2 s.
    np.testing.assert_allclose(w.X[2, 0], [20, 22, 24, 26], atol=0.51)


def test_resample_irregular_timestamps_interpolates():
    t = np.array([0.0, 0.1, 0.25, 0.3, 0.4])
    sig = (t * 10).reshape(-1, 1).astype(np.float32)
    out, grid = resample(sig, t, 10.0)
    np.testing.assert_allclose(grid, [0, 0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(out[:, 0], [0, 1, 2, 3, 4], atol=1e-5)


def test_label_runs():
    assert label_runs(np.array([1, 1, 2, 2, 2, 1])) == [(0, 2, 1), (2, 5, 2), (5, 6, 1)]
    assert label_runs(np.array([])) == []

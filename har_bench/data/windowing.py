"""Sliding windows over continuous recordings.

A *recording* is one uninterrupted stream of samples from one subject (a session, a file, one
activity block). Windows are cut so that none ever spans two labels or two recordings: each
recording is split into runs of constant label (and, when timestamps are given, at gaps in time),
and windows are laid out inside each run. Every window keeps the recording it came from and its
start sample, so a split report can prove that no two windows on different sides of a split
share samples.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from har_bench.core.errors import UserError, check_int, check_memory
from har_bench.data.base import HARData

# Labels below zero mark samples that belong to no class (e.g. PAMAP2's transient activity 0);
# a window never covers one.
UNLABELLED = -1


@dataclass
class Recording:
    """One continuous stream of samples from one subject.

    ``labels`` is one class index per sample, or a single int for the whole recording.
    ``time_s`` (seconds, increasing) is needed only for irregularly sampled data; without it
    samples are taken to be evenly spaced at the loader's sampling rate.
    """

    signal: np.ndarray  # [T, C]
    labels: np.ndarray | int  # [T] int64, or one label for all samples
    subject: int
    time_s: np.ndarray | None = None  # [T]


@dataclass
class Windows:
    X: np.ndarray  # [N, C, window] float32
    y: np.ndarray  # [N] int64
    subjects: np.ndarray  # [N] int64
    recording: np.ndarray  # [N] int64: position of the source recording in the input
    start: np.ndarray  # [N] int64: first sample, on the (resampled) recording's sample grid
    sampling_rate_hz: float | None = None  # of the windows: the target rate when resampled

    def to_data(
        self,
        name: str,
        class_names: list[str],
        channel_names: list[str],
        official_split: np.ndarray | None = None,
        info: dict | None = None,
    ) -> HARData:
        """The windows as dataset ``name``; an error when no recording is long enough for one."""
        if not len(self.y):
            raise UserError(
                f"dataset={name}: no window of {self.X.shape[2]} samples fits in any recording; "
                f"lower dataset.window"
            )
        return HARData(
            name=name,
            X=self.X,
            y=self.y,
            subjects=self.subjects,
            class_names=class_names,
            channel_names=channel_names,
            official_split=official_split,
            sampling_rate_hz=self.sampling_rate_hz,
            recording=self.recording,
            start=self.start,
            info=info or {},
        )


def check_window(window: object, step: object, key: str = "dataset") -> tuple[int, int]:
    """Validate ``window``/``step`` config values (positive integers, step <= window is not
    required: step > window simply skips samples)."""
    return check_int(f"{key}.window", window), check_int(f"{key}.step", step)


@dataclass(frozen=True)
class WindowSpec:
    """A loader's ``dataset.window``/``step``/``resample_hz``/``max_gap_s``: checked by
    :meth:`check` before any file is read, applied by :meth:`cut` once the recordings are."""

    window: int
    step: int
    resample_hz: float | None = None
    max_gap_s: float | None = None

    @classmethod
    def check(
        cls,
        window: object,
        step: object,
        resample_hz: float | None = None,
        max_gap_s: float | None = None,
    ) -> WindowSpec:
        window, step = check_window(window, step)
        for name, value in (("resample_hz", resample_hz), ("max_gap_s", max_gap_s)):
            if value is not None and value <= 0:
                raise UserError(f"dataset.{name}={value!r} is invalid: expected > 0")
        return cls(window, step, resample_hz, max_gap_s)

    def cut(self, recordings: Iterable[Recording], sampling_rate_hz: float | None) -> Windows:
        """:func:`window_recordings` with this config; ``sampling_rate_hz`` is the source's."""
        return window_recordings(
            recordings,
            self.window,
            self.step,
            sampling_rate_hz=sampling_rate_hz,
            target_rate_hz=self.resample_hz,
            max_gap_s=self.max_gap_s,
        )


def label_runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """``(start, stop, label)`` for each maximal run of equal labels."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return []
    change = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [labels.size]])
    return [(int(a), int(b), int(labels[a])) for a, b in zip(starts, stops, strict=True)]


def interpolate_nans(x: np.ndarray) -> int:
    """Fill the NaNs (dropped packets, ``?`` values) of a [T] array, or of each column of a
    [T, C] one, in place: linear inside, the nearest value at the ends, 0 for a column with no
    value at all. Returns how many values were filled."""
    filled = 0
    idx = np.arange(len(x))
    for col in [x] if x.ndim == 1 else [x[:, c] for c in range(x.shape[1])]:  # views into x
        nan = np.isnan(col)
        k = int(nan.sum())
        if not k:
            continue
        filled += k
        col[nan] = np.interp(idx[nan], idx[~nan], col[~nan]) if k < len(col) else 0.0
    return filled


# dataset.nan_policy of the loaders of recordings with gaps: a non-finite sample (an empty
# cell, nan, inf) is refused naming its file and line, or no window covers it, or it is filled
# by linear interpolation within its recording.
NAN_POLICIES = ("error", "drop", "interpolate")


def apply_nan_policy(rec: Recording, policy: str) -> tuple[Recording, int]:
    """``rec`` with its non-finite samples (rows with any non-finite channel) made unlabelled
    (``drop``: windows never cover them, so none spans the gap) or interpolated
    (``interpolate``); returns the new recording and how many samples were touched.
    ``error`` is the loader's to raise, naming the file and line."""
    signal = np.asarray(rec.signal)
    bad = ~np.isfinite(signal).all(axis=1)
    k = int(bad.sum())
    if not k:
        return rec, 0
    signal = signal.astype(np.float64 if signal.dtype == np.float64 else np.float32)
    if policy == "drop":
        labels = np.broadcast_to(np.asarray(rec.labels, dtype=np.int64), bad.shape).copy()
        labels[bad] = UNLABELLED
        signal[bad] = 0.0
        return Recording(signal, labels, rec.subject, rec.time_s), k
    if policy == "interpolate":
        signal[~np.isfinite(signal)] = np.nan
        interpolate_nans(signal)
        return Recording(signal, rec.labels, rec.subject, rec.time_s), k
    raise ValueError(f"nan policy {policy!r}: expected drop or interpolate")


def _moving_average(signal: np.ndarray, width: int) -> np.ndarray:
    """Centred boxcar along time, edge-padded: a cheap anti-alias filter before decimation
    (plain interpolation would fold frequencies above the new Nyquist rate into the band)."""
    if width <= 1 or len(signal) < 2:
        return signal
    pad_lo, pad_hi = width // 2, width - 1 - width // 2
    padded = np.pad(signal, ((pad_lo, pad_hi), (0, 0)), mode="edge")
    csum = np.cumsum(padded, axis=0, dtype=np.float64)
    csum = np.concatenate([np.zeros((1, signal.shape[1])), csum])
    return ((csum[width:] - csum[:-width]) / width).astype(signal.dtype, copy=False)


def resample(
    signal: np.ndarray, time_s: np.ndarray, target_rate_hz: float, t0: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolate ``signal`` [T, C] sampled at ``time_s`` onto an even grid of
    ``target_rate_hz`` starting at ``t0`` (default: the first timestamp).

    When the source is faster than the target, a moving average over one target period is
    applied first (anti-aliasing). Returns (resampled signal, grid times).
    """
    time_s = np.asarray(time_s, dtype=np.float64)
    if len(time_s) < 2:
        return signal[:0], time_s[:0]
    t0 = float(time_s[0]) if t0 is None else t0
    source_rate = 1.0 / float(np.median(np.diff(time_s)))
    factor = source_rate / target_rate_hz
    if factor > 1.5:
        signal = _moving_average(signal, int(round(factor)))
    n = int(math.floor((time_s[-1] - t0) * target_rate_hz + 1e-9)) + 1
    first = int(math.ceil((time_s[0] - t0) * target_rate_hz - 1e-9))
    grid = t0 + np.arange(max(first, 0), n) / target_rate_hz
    out = np.empty((len(grid), signal.shape[1]), dtype=np.float32)
    for c in range(signal.shape[1]):
        out[:, c] = np.interp(grid, time_s, signal[:, c])
    return out, grid


def _segments(
    rec: Recording, max_gap_s: float | None
) -> list[tuple[int, int, int]]:  # (start, stop, label) in sample indices
    n = len(rec.signal)
    if isinstance(rec.labels, numbers.Integral):
        runs = [(0, n, int(rec.labels))] if n else []
    else:
        labels = np.asarray(rec.labels)
        if len(labels) != n:
            raise UserError(f"recording has {n} samples but {len(labels)} labels")
        runs = label_runs(labels)
    if rec.time_s is None or max_gap_s is None:
        return runs
    # A jump back in time is a clock reset or a spliced file: as much a break as a gap.
    d = np.diff(rec.time_s)
    gaps = np.flatnonzero((d > max_gap_s) | (d < 0)) + 1
    if not len(gaps):
        return runs
    out = []
    for a, b, label in runs:
        cuts = [a, *gaps[(gaps > a) & (gaps < b)].tolist(), b]
        out += [(c, d, label) for c, d in zip(cuts[:-1], cuts[1:], strict=True)]
    return out


def window_recordings(
    recordings: Iterable[Recording],
    window: int,
    step: int,
    *,
    sampling_rate_hz: float | None = None,
    target_rate_hz: float | None = None,
    max_gap_s: float | None = None,
    num_channels: int | None = None,
) -> Windows:
    """Cut every recording into windows of ``window`` samples every ``step`` samples.

    Windows never cross a label change, an unlabelled sample (label < 0), a gap in time larger
    than ``max_gap_s`` (only with ``time_s``) or a recording boundary. A trailing piece shorter
    than ``window`` is dropped. With ``target_rate_hz`` each constant-label piece is resampled
    first (timestamps from ``time_s``, else ``sampling_rate_hz``), so ``window`` and ``step``
    count samples at the target rate and ``start`` indexes the recording's target-rate grid.
    """
    window, step = check_window(window, step)
    if target_rate_hz is not None and target_rate_hz <= 0:
        raise UserError(f"dataset.resample_hz={target_rate_hz!r} is invalid: expected > 0")
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    subj: list[np.ndarray] = []
    recs: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    for r, rec in enumerate(recordings):
        signal = np.asarray(rec.signal, dtype=np.float32)
        if signal.ndim != 2:
            raise UserError(f"recording {r}: signal must be [T, C], got shape {signal.shape}")
        if num_channels is None:
            num_channels = signal.shape[1]
        elif signal.shape[1] != num_channels:
            raise UserError(
                f"recording {r} has {signal.shape[1]} channels, expected {num_channels}"
            )
        time_s = rec.time_s
        if target_rate_hz is not None and time_s is None:
            if sampling_rate_hz is None:
                raise UserError("resampling needs timestamps or the source sampling rate")
            time_s = np.arange(len(signal)) / float(sampling_rate_hz)
        seg_rec = Recording(signal, rec.labels, rec.subject, time_s)
        rec_t0 = float(time_s[0]) if time_s is not None and len(time_s) else 0.0
        for a, b, label in _segments(seg_rec, max_gap_s):
            if label < 0:
                continue
            piece = signal[a:b]
            offset = a
            if target_rate_hz is not None:
                assert time_s is not None
                # A grid anchored at the recording's first timestamp: pieces of one recording
                # share one sample grid, so their ``start`` values are comparable.
                piece, grid = resample(piece, time_s[a:b], target_rate_hz, t0=rec_t0)
                if not len(grid):
                    continue
                offset = int(round((grid[0] - rec_t0) * target_rate_hz))
            if len(piece) < window:
                continue
            view = np.lib.stride_tricks.sliding_window_view(piece, window, axis=0)[::step]
            k = len(view)
            xs.append(view)  # [k, C, window]
            ys.append(np.full(k, label, dtype=np.int64))
            subj.append(np.full(k, int(rec.subject), dtype=np.int64))
            recs.append(np.full(k, r, dtype=np.int64))
            starts.append(offset + step * np.arange(k, dtype=np.int64))
    rate = target_rate_hz or sampling_rate_hz
    rate = float(rate) if rate else None
    n = sum(len(v) for v in xs)
    check_memory(
        f"{n:,} windows of {num_channels} channels x {window} samples",
        4.0 * n * (num_channels or 0) * window,
        "lower dataset.window or raise dataset.step",
    )
    if not xs:
        return Windows(
            X=np.empty((0, num_channels or 0, window), dtype=np.float32),
            y=np.empty(0, dtype=np.int64),
            subjects=np.empty(0, dtype=np.int64),
            recording=np.empty(0, dtype=np.int64),
            start=np.empty(0, dtype=np.int64),
            sampling_rate_hz=rate,
        )
    return Windows(
        X=np.ascontiguousarray(np.concatenate(xs), dtype=np.float32),
        y=np.concatenate(ys),
        subjects=np.concatenate(subj),
        recording=np.concatenate(recs),
        start=np.concatenate(starts),
        sampling_rate_hz=rate,
    )


def channel_names(prefixes: Sequence[str], axes: str = "xyz") -> list[str]:
    return [f"{p}_{a}" for p in prefixes for a in axes]

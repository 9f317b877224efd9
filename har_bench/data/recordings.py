"""Your own recordings: CSV or Parquet files with one row per sample, windowed.

Columns: a subject id, a label, a time stamp (optional) and the sensor channels named in the
config; optionally a recording/session id and an official ``train``/``test`` column. Each
(file, subject, recording) block, in file order, is one recording; windows never cross a label
change, a time gap larger than ``max_gap_s`` or a recording. Without a time column the rows are
taken as evenly spaced at ``sampling_rate_hz``. See docs/datasets.md, "Your own recordings".
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from har_bench.core.errors import MissingInputError, UserError
from har_bench.data._io import check_choice
from har_bench.data.base import HARData
from har_bench.data.windowing import NAN_POLICIES, Recording, WindowSpec, apply_nan_policy

TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
SUFFIXES = (".csv", ".csv.gz", ".csv.xz", ".parquet", ".pq")


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        try:
            import pyarrow  # noqa: F401  (pandas' Parquet engine)
        except ImportError:
            raise UserError(
                f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or convert "
                f"the file to CSV"
            ) from None
        df = pd.read_parquet(path)
    else:
        try:
            df = pd.read_csv(path)
        except (ValueError, pd.errors.ParserError) as e:
            raise UserError(f"{path}: cannot be read as CSV ({e})") from e
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(
            f"{path} has no column(s) {missing}; its columns are {list(df.columns)[:20]}"
        )
    return df


def _where(path: Path, row: int) -> str:
    """A data row's place for the user: its line in a CSV (after the header), else its row."""
    if path.name.lower().endswith((".parquet", ".pq")):
        return f"{path}, row {row + 1}"
    return f"{path}, line {row + 2}"


def _shown(value: object) -> str:
    return "empty" if pd.isna(value) else str(value)


def _files(path: Path) -> list[Path]:
    if not path.exists():
        raise MissingInputError(
            f"dataset.path {path} does not exist: give a CSV/Parquet file or a folder of them"
        )
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.name.lower().endswith(SUFFIXES))
    if not files:
        raise MissingInputError(f"dataset.path {path} holds no {', '.join(SUFFIXES)} files")
    return files


def load_recordings(
    path: str | os.PathLike[str],
    channels: list[str],
    subject_column: str = "subject",
    label_column: str = "label",
    time_column: str | None = "time",
    time_unit: str = "s",
    recording_column: str | None = None,
    split_column: str | None = None,
    classes: list[str] | None = None,
    sampling_rate_hz: float | None = None,
    window: int = 128,
    step: int = 64,
    resample_hz: float | None = None,
    max_gap_s: float | None = 1.0,
    nan_policy: str = "error",
) -> HARData:
    """Window the samples of one file or of every CSV/Parquet file in a folder.

    Args:
        channels: sensor columns, in channel order.
        time_column: timestamps (unit ``time_unit``); None = evenly spaced rows at
            ``sampling_rate_hz``.
        recording_column: session id within a subject (optional).
        split_column: ``train``/``test`` per row, for an official split (the whole
            recording must be on one side).
        classes: label values in class order (they become ``class_names``); None = sorted
            distinct labels. Rows whose label is not listed are dropped.
        sampling_rate_hz: needed without a time column; with one, estimated from the median
            spacing when not given.
        nan_policy: an empty, ``nan`` or ``inf`` channel value: ``error`` names its file and
            line; ``drop``: no window covers that row; ``interpolate``: filled linearly within
            its recording.
    """
    spec = WindowSpec.check(window, step, resample_hz, max_gap_s if time_column else None)
    check_choice("dataset.time_unit", time_unit, TIME_UNITS)
    check_choice("dataset.nan_policy", nan_policy, NAN_POLICIES)
    channels = [str(c) for c in channels or []]
    if not channels:
        raise UserError("dataset.channels is empty: name the sensor columns to use")
    if time_column is None and sampling_rate_hz is None and resample_hz is not None:
        raise UserError("dataset.resample_hz needs dataset.time_column or dataset.sampling_rate_hz")
    needed = [subject_column, label_column, *channels]
    needed += [c for c in (time_column, recording_column, split_column) if c]
    frames = []
    files = _files(Path(path).expanduser())
    for i, f in enumerate(files):
        df = _read(f, needed)[needed].copy()
        df["_file"] = i
        df["_row"] = np.arange(len(df))
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    try:
        signal = df[channels].to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise UserError(f"dataset.channels {channels} must be numeric columns ({e})") from None
    finite = np.isfinite(signal)
    if nan_policy == "error" and not finite.all():
        r, c = np.argwhere(~finite)[0]
        raise UserError(
            f"{_where(files[df['_file'].iat[r]], int(df['_row'].iat[r]))}: column "
            f"{channels[c]!r} is {_shown(df[channels[c]].iat[r])}, not a finite number; fix the "
            f"file, or set dataset.nan_policy=drop (no window covers that row) or interpolate"
        )
    try:
        subjects = df[subject_column].to_numpy().astype(np.int64)
    except (ValueError, TypeError):
        raise UserError(f"column {subject_column!r} must hold integer subject ids") from None

    labels_raw = df[label_column].astype(str).to_numpy()
    class_names = [str(c) for c in classes] if classes else sorted(set(labels_raw))
    index = {c: k for k, c in enumerate(class_names)}
    labels = np.array([index.get(v, -1) for v in labels_raw], dtype=np.int64)

    keys = [df["_file"].to_numpy(), subjects]
    if recording_column:
        keys.append(pd.factorize(df[recording_column])[0])
    key = np.stack(keys, axis=1)
    change = np.flatnonzero(np.any(key[1:] != key[:-1], axis=1)) + 1
    starts, stops = np.r_[0, change], np.r_[change, len(df)]

    time_s = None
    if time_column:
        time_s = df[time_column].to_numpy(dtype=np.float64) * TIME_UNITS[time_unit]
        if sampling_rate_hz is None:
            d = np.diff(time_s)
            d = d[d > 0]
            sampling_rate_hz = float(1.0 / np.median(d)) if len(d) else None
    recs = [
        Recording(
            signal[a:b],
            labels[a:b],
            int(subjects[a]),
            None if time_s is None else time_s[a:b] - time_s[a],
        )
        for a, b in zip(starts, stops, strict=True)
    ]
    non_finite = 0
    if nan_policy != "error":
        for i, rec in enumerate(recs):
            recs[i], k = apply_nan_policy(rec, nan_policy)
            non_finite += k
    w = spec.cut(recs, sampling_rate_hz)
    official = None
    if split_column:
        side = df[split_column].astype(str).str.lower().to_numpy()
        unknown = sorted(set(side) - {"train", "test"})
        if unknown:
            raise UserError(f"column {split_column!r} must hold train/test, found {unknown[:5]}")
        rec_side = []
        for a, b in zip(starts, stops, strict=True):
            values = set(side[a:b])
            if len(values) != 1:
                raise UserError(
                    f"column {split_column!r}: a recording (rows {a}..{b - 1}) is partly train, "
                    f"partly test; put whole recordings on one side"
                )
            rec_side.append(values.pop())
        official = np.asarray(rec_side)[w.recording]
    return w.to_data(
        "recordings",
        class_names,
        channels,
        official_split=official,
        info={
            "source": str(path),
            "recordings": len(recs),
            "rows": len(df),
            "rows_with_unlisted_label": int(np.count_nonzero(labels < 0)),
            "nan_policy": nan_policy,
            "rows_non_finite": non_finite,
        },
    )

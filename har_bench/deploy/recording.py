"""Raw recordings read for ``har-bench predict``: CSV or Parquet tables and WISDM raw files, in
the run's channel order, with their time stamps checked (increasing, none missing or repeated;
``--sort-time`` sorts them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from har_bench.core.errors import UserError
from har_bench.data.recordings import TIME_UNITS
from har_bench.data.wisdm import (
    ACTIVITIES_2019,
    SENSORS,
    align_nearest,
    file_name_parts,
    parse_wisdm_file,
)
from har_bench.deploy.loaded import (
    Preprocessing,
)

WISDM_SUFFIXES = (".txt", ".txt.gz", ".txt.xz", ".txt.bz2")
TABLE_SUFFIXES = (".csv", ".csv.gz", ".csv.xz", ".parquet", ".pq")
# Where the WISDM time stamps' nanoseconds become seconds.
NS = 1e-9


class RecordingError(UserError):
    """The recording does not fit the run: channels, length or sampling rate."""


@dataclass
class Stream:
    """A recording in the run's channel order: time in seconds, samples, optional labels."""

    source: str
    time_s: np.ndarray  # [T] float64, increasing
    raw_time: np.ndarray  # [T] the time column as given
    signal: np.ndarray  # [T, C] float32, the run's channels in its order
    labels: np.ndarray | None  # [T] class names, when the recording has them

    @property
    def rate_hz(self) -> float | None:
        d = np.diff(self.time_s)
        d = d[d > 0]
        return float(1.0 / np.median(d)) if len(d) else None


def sensors_of(channel_names: Sequence[str]) -> list[str]:
    """``accel`` for ``accel_x``: the sensors of the run's channels, in order."""
    out: list[str] = []
    for name in channel_names:
        sensor = name.rsplit("_", 1)[0]
        if sensor not in out:
            out.append(sensor)
    return out


def is_wisdm_raw(path: Path) -> bool:
    return path.name.lower().endswith(WISDM_SUFFIXES)


def read_recording(
    paths: Sequence[Path],
    prep: Preprocessing,
    time_column: str = "time",
    time_unit: str = "s",
    label_column: str | None = "label",
    sort_time: bool = False,
) -> Stream:
    for path in paths:
        if not Path(path).is_file():
            raise RecordingError(f"--input {path}: no such file")
    if all(is_wisdm_raw(Path(p)) for p in paths):
        return read_wisdm(paths, prep, sort_time)
    if len(paths) != 1:
        raise RecordingError(
            "several --input files are read only in the WISDM raw format (one per sensor); "
            "give one CSV/Parquet file with every channel"
        )
    return read_recording_table(
        Path(paths[0]), prep, time_column, time_unit, label_column, sort_time
    )


def time_order(
    time: np.ndarray, source: str, sort_time: bool, row: Callable[[int], str]
) -> np.ndarray:
    """The indices of the samples in increasing time; a RecordingError naming the first
    sample (``row(i)``) whose time stamp is missing, repeated or earlier than the one before,
    unless ``sort_time``: then sorted, keeping the first sample of each time stamp."""
    t = np.asarray(time, dtype=np.float64)
    missing = np.flatnonzero(~np.isfinite(t))
    if len(missing):
        raise RecordingError(f"{source}: {row(missing[0])} has no time stamp (empty or NaN)")
    if sort_time:
        order = np.argsort(t, kind="stable")
        first = np.concatenate([[True], np.diff(t[order]) > 0])
        return order[first]
    back = np.flatnonzero(np.diff(t) <= 0)
    if len(back):
        i = int(back[0])
        how = "repeats" if t[i + 1] == t[i] else "is earlier than"
        raise RecordingError(
            f"{source}: the time stamp of {row(i + 1)} ({time[i + 1]}) {how} that of {row(i)} "
            f"({time[i]}): expected increasing time stamps (pass --sort-time to sort the "
            "samples and keep the first of each time stamp)"
        )
    return np.arange(len(t))


def data_row(i: int) -> str:
    return f"row {i + 1}"


def _a_line(i: int) -> str:
    return "a line"  # a WISDM file is sorted before it is checked: its rows are not its lines


@dataclass(frozen=True)
class Columns:
    """Where the run's channels, the time and the labels are among a table's columns."""

    time: str
    channels: list[str]  # in the run's channel order
    label: str | None


def match_columns(
    columns: Sequence[object],
    prep: Preprocessing,
    source: str,
    time_column: str,
    label_column: str | None,
) -> Columns:
    """The columns the run needs, matched by name (case-insensitively when no exact match),
    or a RecordingError naming what is missing."""
    names = [str(c) for c in columns]
    by_lower = {c.lower(): c for c in names}

    def column(wanted: str) -> str | None:
        return wanted if wanted in names else by_lower.get(wanted.lower())

    missing = [c for c in prep.channel_names if column(c) is None]
    if missing:
        raise RecordingError(
            f"{source} lacks channel(s) {', '.join(missing)} the run was trained on (it needs "
            f"{', '.join(prep.channel_names)}; the file has {', '.join(names[:20])})"
        )
    tcol = column(time_column)
    if tcol is None:
        raise RecordingError(
            f"{source} has no time column {time_column!r} (name it with --time-column; its unit "
            f"with --time-unit {'/'.join(TIME_UNITS)})"
        )
    channels = [column(c) for c in prep.channel_names]
    lcol = column(label_column) if label_column else None
    return Columns(tcol, [c for c in channels if c is not None], lcol)


def read_recording_table(
    path: Path,
    prep: Preprocessing,
    time_column: str,
    time_unit: str,
    label_column: str | None,
    sort_time: bool = False,
) -> Stream:
    name = path.name.lower()
    if not name.endswith(TABLE_SUFFIXES):
        raise RecordingError(
            f"--input {path}: expected a CSV/Parquet file ({', '.join(TABLE_SUFFIXES)}) or WISDM "
            f"raw text ({', '.join(WISDM_SUFFIXES)})"
        )
    try:
        df = pd.read_parquet(path) if name.endswith((".parquet", ".pq")) else pd.read_csv(path)
    except ImportError:
        raise RecordingError(
            f"{path}: reading Parquet needs pyarrow (pip install pyarrow)"
        ) from None
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise RecordingError(f"{path} cannot be read ({str(e).splitlines()[0]})") from None
    return recording_from_frame(
        df, prep, str(path), time_column, time_unit, label_column, sort_time
    )


def recording_from_frame(
    df: pd.DataFrame,
    prep: Preprocessing,
    source: str,
    time_column: str = "time",
    time_unit: str = "s",
    label_column: str | None = "label",
    sort_time: bool = False,
) -> Stream:
    """A recording table (a time column, the run's channels, optional labels) as a Stream."""
    cols = match_columns(df.columns, prep, source, time_column, label_column)
    df = df.rename(columns=str)
    raw_time = df[cols.time].to_numpy()
    try:
        time_s = raw_time.astype(np.float64) * TIME_UNITS[time_unit]
    except (TypeError, ValueError):
        raise RecordingError(f"{source}: time column {cols.time!r} is not numeric") from None
    # Non-numeric values become NaN here and are refused with their row just below.
    channels = df[cols.channels].apply(pd.to_numeric, errors="coerce")
    signal = channels.to_numpy(dtype=np.float32)
    if not np.isfinite(signal).all():
        row = int(np.flatnonzero(~np.isfinite(signal).all(axis=1))[0])
        raise RecordingError(f"{source}: {data_row(row)} has an empty or non-numeric channel value")
    order = time_order(raw_time, source, sort_time, data_row)
    df, raw_time, time_s, signal = df.iloc[order], raw_time[order], time_s[order], signal[order]
    labels = df[cols.label].astype(str).to_numpy() if cols.label is not None else None
    return Stream(source, time_s, raw_time, signal, labels)


def sibling_files(path: Path, sensors: Sequence[str]) -> dict[str, Path]:
    """The other sensors' files of a 2019 raw file in the official layout
    (``raw/watch/accel/data_1600_accel_watch.txt`` -> ``raw/watch/gyro/data_1600_gyro_...``)."""
    parts = file_name_parts(path.name)
    if parts is None:
        return {}
    subject, sensor, device = parts
    found = {}
    for other in sensors:
        if other == sensor:
            continue
        folder = path.parent.parent / other if path.parent.name == sensor else path.parent
        for suffix in WISDM_SUFFIXES:
            candidate = folder / f"data_{subject}_{other}_{device}{suffix}"
            if candidate.is_file():
                found[other] = candidate
                break
    return found


def read_wisdm(paths: Sequence[Path], prep: Preprocessing, sort_time: bool = False) -> Stream:
    sensors = sensors_of(prep.channel_names)
    unknown = [s for s in sensors if s not in SENSORS]
    if unknown:
        raise RecordingError(
            f"the run's channels ({', '.join(prep.channel_names)}) are not WISDM sensors; give "
            "a CSV/Parquet file with those columns"
        )
    device = prep.dataset_config.get("device")
    files: dict[str, Path] = {}
    for path in map(Path, paths):
        parts = file_name_parts(path.name)
        if parts is not None:
            if device and parts[2] != device:
                raise RecordingError(
                    f"{path} is a {parts[2]} recording but the run was trained on {device} data "
                    f"(dataset.device={device})"
                )
            files[parts[1]] = path
        elif len(sensors) == 1 and len(paths) == 1:
            files[sensors[0]] = path
        else:
            raise RecordingError(
                f"{path}: cannot tell which sensor it holds; name WISDM raw files "
                "data_<subject>_<sensor>_<device>.txt as the dataset does"
            )
    for path in list(files.values()):
        for sensor, sibling in sibling_files(path, sensors).items():
            files.setdefault(sensor, sibling)
    missing = [s for s in sensors if s not in files]
    if missing:
        need = [c for c in prep.channel_names if c.rsplit("_", 1)[0] in missing]
        raise RecordingError(
            f"the recording lacks channel(s) {', '.join(need)} the run was trained on: give the "
            f"{'/'.join(missing)} file too (a second --input)"
        )
    tolerance_ns = int(float(prep.dataset_config.get("align_tolerance_ms") or 25) * 1e6)
    base = None
    columns = []
    for sensor in sensors:
        parsed = parse_wisdm_file(files[sensor])
        if not len(parsed.ts):
            raise RecordingError(f"{files[sensor]} holds no readable record")
        subjects = np.unique(parsed.subject)
        if len(subjects) > 1:
            raise RecordingError(
                f"{files[sensor]} holds {len(subjects)} subjects; predict reads one recording: "
                "keep one subject's lines"
            )
        # Sorted as the dataset loader sorts; a time stamp on two lines is still refused.
        order = np.argsort(parsed.ts, kind="stable")
        order = order[time_order(parsed.ts[order], str(files[sensor]), sort_time, _a_line)]
        ts, xyz, act = parsed.ts[order], parsed.xyz[order], parsed.activity[order]
        if base is None:
            base = (ts, act)
            keep = np.arange(len(ts))
            columns.append(xyz)
            continue
        kept, matched = align_nearest(base[0][keep], ts, tolerance_ns)
        keep = keep[kept]
        columns = [c[kept] for c in columns] + [xyz[matched]]
    assert base is not None
    ts, act = base[0][keep], base[1][keep]
    labels = np.asarray([ACTIVITIES_2019.get(str(a), str(a)) for a in act])
    source = " + ".join(str(files[s]) for s in sensors)
    return Stream(source, ts * NS, ts, np.concatenate(columns, axis=1), labels)

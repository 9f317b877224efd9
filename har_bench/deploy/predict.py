"""``har-bench predict RUN_DIR --input REC``: one prediction per window of a raw recording.

The recording goes through the run's own preprocessing (``export/preprocessing.json``, written
by ``har-bench export`` or by the first predict): its channels matched by name, cut into the
run's window and step (never across a gap in time longer than the run's ``max_gap_s``),
standardised with the run's training statistics. Inputs:

* CSV or Parquet with a time column (``--time-column``, unit ``--time-unit``) and one column
  per channel the run was trained on (e.g. ``body_acc_x`` ... for UCI-HAR);
* WISDM raw line format (``subject,activity,timestamp,x,y,z;``), one file per sensor: give
  each with ``--input``; a 2019 file named ``data_<subject>_<sensor>_<device>.txt[.xz]``
  brings its sibling sensor files along when they sit in the official layout.

A recording sampled at another rate than the run's windows is refused (the model would see
stretched or squeezed motion) unless ``--resample`` asks to resample it to the run's rate
with the data layer's anti-aliased interpolation. A label column (``--label-column``, or the
WISDM activity codes) adds the true label per window and the agreement.

The time stamps must increase from row to row: a missing one, a repeated one (duplicated rows
would halve the rate estimate and every window's duration) or one earlier than the row before
is refused with the row (counted from 1 after the header), unless ``--sort-time`` asks to sort
the samples by time and keep the first of each repeated time stamp. WISDM raw files are always
sorted by time stamp, as the dataset loader does; their repeated time stamps are refused alike.

``--output`` is written atomically (a temporary file renamed into place); it may not be an input
recording, a folder or a device, nor lie inside a run directory (the run's own records).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from har_bench.core.errors import UserError, bug_message, save_traceback
from har_bench.core.fs import atomic_write
from har_bench.data.recordings import TIME_UNITS
from har_bench.data.windowing import Recording, window_recordings
from har_bench.data.wisdm import (
    ACTIVITIES_2019,
    SENSORS,
    align_nearest,
    file_name_parts,
    parse_wisdm_file,
)
from har_bench.deploy.loaded import (
    FinishedRun,
    Preprocessing,
    load_preprocessing,
    save_preprocessing,
)
from har_bench.experiment.components import as_user_error
from har_bench.runs import rundir

# A recording whose rate is within this fraction of the run's is taken as the same rate (clock
# jitter: WISDM's 20 Hz watch streams run at 20.2 Hz).
RATE_TOLERANCE = 0.05
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


# -- reading -----------------------------------------------------------------------------------


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
    return read_table(Path(paths[0]), prep, time_column, time_unit, label_column, sort_time)


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


def _data_row(i: int) -> str:
    return f"row {i + 1}"


def _a_line(i: int) -> str:
    return "a line"  # a WISDM file is sorted before it is checked: its rows are not its lines


def read_table(
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
    by_lower = {str(c).lower(): c for c in df.columns}

    def column(wanted: str) -> str | None:
        return wanted if wanted in df.columns else by_lower.get(wanted.lower())

    missing = [c for c in prep.channel_names if column(c) is None]
    if missing:
        raise RecordingError(
            f"{path} lacks channel(s) {', '.join(missing)} the run was trained on (it needs "
            f"{', '.join(prep.channel_names)}; the file has {', '.join(map(str, df.columns[:20]))})"
        )
    tcol = column(time_column)
    if tcol is None:
        raise RecordingError(
            f"{path} has no time column {time_column!r} (name it with --time-column; its unit "
            f"with --time-unit {'/'.join(TIME_UNITS)})"
        )
    raw_time = df[tcol].to_numpy()
    try:
        time_s = raw_time.astype(np.float64) * TIME_UNITS[time_unit]
    except (TypeError, ValueError):
        raise RecordingError(f"{path}: time column {tcol!r} is not numeric") from None
    signal = df[[column(c) for c in prep.channel_names]].to_numpy(dtype=np.float32)
    if not np.isfinite(signal).all():
        row = int(np.flatnonzero(~np.isfinite(signal).all(axis=1))[0])
        raise RecordingError(f"{path}: {_data_row(row)} has an empty or non-numeric channel value")
    order = time_order(raw_time, str(path), sort_time, _data_row)
    df, raw_time, time_s, signal = df.iloc[order], raw_time[order], time_s[order], signal[order]
    lcol = column(label_column) if label_column else None
    labels = df[lcol].astype(str).to_numpy() if lcol is not None else None
    return Stream(str(path), time_s, raw_time, signal, labels)


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


# -- windows -----------------------------------------------------------------------------------


@dataclass
class Windowed:
    X: np.ndarray  # [N, C, window], standardised
    start_index: np.ndarray  # [N] first sample in the stream (nearest one when resampled)
    start_s: np.ndarray  # [N] seconds from the stream's first sample
    rate_hz: float  # of the windows
    resampled_from: float | None


def cut_windows(
    stream: Stream, prep: Preprocessing, resample: bool = False, step: int | None = None
) -> Windowed:
    """The run's windows over the stream, checking its sampling rate first."""
    rate = stream.rate_hz
    run_rate = prep.sampling_rate_hz
    if rate is None:
        raise RecordingError(f"{stream.source}: fewer than two distinct time stamps")
    target = prep.resample_hz  # the run resampled its own data: so does its input
    if run_rate and target is None and abs(rate / run_rate - 1) > RATE_TOLERANCE:
        if not resample:
            raise RecordingError(
                f"{stream.source} is sampled at {rate:.4g} Hz but the run's windows are "
                f"{run_rate:.4g} Hz: refusing to predict at the wrong rate (pass --resample to "
                f"resample the recording to {run_rate:.4g} Hz first)"
            )
        target = run_rate
    step = step or prep.step
    t_rel = stream.time_s - stream.time_s[0]
    w = window_recordings(
        [Recording(stream.signal, 0, 0, t_rel)],
        prep.window,
        step,
        sampling_rate_hz=rate,
        target_rate_hz=target,
        max_gap_s=prep.max_gap_s,
    )
    eff_rate = float(target or rate)
    if not len(w.y):
        longest = longest_stretch_s(t_rel, prep.max_gap_s)
        raise RecordingError(
            f"{stream.source} is too short: {len(t_rel)} samples, the longest stretch without a "
            f"gap over {prep.max_gap_s:g} s lasts {longest:.2f} s, shorter than one window of "
            f"{prep.window} samples ({prep.window / eff_rate:.2f} s at {eff_rate:.4g} Hz)"
        )
    if target is not None:
        start_s = w.start / float(target)
        start_index = np.clip(np.searchsorted(t_rel, start_s), 0, len(t_rel) - 1)
    else:
        start_index = w.start
        start_s = t_rel[w.start]
    return Windowed(
        X=prep.standardise(w.X),
        start_index=start_index,
        start_s=start_s,
        rate_hz=eff_rate,
        resampled_from=rate if target is not None else None,
    )


def longest_stretch_s(t: np.ndarray, max_gap_s: float) -> float:
    if len(t) < 2:
        return 0.0
    breaks = np.flatnonzero((np.diff(t) > max_gap_s) | (np.diff(t) < 0)) + 1
    bounds = np.concatenate([[0], breaks, [len(t)]])
    return float(max(t[b - 1] - t[a] for a, b in zip(bounds[:-1], bounds[1:], strict=True)))


def smooth(pred: np.ndarray, probs: np.ndarray, k: int) -> np.ndarray:
    """Majority over each window and the k-1 before it (causal, as on a live stream); a tie
    goes to the class with the higher summed probability, then to the newest prediction."""
    onehot = np.eye(probs.shape[1])[pred]
    padded = np.concatenate([np.zeros((1, probs.shape[1])), np.cumsum(onehot, 0)])
    psum = np.concatenate([np.zeros((1, probs.shape[1])), np.cumsum(probs, 0)])
    i = np.arange(len(pred))
    lo = np.maximum(i - k + 1, 0)
    votes = padded[i + 1] - padded[lo]
    mass = psum[i + 1] - psum[lo]
    return np.argmax(votes + mass / (k + 1) + onehot * 1e-9, axis=1)


# -- predicting --------------------------------------------------------------------------------


def preprocessing_for(run: FinishedRun) -> Preprocessing:
    """The saved preprocessing, else computed from the run's data and saved for next time."""
    prep = load_preprocessing(run.path)
    if prep is None:
        prep = run.preprocessing
        with contextlib.suppress(OSError):  # a read-only run dir: computed again next time
            save_preprocessing(run.path, prep)
    if len(prep.input_shape) != 2:
        raise UserError(
            f"{run.path}: the model takes input of shape {prep.input_shape} (images?); predict "
            "reads sensor recordings"
        )
    return prep


def onnx_path(run: FinishedRun, form: str) -> Path:
    """The exported file of ``form``, checked before any recording is read."""
    from har_bench.deploy import onnx_model

    onnx_model.require_onnx()
    path = rundir.onnx_file(run.path, form)
    if not path.is_file():
        flags = {
            "fp32": "",
            "int8": " --quantize int8",
            "pruned": " --prune RATIO",
            "pruned_int8": " --quantize int8 --prune RATIO",
        }
        raise UserError(
            f"{path} does not exist: run har-bench export {run.path}{flags[form]} first"
        )
    return path


def logits_for(
    run: FinishedRun, prep: Preprocessing, X: np.ndarray, onnx: Path | None
) -> np.ndarray:
    if onnx is not None:
        from har_bench.deploy import onnx_model

        return onnx_model.ort_logits(onnx_model.session(onnx), X)
    model = run.load_model(len(prep.channel_names), len(prep.class_names))
    return run.trainer.predict(model, torch.from_numpy(X)).numpy()


def predict(
    run_dir: Path,
    inputs: Sequence[Path],
    onnx: str | None = None,
    smooth_k: int | None = None,
    resample: bool = False,
    step: int | None = None,
    time_column: str = "time",
    time_unit: str = "s",
    label_column: str | None = "label",
    sort_time: bool = False,
) -> tuple[pd.DataFrame, dict]:
    """One row per window (start, predicted class, probabilities) and a summary."""
    run = FinishedRun(run_dir)
    prep = preprocessing_for(run)
    onnx_file = onnx_path(run, onnx) if onnx is not None else None
    stream = read_recording(inputs, prep, time_column, time_unit, label_column, sort_time)
    windows = cut_windows(stream, prep, resample=resample, step=step)
    logits = logits_for(run, prep, windows.X, onnx_file)
    z = logits - logits.max(1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    pred = probs.argmax(1)
    names = np.asarray(prep.class_names)
    duration = prep.window / windows.rate_hz
    table = pd.DataFrame(
        {
            "start_s": windows.start_s,
            "end_s": windows.start_s + duration,
            "start_time": stream.raw_time[windows.start_index],
            "predicted": names[pred],
        }
    )
    if smooth_k and smooth_k > 1:
        table["smoothed"] = names[smooth(pred, probs, smooth_k)]
    summary: dict = {
        "source": stream.source,
        "windows": len(table),
        "window": prep.window,
        "step": step or prep.step,
        "rate_hz": windows.rate_hz,
        "resampled_from_hz": windows.resampled_from,
        "runtime": f"onnxruntime ({rundir.ONNX_FILES[onnx]})" if onnx else "torch",
    }
    if stream.labels is not None:
        t_rel = stream.time_s - stream.time_s[0]
        centre = np.clip(np.searchsorted(t_rel, windows.start_s + duration / 2), 0, len(t_rel) - 1)
        table["true"] = stream.labels[centre]
        known = np.isin(table["true"], names)
        if known.any():
            summary["agreement"] = float((table["predicted"] == table["true"])[known].mean())
            if "smoothed" in table:
                summary["agreement_smoothed"] = float(
                    (table["smoothed"] == table["true"])[known].mean()
                )
            summary["windows_with_known_label"] = int(known.sum())
    for k, name in enumerate(prep.class_names):
        table[f"p_{name}"] = probs[:, k]
    return table, summary


def check_output(output: Path, run_dir: Path, inputs: Sequence[Path]) -> None:
    """A UserError when predictions written to ``output`` would replace an input recording, a
    folder or a device, or land in a run directory's own files."""
    target = Path(output).resolve()
    if any(Path(p).resolve() == target for p in inputs):
        raise UserError(
            f"--output {output} is the input recording: refusing to overwrite it; write the "
            "predictions to another file"
        )
    runs = [run_dir, *(f for f in target.parents if rundir.is_run_dir(f))]
    inside = [r for r in runs if target.is_relative_to(Path(r).resolve())]
    if inside:
        raise UserError(
            f"--output {output} is inside the run directory {inside[0]}, which holds the run's "
            "own records: write the predictions outside it"
        )
    if target.exists() and not target.is_file():
        kind = "a folder" if target.is_dir() else "not a regular file"
        raise UserError(
            f"--output {output} is {kind}: expected the path of a .csv or .parquet file (or no "
            "--output for CSV on stdout)"
        )


def write_table(table: pd.DataFrame, path: Path) -> None:
    if path.suffix.lower() in (".parquet", ".pq"):
        atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False))
    else:
        atomic_write(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))


def print_summary(table: pd.DataFrame, summary: dict, output: Path | None, tail: int = 8) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    shown = Table(title=f"last {min(tail, len(table))} of {len(table)} windows")
    cols = ["start_s", "predicted"] + [c for c in ("smoothed", "true") if c in table]
    top = table.filter(like="p_").max(axis=1)
    for c in [*cols, "p(predicted)"]:
        shown.add_column(c, justify="right" if c in ("start_s", "p(predicted)") else "left")
    for i in range(max(len(table) - tail, 0), len(table)):
        row = table.iloc[i]
        shown.add_row(
            f"{row['start_s']:.1f}", *(str(row[c]) for c in cols[1:]), f"{top.iloc[i]:.3f}"
        )
    console.print(shown)
    counts = table["predicted"].value_counts(normalize=True).head(5)
    line = (
        f"{summary['windows']} windows of {summary['window']} samples (step {summary['step']}) at "
        f"{summary['rate_hz']:.4g} Hz via {summary['runtime']}; most predicted: "
        + ", ".join(f"{k} {v:.0%}" for k, v in counts.items())
    )
    if summary.get("resampled_from_hz"):
        line += f"; resampled from {summary['resampled_from_hz']:.4g} Hz"
    if "agreement" in summary:
        line += f"; agreement with the recording's labels {summary['agreement']:.1%}"
        if "agreement_smoothed" in summary:
            line += f" (smoothed {summary['agreement_smoothed']:.1%})"
    console.print(line)
    if output is not None:
        console.print(f"wrote {output}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="har-bench predict",
        description="Predict the activity of every window of a raw recording with a finished "
        "run's model and preprocessing.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument(
        "--input",
        "-i",
        type=Path,
        action="append",
        required=True,
        metavar="REC",
        help="CSV/Parquet with a time column and the run's channels, or WISDM raw "
        "text (repeat for each sensor's file)",
    )
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        default=None,
        help="predictions as .csv or .parquet (default: CSV on stdout)",
    )
    p.add_argument(
        "--onnx",
        nargs="?",
        const="fp32",
        default=None,
        choices=list(rundir.ONNX_FILES),
        help="run the exported ONNX file through ONNX Runtime (default form fp32)",
    )
    p.add_argument(
        "--smooth",
        type=int,
        default=None,
        metavar="K",
        help="add a column with the majority over each window and the K-1 before it",
    )
    p.add_argument(
        "--resample",
        action="store_true",
        help="resample a recording whose rate differs from the run's (else refused)",
    )
    p.add_argument(
        "--step", type=int, default=None, help="samples between windows (default: the run's)"
    )
    p.add_argument("--time-column", default="time")
    p.add_argument("--time-unit", default="s", choices=list(TIME_UNITS))
    p.add_argument(
        "--label-column",
        default="label",
        help="a column of true labels, if present (adds 'true' and the agreement)",
    )
    p.add_argument(
        "--sort-time",
        action="store_true",
        help="sort the samples by time stamp and keep the first of each repeated time stamp "
        "(else a recording out of time order or with a repeated time stamp is refused)",
    )
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    try:
        for name in ("smooth", "step"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise UserError(f"--{name}={value} is invalid: expected an integer >= 1")
        if args.output is not None:
            check_output(args.output, args.run_dir, args.input)
        table, summary = predict(
            args.run_dir,
            args.input,
            onnx=args.onnx,
            smooth_k=args.smooth,
            resample=args.resample,
            step=args.step,
            time_column=args.time_column,
            time_unit=args.time_unit,
            label_column=args.label_column,
            sort_time=args.sort_time,
        )
    except Exception as e:
        user_error = as_user_error(e)
        if user_error is None:
            print(f"error: {bug_message(e, save_traceback(e))}", file=sys.stderr)
            return 1
        print(f"error: {user_error}", file=sys.stderr)
        return 2
    if args.output is None:
        table.to_csv(sys.stdout, index=False, float_format="%.6g")
        return 0
    try:
        write_table(table, args.output)
    except (OSError, ImportError) as e:  # full disk, no permission, no pyarrow for Parquet
        print(f"error: cannot write --output {args.output}: {e}", file=sys.stderr)
        return 2
    print_summary(table, summary, args.output)
    return 0

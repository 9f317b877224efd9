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
import csv
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd
import torch
from torch import nn

from har_bench.config import report_error
from har_bench.core.calibration import (
    PROBABILITY_PREFIX,
    UNKNOWN,
    check_reject,
    labels_with_reject,
    probability_column,
    softmax,
)
from har_bench.core.errors import UserError
from har_bench.core.fs import atomic_write
from har_bench.data.recordings import TIME_UNITS
from har_bench.data.windowing import Recording, window_recordings
from har_bench.deploy.loaded import (
    FinishedRun,
    Preprocessing,
    load_calibration,
    load_preprocessing,
    save_preprocessing,
)
from har_bench.deploy.recording import (
    RecordingError,
    Stream,
    data_row,
    match_columns,
    read_recording,
)
from har_bench.runs import rundir

# A recording whose rate is within this fraction of the run's is taken as the same rate (clock
# jitter: WISDM's 20 Hz watch streams run at 20.2 Hz).
RATE_TOLERANCE = 0.05

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


class Predictor:
    """A finished run ready to classify windows: its preprocessing, its model (torch, or an
    exported ONNX file through ONNX Runtime) loaded once, and its temperature.

    The one path from standardised windows to calibrated probabilities and labels, shared by
    ``har-bench predict`` (a recording file, or rows live from stdin) and
    :meth:`har_bench.api.Run.predict`.
    """

    def __init__(self, run_dir: Path, onnx: str | None = None) -> None:
        self.run = FinishedRun(run_dir)
        self.prep = preprocessing_for(self.run)
        self.onnx_file = onnx_path(self.run, onnx) if onnx is not None else None
        self.runtime = f"onnxruntime ({rundir.ONNX_FILES[onnx]})" if onnx else "torch"
        calibration = load_calibration(self.run.path)
        self.temperature = calibration.temperature if calibration is not None else 1.0
        # Said once by the caller (stderr for the CLI, a warning for the API).
        self.notes: list[str] = []
        if calibration is None:
            self.notes.append(
                f"{self.run.path} has no {rundir.CALIBRATION} (trained before runs were "
                "calibrated): probabilities are the model's softmax (temperature 1)"
            )

    @property
    def class_names(self) -> list[str]:
        return list(self.prep.class_names)

    @cached_property
    def forward(self) -> Callable[[np.ndarray], np.ndarray]:
        """Standardised windows [N, C, window] -> logits [N, classes]."""
        if self.onnx_file is not None:
            from har_bench.deploy import onnx_model

            session = onnx_model.session(self.onnx_file)
            return lambda X: onnx_model.ort_logits(session, X)
        model = self.model
        trainer = self.run.trainer
        return lambda X: trainer.predict(model, torch.from_numpy(X)).numpy()

    @cached_property
    def model(self) -> nn.Module:
        """The tested weights, in eval mode on the CPU."""
        return self.run.load_model(len(self.prep.channel_names), len(self.prep.class_names))

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities [N, classes] of standardised windows [N, C, window]."""
        return softmax(self.forward(np.ascontiguousarray(X, dtype=np.float32)), self.temperature)

    def labels(self, probs: np.ndarray, reject: float | None = None) -> np.ndarray:
        """The predicted class per window; ``unknown`` below the ``reject`` probability."""
        return labels_with_reject(probs, self.class_names, reject)

    def window_table(self, X: np.ndarray, reject: float | None = None) -> pd.DataFrame:
        """Raw (unstandardised) windows [N, C, window] -> ``predicted`` and ``p_<class>``."""
        X = np.asarray(X, dtype=np.float32)
        shape = [len(self.prep.channel_names), self.prep.window]
        if X.ndim != 3 or list(X.shape[1:]) != shape:
            raise UserError(
                f"windows of shape {list(X.shape)}: expected [N, {shape[0]}, {shape[1]}] (the "
                f"run's channels {', '.join(self.prep.channel_names)} x {shape[1]} samples)"
            )
        probs = self.probabilities(self.prep.standardise(X))
        table = pd.DataFrame({"predicted": self.labels(probs, reject)})
        return add_probabilities(table, probs, self.class_names)


def add_probabilities(table: pd.DataFrame, probs: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    for k, name in enumerate(names):
        table[probability_column(name)] = probs[:, k]
    return table


def predict_stream(
    predictor: Predictor,
    stream: Stream,
    *,
    smooth_k: int | None = None,
    resample: bool = False,
    step: int | None = None,
    reject: float | None = None,
) -> tuple[pd.DataFrame, dict]:
    """One row per window of a recording read whole (start, predicted class, calibrated
    probabilities) and a summary."""
    prep = predictor.prep
    windows = cut_windows(stream, prep, resample=resample, step=step)
    probs = predictor.probabilities(windows.X)
    pred = probs.argmax(1)
    names = np.asarray(prep.class_names)
    duration = prep.window / windows.rate_hz
    table = pd.DataFrame(
        {
            "start_s": windows.start_s,
            "end_s": windows.start_s + duration,
            "start_time": stream.raw_time[windows.start_index],
            "predicted": predictor.labels(probs, reject),
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
        "runtime": predictor.runtime,
        "temperature": predictor.temperature,
    }
    accepted = np.ones(len(table), bool)
    if reject is not None:
        accepted = table["predicted"].to_numpy() != UNKNOWN
        summary["reject"] = reject
        summary["rejected"] = int((~accepted).sum())
    if stream.labels is not None:
        t_rel = stream.time_s - stream.time_s[0]
        centre = np.clip(np.searchsorted(t_rel, windows.start_s + duration / 2), 0, len(t_rel) - 1)
        table["true"] = stream.labels[centre]
        known = np.isin(table["true"], names)
        if (known & accepted).any():
            kept = known & accepted  # a rejected window claims no class
            summary["agreement"] = float((table["predicted"] == table["true"])[kept].mean())
            if "smoothed" in table:
                summary["agreement_smoothed"] = float(
                    (table["smoothed"] == table["true"])[known].mean()
                )
            summary["windows_with_known_label"] = int(known.sum())
    return add_probabilities(table, probs, prep.class_names), summary


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
    reject: float | None = None,
    on_ready: Callable[[Predictor], None] | None = None,
) -> tuple[pd.DataFrame, dict]:
    """One row per window (start, predicted class, probabilities) and a summary;
    ``on_ready`` sees the predictor before the recording is read (the CLI prints its notes)."""
    predictor = Predictor(run_dir, onnx)
    if on_ready is not None:
        on_ready(predictor)
    stream = read_recording(inputs, predictor.prep, time_column, time_unit, label_column, sort_time)
    return predict_stream(
        predictor, stream, smooth_k=smooth_k, resample=resample, step=step, reject=reject
    )


# -- live: rows from stdin ---------------------------------------------------------------------


def predict_live(
    predictor: Predictor,
    rows: TextIO,
    out: TextIO,
    *,
    time_column: str = "time",
    time_unit: str = "s",
    label_column: str | None = "label",
    smooth_k: int | None = None,
    step: int | None = None,
    reject: float | None = None,
) -> int:
    """Read recording rows (CSV with a header, the columns a recording file has) from ``rows``
    as they arrive and write one CSV line per window to ``out`` as soon as its last row is in,
    flushed, with ``latency_ms`` from that row's arrival to the line. Windows are those of
    ``predict`` on the whole recording (the run's window and step, a new stretch after a gap in
    time over the run's ``max_gap_s``). Returns the number of windows."""
    prep = predictor.prep
    window, step = prep.window, step or prep.step
    rate = prep.resample_hz or prep.sampling_rate_hz
    names = np.asarray(prep.class_names)
    source = "--input - (stdin)"
    # Loaded and run once before the first row, so the first window's latency is a window's.
    predictor.probabilities(np.zeros((1, len(prep.channel_names), window), np.float32))
    header_line = rows.readline()
    if not header_line.strip():
        raise RecordingError(f"{source}: no header line with the column names")
    header = next(csv.reader([header_line]))
    cols = match_columns(header, prep, source, time_column, label_column)
    t_i = header.index(cols.time)
    ch_i = [header.index(c) for c in cols.channels]
    lab_i = header.index(cols.label) if cols.label is not None else None
    scale = TIME_UNITS[time_unit]
    out_cols = ["start_s", "end_s", "start_time", "predicted"]
    out_cols += ["smoothed"] * bool(smooth_k and smooth_k > 1) + ["true"] * (lab_i is not None)
    out_cols += [probability_column(n) for n in prep.class_names] + ["latency_ms"]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(out_cols)
    out.flush()
    # The last window's rows of the current stretch (no gap in time over max_gap_s).
    times: deque[float] = deque(maxlen=window)
    raw: deque[str] = deque(maxlen=window)
    samples: deque[list[float]] = deque(maxlen=window)
    labels: deque[str] = deque(maxlen=window)
    in_stretch = 0  # rows of the current stretch: windows start every step rows from its first
    t0: float | None = None
    n_rows = n_windows = 0
    preds: list[int] = []
    all_probs: list[np.ndarray] = []
    rate_checked = rate is None
    for line in iter(rows.readline, ""):
        arrived = time.perf_counter()
        if not line.strip():
            continue
        n_rows += 1
        fields = next(csv.reader([line]))
        where = f"{source}: {data_row(n_rows - 1)}"
        try:
            t = float(fields[t_i]) * scale
            values = [float(fields[i]) for i in ch_i]
        except (IndexError, ValueError):
            raise RecordingError(
                f"{where} has {len(fields)} fields, a missing or non-numeric time or channel "
                f"value: expected the header's {len(header)} columns ({line.strip()[:80]})"
            ) from None
        if not (np.isfinite(t) and np.isfinite(values).all()):
            raise RecordingError(f"{where} has an empty or non-numeric time or channel value")
        if times and t <= times[-1]:
            how = "repeats" if t == times[-1] else "is earlier than"
            raise RecordingError(
                f"{where}: its time stamp ({fields[t_i]}) {how} that of the row before: "
                "expected increasing time stamps"
            )
        if t0 is None:
            t0 = t
        if times and t - times[-1] > prep.max_gap_s:  # a new stretch, as predict cuts it
            for buffer in (times, raw, samples, labels):
                buffer.clear()
            in_stretch = 0
        in_stretch += 1
        times.append(t)
        raw.append(fields[t_i])
        samples.append(values)
        labels.append(fields[lab_i] if lab_i is not None and lab_i < len(fields) else "")
        if in_stretch < window or (in_stretch - window) % step:
            continue
        if not rate_checked:
            d = np.diff(np.asarray(times))
            measured = float(1.0 / np.median(d))
            if abs(measured / rate - 1) > RATE_TOLERANCE:
                raise RecordingError(
                    f"{source} is sampled at {measured:.4g} Hz but the run's windows are "
                    f"{rate:.4g} Hz: live prediction reads a recording at the run's rate (to "
                    "resample, predict from a file with --resample)"
                )
            rate_checked = True
        X = np.asarray(samples, np.float32).T[None]
        probs = predictor.probabilities(prep.standardise(X))
        start = times[0] - t0
        duration = window / rate if rate else times[-1] - times[0]
        record: list[object] = [
            f"{start:.6g}",
            f"{start + duration:.6g}",
            raw[0],
            predictor.labels(probs, reject)[0],
        ]
        preds.append(int(probs.argmax(1)[0]))
        all_probs.append(probs[0])
        if smooth_k and smooth_k > 1:
            k = min(smooth_k, len(preds))
            recent = np.asarray(preds[-k:])
            record.append(names[smooth(recent, np.asarray(all_probs[-k:]), smooth_k)[-1]])
        if lab_i is not None:
            t_win = np.asarray(times) - t0
            centre = min(int(np.searchsorted(t_win, start + duration / 2)), window - 1)
            record.append(labels[centre])
        record += [f"{p:.6g}" for p in probs[0]]
        record.append(f"{(time.perf_counter() - arrived) * 1e3:.3g}")
        writer.writerow(record)
        out.flush()
        n_windows += 1
    if n_windows == 0:
        raise RecordingError(
            f"{source} ended after {n_rows} rows without a whole window of {window} samples "
            "(without a gap in time over the run's max_gap_s)"
        )
    return n_windows


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
    top = table.filter(like=PROBABILITY_PREFIX).max(axis=1)
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
    if "rejected" in summary:
        line += f"; {summary['rejected']} rejected as {UNKNOWN} (top probability < {summary['reject']:g})"
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
        "text (repeat for each sensor's file); '-' reads CSV rows from stdin and writes each "
        "window's line as soon as it is complete",
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
    p.add_argument(
        "--reject",
        default=None,
        metavar="P",
        help="label a window 'unknown' when its calibrated top probability is below P (0<P<1); "
        "the run's reject_curve.csv shows the coverage and accuracy each P gives on its test set",
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


LIVE = "-"  # --input -: rows from stdin


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    live = any(str(p) == LIVE for p in args.input)
    try:
        for name in ("smooth", "step"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise UserError(f"--{name}={value} is invalid: expected an integer >= 1")
        reject = check_reject(args.reject) if args.reject is not None else None
        if live:
            check_live_options(args)
        elif args.output is not None:
            check_output(args.output, args.run_dir, args.input)
        if live:
            # One window at a time gains nothing from intra-op threads, and on a busy machine
            # their barrier waits for a descheduled thread: latency jumps by a time slice.
            torch.set_num_threads(1)
            predictor = Predictor(args.run_dir, args.onnx)
            say_notes(predictor)
            predict_live(
                predictor,
                sys.stdin,
                sys.stdout,
                time_column=args.time_column,
                time_unit=args.time_unit,
                label_column=args.label_column,
                smooth_k=args.smooth,
                step=args.step,
                reject=reject,
            )
            return 0
        table, summary = predict(
            args.run_dir,
            args.input,
            smooth_k=args.smooth,
            resample=args.resample,
            step=args.step,
            time_column=args.time_column,
            time_unit=args.time_unit,
            label_column=args.label_column,
            sort_time=args.sort_time,
            reject=reject,
            on_ready=say_notes,
            onnx=args.onnx,
        )
    except BrokenPipeError:
        # The reader of a live stream went away (`| head`): stop quietly, as a pipe's writer does.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        return report_error(e)
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


def say_notes(predictor: Predictor) -> None:
    for note in predictor.notes:
        print(f"note: {note}", file=sys.stderr)


def check_live_options(args: argparse.Namespace) -> None:
    """``--input -`` reads one table's rows as they come: refuse what needs the whole recording."""
    if len(args.input) != 1:
        raise UserError("--input - reads one recording from stdin: give no other --input")
    for flag, given in (
        ("--output", args.output is not None),
        ("--resample", args.resample),
        ("--sort-time", args.sort_time),
    ):
        if given:
            why = (
                "each window's line goes to stdout as it completes (redirect stdout instead)"
                if flag == "--output"
                else "it needs the whole recording; predict from a file instead"
            )
            raise UserError(f"{flag} cannot be used with --input -: {why}")

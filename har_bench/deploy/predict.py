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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from har_bench.config import as_user_error
from har_bench.core.errors import UserError, bug_message, save_traceback
from har_bench.core.fs import atomic_write
from har_bench.data.recordings import TIME_UNITS
from har_bench.data.windowing import Recording, window_recordings
from har_bench.deploy.loaded import (
    FinishedRun,
    Preprocessing,
    load_preprocessing,
    save_preprocessing,
)
from har_bench.deploy.recording import RecordingError, Stream, read_recording
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

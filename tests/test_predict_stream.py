"""har-bench predict on a live stream (--input -), with --reject, and on runs trained before
calibration: the stream's windows and labels equal the offline predict's; each window's line
comes out before the rows after it are written."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import assert_one_line_error
from deploy_helpers import trained_run
from helpers import REPO
from test_predict import RATE, run_cli

from har_bench.core.calibration import UNKNOWN
from har_bench.deploy.loaded import FinishedRun
from har_bench.deploy.predict import predict
from har_bench.runs import rundir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir() -> Path:
    return trained_run()


@pytest.fixture(scope="module")
def recording(run_dir: Path, tmp_path_factory) -> Path:
    """Test windows end to end at the run's rate, with labels, and a 5 s gap in time after the
    fifth window (a new stretch: windows never cross it)."""
    data = FinishedRun(run_dir).data
    idx = data.split.test[:10]
    raw = data.data.X[idx]  # [N, C, window]
    signal = np.concatenate([w.T for w in raw])
    labels = np.repeat([data.class_names[int(c)] for c in data.data.y[idx]], raw.shape[2])
    df = pd.DataFrame(signal, columns=data.data.channel_names)
    time = np.arange(len(df)) / RATE
    time[len(df) // 2 :] += 5.0
    df.insert(0, "time", np.round(time, 6))
    df["label"] = labels
    path = tmp_path_factory.mktemp("stream") / "recording.csv"
    df.to_csv(path, index=False)
    return path


def start_stream(run_dir: Path, *flags: str) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "har_bench.cli", "predict", str(run_dir), "--input", "-", *flags],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        env=env,
    )


def reader(stream) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in iter(stream.readline, ""):
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_stream_gives_the_offline_windows_and_labels_line_by_line(run_dir, recording):
    offline, _ = predict(run_dir, [recording], reject=0.5, smooth_k=3)
    window = FinishedRun(run_dir).preprocessing.window
    rows = recording.read_text().splitlines(keepends=True)
    proc = start_stream(run_dir, "--reject", "0.5", "--smooth", "3")
    lines = reader(proc.stdout)
    try:
        proc.stdin.write(rows[0])
        for row in rows[1 : 1 + window]:  # the header, then exactly one window's rows
            proc.stdin.write(row)
        proc.stdin.flush()
        header = lines.get(timeout=120)
        first = lines.get(timeout=120)  # out while stdin is still open
        assert first is not None, proc.stderr.read()
        for row in rows[1 + window :]:
            proc.stdin.write(row)
        proc.stdin.close()
        rest = []
        while (line := lines.get(timeout=120)) is not None:
            rest.append(line)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        proc.kill()
    live = pd.read_csv(pd.io.common.StringIO(header + first + "".join(rest)))
    assert len(live) == len(offline) > 10
    assert list(live["predicted"]) == list(offline["predicted"])
    assert list(live["smoothed"]) == list(offline["smoothed"])
    assert list(live["true"]) == list(offline["true"])
    assert np.allclose(live["start_s"], offline["start_s"])
    probs = [c for c in offline if c.startswith("p_")]
    assert np.allclose(live[probs], offline[probs], atol=1e-5)
    assert (live["latency_ms"] >= 0).all()


def test_stream_bad_rows_and_options_are_one_line(run_dir, recording):
    rows = recording.read_text().splitlines(keepends=True)
    proc = start_stream(run_dir)
    out, err = proc.communicate("".join([rows[0], rows[1], rows[1]]), timeout=120)
    assert proc.returncode == 2, err
    assert_one_line_error(proc.returncode, err, "row 2", "repeats")
    code, err = run_cli("predict", str(run_dir), "--input", "-", "--resample", "--reject", "0.5")
    assert_one_line_error(code, err, "--resample cannot be used with --input -")


def test_reject_labels_the_unsure_windows_unknown(run_dir, recording):
    table, summary = predict(run_dir, [recording])
    top = table.filter(like="p_").max(axis=1)
    p = float(np.median(top))
    rejected, summary = predict(run_dir, [recording], reject=p)
    assert list(rejected["predicted"] == UNKNOWN) == list(top < p)
    assert summary["rejected"] == int((top < p).sum()) > 0
    kept = top >= p
    assert list(rejected["predicted"][kept]) == list(table["predicted"][kept])


def test_a_run_trained_before_calibration_predicts_at_temperature_one(run_dir, recording, tmp_path):
    old = tmp_path / "old_run"
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("export"))
    (old / rundir.CALIBRATION).unlink()
    out = tmp_path / "pred.csv"
    code, err = run_cli("predict", str(old), "-i", str(recording), "-o", str(out))
    assert code == 0, err
    assert err.count(f"no {rundir.CALIBRATION}") == 1 and "temperature 1" in err
    calibrated, _ = predict(run_dir, [recording])
    plain = pd.read_csv(out)
    assert list(plain["predicted"]) == list(calibrated["predicted"])  # argmax unchanged
    t = rundir.read_json(run_dir / rundir.CALIBRATION)["temperature"]
    assert t != pytest.approx(1.0)
    p = [c for c in plain if c.startswith("p_")]
    assert not np.allclose(plain[p], calibrated[p], atol=1e-3)


def test_a_trained_run_records_its_calibration_and_reject_curve(run_dir):
    metrics = rundir.read_json(run_dir / rundir.METRICS)
    cal = metrics["calibration"]
    assert cal["fitted_on"] in ("val", "train") and cal["n_windows"] > 0
    assert set(cal["ece"]) == {"fit", "test"}
    assert cal["nll"]["fit"]["after"] <= cal["nll"]["fit"]["before"] + 1e-9
    curve = pd.read_csv(run_dir / rundir.REJECT_CURVE_CSV)
    assert list(curve.columns) == ["threshold", "coverage", "accuracy"]
    assert curve["coverage"].iloc[0] == 1.0
    assert curve["accuracy"].iloc[0] == pytest.approx(metrics["test"]["accuracy"])
    assert (run_dir / rundir.REJECT_CURVE_PNG).is_file()

"""har-bench predict: a recording stitched from known windows gives their labels back; every
bad input is one error line with exit code 2. The tests on a trained run are marked slow (the
run is trained once per session, see deploy_helpers)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import assert_one_line_error
from deploy_helpers import trained_run

from har_bench import cli
from har_bench.deploy.loaded import FinishedRun, Preprocessing
from har_bench.deploy.predict import predict, smooth
from har_bench.runs import rundir

RATE = 50.0  # the synthetic dataset's sampling rate


@pytest.fixture(scope="module")
def run_dir() -> Path:
    return trained_run()


@pytest.fixture(scope="module")
def stitched(run_dir: Path, tmp_path_factory) -> tuple[Path, list[str]]:
    """Raw test windows the model classifies correctly, laid end to end as one CSV recording
    at the run's rate, with their labels."""
    run = FinishedRun(run_dir)
    data = run.data
    pred = run.trainer.predict(run.model, data.test.X).argmax(1).numpy()
    y = data.test.y.numpy()
    raw = data.data.X[data.split.test]
    chosen = [i for i in np.flatnonzero(pred == y)][:12]
    assert len({int(y[i]) for i in chosen}) >= 2, "the fixture model must get two classes right"
    signal = np.concatenate([raw[i].T for i in chosen])  # [T, C]
    df = pd.DataFrame(signal, columns=data.data.channel_names)
    df.insert(0, "time", np.arange(len(df)) / RATE)
    path = tmp_path_factory.mktemp("rec") / "stitched.csv"
    df.to_csv(path, index=False)
    return path, [data.class_names[int(y[i])] for i in chosen]


def run_cli(*args: str) -> tuple[int, str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(list(args))
    return code, err.getvalue()


@pytest.mark.slow
def test_stitched_windows_come_back_with_their_labels(run_dir, stitched):
    path, labels = stitched
    window = FinishedRun(run_dir).preprocessing.window
    table, summary = predict(run_dir, [path], step=window)  # one window per stitched one
    assert list(table["predicted"]) == labels
    assert np.allclose(table["start_s"], np.arange(len(labels)) * window / RATE)
    probs = table.filter(like="p_").to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert summary["windows"] == len(labels)
    # The run's own step (half a window for a pre-cut dataset) gives windows in between too.
    table2, _ = predict(run_dir, [path])
    assert len(table2) == 2 * len(labels) - 1
    assert list(table2["predicted"][::2]) == labels


@pytest.mark.slow
def test_cli_writes_the_predictions_and_the_preprocessing(run_dir, stitched, tmp_path):
    path, labels = stitched
    out = tmp_path / "pred.csv"
    code, err = run_cli(
        "predict",
        str(run_dir),
        "--input",
        str(path),
        "-o",
        str(out),
        "--smooth",
        "3",
        "--step",
        "64",
    )
    assert code == 0, err
    table = pd.read_csv(out)
    assert list(table["predicted"]) == labels
    assert {"start_s", "end_s", "start_time", "smoothed"} <= set(table.columns)
    prep = json.loads((rundir.export_dir(run_dir) / rundir.PREPROCESSING).read_text())
    assert prep["channel_names"] == ["ch0", "ch1", "ch2"] and prep["sampling_rate_hz"] == RATE


def test_smoothing_is_a_causal_majority():
    pred = np.array([0, 1, 1, 0, 1, 2, 2, 2])
    probs = np.eye(3)[pred] * 0.9 + 0.1 / 3
    assert list(smooth(pred, probs, 3)) == [0, 1, 1, 1, 1, 2, 2, 2]
    assert list(smooth(pred, probs, 1)) == list(pred)


@pytest.mark.slow
def test_missing_channel_is_one_line(run_dir, stitched, tmp_path):
    path, _ = stitched
    bad = tmp_path / "two_channels.csv"
    pd.read_csv(path).drop(columns=["ch1"]).to_csv(bad, index=False)
    assert_one_line_error(*run_cli("predict", str(run_dir), "-i", str(bad)), "lacks channel(s) ch1")


@pytest.mark.slow
def test_recording_shorter_than_a_window_is_one_line(run_dir, stitched, tmp_path):
    path, _ = stitched
    short = tmp_path / "short.csv"
    pd.read_csv(path).head(20).to_csv(short, index=False)
    assert_one_line_error(
        *run_cli("predict", str(run_dir), "-i", str(short)), "too short", "64 samples"
    )


@pytest.mark.slow
def test_other_sampling_rate_is_refused_unless_resampled(run_dir, stitched, tmp_path):
    path, _ = stitched
    fast = tmp_path / "fast.csv"
    df = pd.read_csv(path)
    df["time"] = df["time"] / 2  # the same samples at 100 Hz
    df.to_csv(fast, index=False)
    assert_one_line_error(
        *run_cli("predict", str(run_dir), "-i", str(fast)), "100 Hz", "50 Hz", "--resample"
    )
    table, summary = predict(run_dir, [fast], resample=True)
    assert summary["resampled_from_hz"] == pytest.approx(100.0)
    assert summary["rate_hz"] == RATE and len(table) >= 1


@pytest.mark.slow
def test_unfinished_run_dir_is_one_line(run_dir, stitched, tmp_path):
    path, _ = stitched
    copy = tmp_path / "unfinished"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export"))
    rundir.write_status(copy, "running")
    assert_one_line_error(*run_cli("predict", str(copy), "-i", str(path)), "no finished model")
    assert_one_line_error(
        *run_cli("predict", str(tmp_path / "nowhere"), "-i", str(path)), "no such run directory"
    )


@pytest.mark.slow
def test_broken_saved_config_is_one_line(run_dir, stitched, tmp_path):
    """OmegaConf's errors while the saved config is rebuilt are bad input, as in a run."""
    import yaml

    path, _ = stitched
    copy = tmp_path / "edited"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export"))
    config = yaml.safe_load((copy / rundir.SAVED_CONFIG).read_text())
    config["dataset"] = "${nowhere}"
    (copy / rundir.SAVED_CONFIG).write_text(yaml.safe_dump(config))
    code, err = run_cli("predict", str(copy), "-i", str(path))
    assert_one_line_error(code, err, "nowhere")
    assert err.count("\n") == 1, err  # OmegaConf's full_key/object_type lines are not shown


def test_wisdm_raw_needs_every_sensor_of_the_run(tmp_path):
    """The WISDM line format: a watch run given only the accelerometer file says what is
    missing (no sibling gyro file in this layout)."""
    from har_bench.deploy.loaded import Preprocessing
    from har_bench.deploy.recording import RecordingError, read_recording

    prep = Preprocessing(
        dataset="wisdm",
        channel_names=[f"{s}_{a}" for s in ("accel", "gyro") for a in "xyz"],
        class_names=["walking"],
        mean=[0.0] * 6,
        std=[1.0] * 6,
        window=4,
        step=2,
        step_source="dataset.step",
        sampling_rate_hz=20.0,
        resample_hz=None,
        max_gap_s=1.0,
        input_shape=[6, 4],
        dataset_config={"device": "watch", "align_tolerance_ms": 25},
    )
    accel = tmp_path / "data_1600_accel_watch.txt"
    accel.write_text("".join(f"1600,A,{i * 50_000_000},1.0,2.0,3.0;\n" for i in range(10)))
    with pytest.raises(RecordingError, match="gyro_x, gyro_y, gyro_z"):
        read_recording([accel], prep)
    gyro = tmp_path / "data_1600_gyro_watch.txt"
    gyro.write_text(
        "".join(f"1600,A,{i * 50_000_000 + 1_000_000},4.0,5.0,6.0;\n" for i in range(10))
    )
    stream = read_recording([accel], prep)  # the gyro sibling is found beside it
    assert stream.signal.shape == (10, 6) and list(stream.labels[:1]) == ["walking"]
    assert stream.rate_hz == pytest.approx(20.0)
    phone = tmp_path / "data_1600_accel_phone.txt"
    phone.write_text(accel.read_text())
    with pytest.raises(RecordingError, match="phone recording"):
        read_recording([phone], prep)


@pytest.mark.parametrize(
    ("status", "error", "needles"),
    [
        (
            "failed",
            "ValueError: dataset.window=0 is invalid\nsecond line",
            ["the run failed: ValueError: dataset.window=0 is invalid", "error.txt"],
        ),
        (
            "diverged",
            "training diverged: loss=nan at epoch 0, optimizer step 3; try a lower optimizer.lr",
            ["the run diverged: training diverged: loss=nan", "lower optimizer.lr"],
        ),
        ("interrupted", "interrupted by SIGTERM", ["interrupted by SIGTERM", "run it again"]),
    ],
    ids=["failed", "diverged", "interrupted"],
)
@pytest.mark.parametrize("verb", ["predict", "export"])
def test_failed_run_says_how_it_ended(tmp_path, verb, status, error, needles):
    """Export and predict on a run that ended without a model say how it ended and why, not
    that it is still to complete."""
    from test_compare import make_run

    run = make_run(tmp_path / "run", status=status)
    rundir.write_status(run, status, error=error)
    rundir.write_error(run, "Traceback ...\n")
    args = ["-i", str(tmp_path / "rec.csv")] if verb == "predict" else []
    code, err = run_cli(verb, str(run), *args)
    line = assert_one_line_error(code, err, f"{run} has no finished model", *needles)
    assert "wait for" not in line


def _prep(channels: list[str], rate: float = RATE) -> Preprocessing:
    from har_bench.deploy.loaded import Preprocessing

    return Preprocessing(
        dataset="synthetic",
        channel_names=channels,
        class_names=["a", "b"],
        mean=[0.0] * len(channels),
        std=[1.0] * len(channels),
        window=4,
        step=2,
        step_source="dataset.step",
        sampling_rate_hz=rate,
        resample_hz=None,
        max_gap_s=1.0,
        input_shape=[len(channels), 4],
        dataset_config={"device": "watch", "align_tolerance_ms": 25},
    )


def _recording(tmp_path, time: list[float]) -> Path:
    path = tmp_path / "rec.csv"
    n = len(time)
    pd.DataFrame({"time": time, "ch0": np.arange(n), "ch1": np.ones(n)}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("time", "needle"),
    [
        # Every row twice: the rate would still read 50 Hz, each window holding half its time.
        (np.repeat(np.arange(10) / RATE, 2), "the time stamp of row 2 (0.0) repeats that of row 1"),
        ([0.0, 0.02, 0.06, 0.04, 0.08], "the time stamp of row 4 (0.04) is earlier than"),
        ([0.0, 0.02, float("nan"), 0.06, 0.08], "row 3 has no time stamp"),
    ],
    ids=["duplicated", "backwards", "nan"],
)
def test_broken_time_column_is_refused_with_its_row(tmp_path, time, needle):
    from har_bench.deploy.recording import RecordingError, read_recording

    path = _recording(tmp_path, list(time))
    prep = _prep(["ch0", "ch1"])
    with pytest.raises(RecordingError) as e:
        read_recording([path], prep)
    assert needle in str(e.value) and "\n" not in str(e.value)
    if np.isnan(time).any():
        with pytest.raises(RecordingError, match="row 3 has no time stamp"):
            read_recording([path], prep, sort_time=True)  # no order can place it
        return
    assert "--sort-time" in str(e.value)
    stream = read_recording([path], prep, sort_time=True)  # the explicit way on
    assert list(stream.raw_time) == sorted(set(time))  # in order, first of each time stamp
    assert stream.rate_hz == pytest.approx(RATE)


def test_a_non_numeric_channel_value_is_bad_input_with_its_row(tmp_path):
    from har_bench.deploy.recording import RecordingError, read_recording

    path = tmp_path / "rec.csv"
    rows = pd.DataFrame({"time": [0.0, 0.02, 0.04], "ch0": ["1.0", "abc", "2.0"], "ch1": 1.0})
    rows.to_csv(path, index=False)
    with pytest.raises(RecordingError, match="row 2 has an empty or non-numeric channel value"):
        read_recording([path], _prep(["ch0", "ch1"]))


def test_wisdm_time_stamp_on_two_lines_is_refused(tmp_path):
    from har_bench.deploy.recording import RecordingError, read_recording

    accel = tmp_path / "data_1600_accel_watch.txt"
    lines = [f"1600,A,{i * 50_000_000},1.0,2.0,3.0;\n" for i in range(10)]
    accel.write_text("".join(lines[:5] + lines[4:]))  # line 5 twice, out of order is sorted
    prep = _prep(["accel_x", "accel_y", "accel_z"], rate=20.0)
    with pytest.raises(RecordingError, match=r"\(200000000\) repeats"):
        read_recording([accel], prep)
    assert read_recording([accel], prep, sort_time=True).rate_hz == pytest.approx(20.0)


def test_output_onto_input_run_or_folder_is_one_line(tmp_path):
    """Checked before the run is read: the input, a run dir's files, a folder and a device
    (writing /dev/full as root would otherwise replace the device node) are refused."""
    from test_compare import make_run

    run = make_run(tmp_path / "run")
    other = make_run(tmp_path / "sweep" / "0")
    rec = _recording(tmp_path, [0.0, 0.02])
    before = rec.read_bytes()
    cases = [
        (rec, "is the input recording"),
        (run / rundir.METRICS, f"inside the run directory {run}"),
        (run / "export" / "pred.csv", f"inside the run directory {run}"),
        (other / rundir.HISTORY, "inside the run directory"),
        (tmp_path, "is a folder"),
    ]
    if Path("/dev/full").exists():
        cases.append((Path("/dev/full"), "is not a regular file"))
    link = tmp_path / "link.csv"
    link.symlink_to(rec)
    cases.append((link, "is the input recording"))
    for output, needle in cases:
        assert_one_line_error(
            *run_cli("predict", str(run), "-i", str(rec), "-o", str(output)), needle
        )
    assert rec.read_bytes() == before
    assert json.loads((run / rundir.METRICS).read_text())["status"] == "completed"
    assert not (run / "export").exists()


def test_write_table_is_atomic(tmp_path, monkeypatch):
    from har_bench.deploy.predict import write_table

    out = tmp_path / "pred.csv"
    out.write_text("earlier predictions\n")

    def full_disk(self, path, **kwargs):
        Path(path).write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_table(pd.DataFrame({"a": [1]}), out)
    assert out.read_text() == "earlier predictions\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pred.csv"]


@pytest.mark.slow
def test_unwritable_output_is_one_line(run_dir, stitched, tmp_path):
    path, _ = stitched
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, err = run_cli("predict", str(run_dir), "-i", str(path), "-o", str(blocker / "p.csv"))
    assert_one_line_error(code, err, f"cannot write --output {blocker / 'p.csv'}")

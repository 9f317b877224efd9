"""The Python API: train -> load_run -> predict on a tiny synthetic run, the same record as the
command's, predict through the command's code path; bad input raises UserError, never exits."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from cli_helpers import SMALL, in_process_cli
from helpers import REPO

import har_bench
from har_bench.core.errors import UserError
from har_bench.deploy.predict import predict
from har_bench.runs import rundir


@pytest.fixture
def quiet_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_import_stays_light():
    """``import har_bench`` (the command's first import) loads neither torch nor Hydra."""
    code = (
        "import sys, har_bench; har_bench.load_run; "
        "assert 'torch' not in sys.modules and 'hydra' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.slow
def test_train_load_run_predict_roundtrip(tmp_path, monkeypatch, capsys, quiet_logging):
    monkeypatch.chdir(tmp_path)
    api_dir = tmp_path / "api_run"
    run = har_bench.train(
        {**dict(o.split("=", 1) for o in SMALL), "paths.output_dir": str(tmp_path / "outputs")},
        run_dir=api_dir,
    )
    assert run.path == api_dir.resolve() and run.metrics["status"] == "completed"
    assert (api_dir / "train.log").is_file() and (api_dir / rundir.CALIBRATION).is_file()

    # The command line with the same overrides writes the same record.
    cli = in_process_cli(tmp_path, monkeypatch, capsys)
    cli_dir = tmp_path / "cli_run"
    code, err = cli(*SMALL, f"hydra.run.dir={cli_dir}")
    assert code == 0, err
    for name in (rundir.SAVED_CONFIG, rundir.SAVED_OVERRIDES):
        a = (api_dir / name).read_text().replace(str(api_dir.resolve()), "RUN")
        b = (cli_dir / name).read_text().replace(str(cli_dir), "RUN")
        if name == rundir.SAVED_OVERRIDES:  # the CLI's output_dir comes after hydra.run.dir
            a, b = sorted(yaml.safe_load(a)), sorted(yaml.safe_load(b))
        assert a == b
    hydra_api = yaml.safe_load((api_dir / rundir.SAVED_HYDRA_CONFIG).read_text())["hydra"]
    hydra_cli = yaml.safe_load((cli_dir / rundir.SAVED_HYDRA_CONFIG).read_text())["hydra"]
    assert hydra_api["runtime"]["choices"] == hydra_cli["runtime"]["choices"]
    assert hydra_api["mode"] == hydra_cli["mode"] == "RUN"
    assert sorted(p.name for p in api_dir.iterdir() if not p.name.startswith("events")) == sorted(
        p.name for p in cli_dir.iterdir() if not p.name.startswith("events")
    )

    run = har_bench.load_run(api_dir)
    assert run.config.model.stem_width == 8
    assert list(run.history["epoch"]) == [1]
    names = list(run.confusion_matrix.columns)
    assert list(run.confusion_matrix.index) == names and len(names) == 4
    assert int(run.confusion_matrix.to_numpy().sum()) == run.metrics["test"]["num_samples"]
    model = run.model()
    assert not model.training

    # Raw windows, standardised with the run's statistics, and a recording table: the
    # recording's windows get the same probabilities as the windows cut by hand.
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(64 * 3, 3)).astype(np.float32)
    windows = np.stack([signal[i : i + 64].T for i in (0, 64, 128)])
    by_window = run.predict(windows)
    assert list(by_window.columns) == ["predicted", *(f"p_{n}" for n in names)]
    frame = pd.DataFrame(signal, columns=["ch0", "ch1", "ch2"])
    frame.insert(0, "time", np.arange(len(frame)) / 50.0)
    by_frame = run.predict(frame, step=64)
    p = [f"p_{n}" for n in names]
    assert np.allclose(by_frame[p], by_window[p], atol=1e-5)
    assert np.allclose(by_window[p].sum(axis=1), 1, atol=1e-5)
    # ... and the command's predict on the same recording as a file.
    path = tmp_path / "rec.csv"
    frame.to_csv(path, index=False)
    table, _ = predict(api_dir, [path], step=64)
    assert np.allclose(table[p], by_frame[p], atol=1e-5)
    with pytest.raises(UserError, match=r"expected \[N, 3, 64\]"):
        run.predict(windows[:, :2])
    with pytest.raises(UserError, match="reject=2"):
        run.predict(windows, reject=2)

    table = har_bench.compare([api_dir, cli_dir])
    assert table.loc[0, "n"] == 2 and "accuracy_mean" in table
    assert table.loc[0, "accuracy_mean"] == pytest.approx(
        np.mean(
            [
                run.metrics["test"]["accuracy"],
                har_bench.load_run(cli_dir).metrics["test"]["accuracy"],
            ]
        )
    )

    # The guards of the command: a completed run is not overwritten.
    with pytest.raises(UserError, match="already holds a completed run"):
        har_bench.train(["dataset=synthetic"], run_dir=api_dir)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["trainer.max_epoch=3"], "did you mean trainer.max_epochs?"),
        ({"model": "resnet19"}, "model=resnet19 is unknown"),
        (["-m", "seed=1"], "a sweep (-m) is one train() call per setting"),
        (["seed=1,2"], "seed=1,2 lists several values"),
        ("model=resnet18", "expected a list of overrides"),
        (["trainer.max_epochs=abc"], "trainer.max_epochs"),
    ],
)
def test_bad_overrides_raise_user_error(overrides, needle, tmp_path, monkeypatch, quiet_logging):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        har_bench.train(overrides, run_dir=tmp_path / "run")
    assert needle in str(e.value)
    # Refused while composing: nothing written; refused by the run: recorded as bad input.
    metrics = tmp_path / "run" / rundir.METRICS
    assert not metrics.exists() or rundir.read_json(metrics)["user_error"] is True


def test_load_run_refuses_what_is_not_a_finished_run(tmp_path):
    from test_compare import make_run

    with pytest.raises(UserError, match="no such run directory"):
        har_bench.load_run(tmp_path / "nowhere")
    with pytest.raises(UserError, match="not a har-bench run directory"):
        har_bench.load_run(tmp_path)
    failed = make_run(tmp_path / "failed", status="failed")
    rundir.write_status(failed, "failed", error="ValueError: boom")
    with pytest.raises(UserError, match="has no finished model: the run failed: ValueError"):
        har_bench.load_run(failed)


def test_compare_refuses_no_runs_and_unknown_metrics(tmp_path):
    with pytest.raises(UserError, match="no runs"):
        har_bench.compare(tmp_path)
    with pytest.raises(UserError, match="unknown nope"):
        har_bench.compare(tmp_path, metrics=["nope"])
    with pytest.raises(UserError, match="no such file or directory"):
        har_bench.compare([tmp_path / "nowhere"])


def test_dict_overrides_are_written_in_hydra_grammar():
    from har_bench.api import override_list

    assert override_list(
        {"a": True, "b": None, "c": [1, 2], "d": 0.5, "e": "x y", "f": "resnet18"}
    ) == ["a=true", "b=null", "c=[1,2]", "d=0.5", "e='x y'", "f=resnet18"]


@pytest.mark.slow
def test_the_notebook_example_runs_as_shown(tmp_path, monkeypatch, quiet_logging):
    """docs/python-api.md's cells, run in order from a fresh folder, print what the page
    shows."""
    import contextlib
    import io
    import re

    text = (REPO / "docs" / "python-api.md").read_text()
    cells = re.findall(r"```python\n(.*?)```", text, re.S)
    shown = re.findall(r"```text\n(.*?)```", text, re.S)
    assert len(cells) == len(shown) >= 6
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    printed = []
    for i, cell in enumerate(cells):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(cell, f"python-api.md cell {i}", "exec"), namespace)
        printed.append(out.getvalue())
    # The page's tables come back with their shapes (figures may differ across machines).
    assert printed[1].splitlines()[1].split()[1] == "val"  # fitted on the validation part
    assert len(printed[1].splitlines()) == len(shown[1].splitlines())
    assert printed[2].splitlines()[0] == shown[2].splitlines()[0]  # the class names
    assert printed[3].strip() == shown[3].strip()
    assert printed[-1].count("UserError: ") == 2

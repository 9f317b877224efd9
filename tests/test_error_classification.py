"""Bad input versus bugs is decided where an error arises, not by its type: a ValueError from
inside har-bench or a library is a bug (exit 1, one line pointing at the traceback), however
much it looks like a bad value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import SMALL, in_process_cli

from har_bench import cli
from har_bench.runs import rundir


@pytest.fixture
def main(tmp_path, monkeypatch, capsys):
    return in_process_cli(tmp_path, monkeypatch, capsys)


def internal_failure(*args, **kwargs):
    # What scikit-learn said when a two-class ridge gave one score column.
    raise ValueError("shape mismatch: value array of shape (150,) could not be broadcast")


def assert_bug_line(code: int, err: str) -> str:
    assert code == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert "bug in har-bench" in lines[0] and "shape mismatch" in lines[0]
    return lines[0]


def test_an_internal_value_error_during_evaluation_is_a_bug_not_bad_input(
    main, tmp_path, monkeypatch
):
    from har_bench.experiment import run as experiment_run

    monkeypatch.setattr(experiment_run, "evaluate", internal_failure)
    run_dir = tmp_path / "run"
    code, err = main(*SMALL, f"hydra.run.dir={run_dir}")
    line = assert_bug_line(code, err)
    assert str(run_dir / rundir.ERROR) in line
    metrics = json.loads((run_dir / rundir.METRICS).read_text())
    assert metrics["status"] == "failed" and metrics["user_error"] is False
    trace = (run_dir / rundir.ERROR).read_text()
    assert "Traceback" in trace and "internal_failure" in trace


def test_a_library_missing_file_is_a_bug_unless_a_check_named_it(main, tmp_path, monkeypatch):
    from har_bench.experiment import run as experiment_run

    def missing(*args, **kwargs):
        raise FileNotFoundError("[Errno 2] No such file or directory: '/tmp/cache.bin'")

    monkeypatch.setattr(experiment_run, "evaluate", missing)
    run_dir = tmp_path / "run"
    code, err = main(*SMALL, f"hydra.run.dir={run_dir}")
    assert code == 1 and "bug in har-bench" in err and "Traceback" not in err
    assert json.loads((run_dir / rundir.METRICS).read_text())["user_error"] is False


@pytest.mark.parametrize(
    "args,target",
    [
        (["export"], "har_bench.deploy.export.export_run"),
        (["predict", "--input", "rec.csv"], "har_bench.deploy.predict.predict"),
    ],
)
def test_export_and_predict_classify_the_same_way(args, target, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(target, internal_failure)
    code = cli.main([*args, str(tmp_path)])
    err = capsys.readouterr().err
    line = assert_bug_line(code, err)
    saved = Path(line.rsplit("the traceback is in ", 1)[1])
    try:
        assert "Traceback" in saved.read_text() and "internal_failure" in saved.read_text()
    finally:
        saved.unlink()

"""A run never lands on another run: a directory holding one is refused (or moved aside when
asked), a sweep re-run skips what completed, a refused resume changes nothing, and a run dir
that cannot be made or a stop while starting gives one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cli_helpers import SMALL, assert_one_line_error, in_process_cli
from test_resume_cli import RUN, fake_run

import har_bench
from har_bench.runs import rundir


@pytest.fixture
def main(tmp_path, monkeypatch, capsys):
    return in_process_cli(tmp_path, monkeypatch, capsys)


def everything(path: Path) -> dict[str, bytes]:
    """Every file below ``path`` (hidden ones too), byte for byte."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def set_status(run_dir: Path, **fields) -> None:
    path = run_dir / "metrics.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


@pytest.mark.parametrize(
    "status,checkpoint,needles",
    [
        ("completed", True, ["already holds a completed run", "trainer.overwrite=true"]),
        (
            "interrupted",
            True,
            ["status: interrupted", "har-bench trainer.resume=", "trainer.overwrite=true"],
        ),
        ("failed", False, ["status: failed, no checkpoint to resume", "trainer.overwrite=true"]),
    ],
)
def test_a_new_run_into_a_dir_holding_a_run_is_refused_untouched(
    main, tmp_path, status, checkpoint, needles
):
    run_dir = fake_run(tmp_path / "runs", "run", RUN, status)
    if not checkpoint:
        (run_dir / "checkpoints" / "last.pt").unlink()
    before = everything(tmp_path / "runs")
    code, err = main(*RUN, f"hydra.run.dir={run_dir}")
    line = assert_one_line_error(code, err, str(run_dir), *needles)
    assert "moves the old run to run.old-<time>" in line and "deletes nothing" in line
    # .hydra/ included (Hydra would write it before any of our code ran), no log file either.
    assert everything(tmp_path / "runs") == before


def test_a_dir_with_only_a_hydra_record_holds_a_run(main, tmp_path):
    # A run stopped before its status was first written still is a run.
    run_dir = fake_run(tmp_path / "runs", "run", RUN, "running")
    (run_dir / "metrics.json").unlink()
    assert rundir.holds_run(run_dir)
    (run_dir / "checkpoints" / "last.pt").unlink()
    (run_dir / "checkpoints").rmdir()
    assert rundir.holds_run(run_dir)
    code, err = main(*RUN, f"hydra.run.dir={run_dir}")
    assert_one_line_error(code, err, "status: unknown")
    assert not rundir.holds_run(tmp_path / "runs" / "new")
    (tmp_path / "runs" / "new").mkdir()
    (tmp_path / "runs" / "new" / "train.log").write_text("")  # Hydra's log alone: not a run
    assert not rundir.holds_run(tmp_path / "runs" / "new")


@pytest.mark.slow
def test_overwrite_moves_the_old_run_aside_and_starts_afresh(main, tmp_path):
    run_dir = fake_run(tmp_path / "runs", "run", RUN, "completed")
    before = everything(run_dir)
    code, err = main(*SMALL, "trainer.overwrite=true", f"hydra.run.dir={run_dir}")
    assert code == 0, err
    (old,) = (tmp_path / "runs").glob("run.old-*")
    assert f"moved the run that was in {run_dir} to {old}" in err
    assert everything(old) == before
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert "trainer.overwrite=true" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    # Hydra's log file follows the new run, not the moved one.
    assert (run_dir / "train.log").stat().st_size > 0 and not (old / "train.log").exists()


def test_move_aside_never_replaces_an_existing_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir.time, "strftime", lambda fmt: "T")
    run_dir = tmp_path / "run"
    taken = tmp_path / "run.old-T"
    taken.mkdir()  # an empty folder: os.rename would silently replace it
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text("{}")
    assert rundir.move_aside(run_dir) == tmp_path / "run.old-T-1"
    assert (tmp_path / "run.old-T-1" / "metrics.json").is_file() and taken.is_dir()


def test_overwrite_and_resume_together_are_refused(main, tmp_path):
    run_dir = fake_run(tmp_path / "runs", "run", RUN, "interrupted")
    before = everything(run_dir)
    code, err = main(f"trainer.resume={run_dir}", "trainer.overwrite=true")
    assert_one_line_error(code, err, "give one of them")
    assert everything(run_dir) == before


def test_a_sweep_rerun_skips_completed_jobs_and_refuses_unfinished_ones(main, tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = fake_run(sweep_dir, "0", [*SMALL, "seed=0"], "completed")
    set_status(done, best_val_metric=0.5)
    stopped = fake_run(sweep_dir, "1", [*SMALL, "seed=1"], "interrupted")
    before = everything(sweep_dir)
    code, err = main("-m", *SMALL, "seed=0,1", f"hydra.sweep.dir={sweep_dir}")
    assert code == 2, err
    assert "job 0 (" in err and f"already completed in {done}; skipped" in err
    assert "error: job 1 (" in err and f"{stopped} already holds a run (status: interrupted)" in err
    assert f"har-bench trainer.resume={stopped}" in err
    assert "1 of 2 sweep jobs failed" in err and "Traceback" not in err
    after = everything(sweep_dir)
    assert {k: v for k, v in after.items() if "/" in k} == before  # the jobs: byte for byte
    assert "sweep_summary.csv" in after


def test_runs_moved_aside_are_not_jobs_runs_or_resume_candidates(tmp_path):
    """trainer.overwrite=true moves a sweep job's old run to <job>.old-<time> inside the sweep
    dir: the sweep's outcome, compare and trainer.resume=last must not count it."""
    from har_bench.analysis.grouping import find_run_dirs
    from har_bench.analysis.sweep import outcome

    sweep_dir = tmp_path / "sweep"
    fake_run(sweep_dir, "0", [*SMALL, "seed=0"], "completed")
    old = fake_run(sweep_dir, "1", [*SMALL, "seed=1"], "failed")
    moved = rundir.move_aside(old)
    fake_run(sweep_dir, "1", [*SMALL, "seed=1"], "completed")
    assert rundir.set_aside(moved.relative_to(sweep_dir))
    result = outcome(sweep_dir)
    assert (result.jobs, result.failures) == (2, [])
    assert sorted(p.name for p in find_run_dirs([sweep_dir])) == ["0", "1"]
    assert all(".old-" not in str(p) for p in rundir.checkpointed_runs(sweep_dir))


def test_a_completed_sweep_job_of_another_config_is_refused(main, tmp_path):
    sweep_dir = tmp_path / "sweep"
    fake_run(sweep_dir, "0", [*SMALL, "seed=0", "optimizer.lr=0.5"], "completed")
    before = everything(sweep_dir)
    code, err = main("-m", *SMALL, "seed=0", f"hydra.sweep.dir={sweep_dir}")
    assert code == 2, err
    assert "already holds a completed run of another config (optimizer.lr: 0.5 -> 0.002)" in err
    assert {k: v for k, v in everything(sweep_dir).items() if "/" in k} == before


def test_a_refused_resume_changes_nothing_and_gives_no_unsafe_advice(main, tmp_path):
    run_dir = fake_run(tmp_path / "runs", "run", RUN, "interrupted")
    set_status(run_dir, resume_command=f"har-bench trainer.resume={run_dir}")
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint\n")
    before = everything(run_dir)
    code, err = main(f"trainer.resume={run_dir}")
    assert_one_line_error(code, err, "last.pt cannot be read", "damaged or not a checkpoint")
    assert "weights_only" not in err
    # Status, resume command, saved overrides: all as they were; no error.txt either.
    assert everything(run_dir) == before


@pytest.mark.parametrize(
    "where",
    [
        lambda tmp: tmp / "a-file.txt",
        lambda tmp: tmp / "a-file.txt" / "run",
        pytest.param(
            lambda tmp: Path("/proc/har-bench-run"),
            marks=pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc"),
        ),
    ],
)
@pytest.mark.parametrize("sweep", [False, True])
def test_a_run_dir_that_cannot_be_created_is_one_line(main, tmp_path, where, sweep):
    (tmp_path / "a-file.txt").write_text("keep me")
    target = where(tmp_path)
    key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    args = ["-m", "seed=0"] if sweep else []
    code, err = main(*args, *SMALL, f"{key}={target}")
    assert_one_line_error(code, err, f"cannot create or write {target}", "hydra.run.dir")
    assert (tmp_path / "a-file.txt").read_text() == "keep me"


# Sends SIGTERM to itself while the CLI imports the training code, as a stop during a slow
# start-up (torch, CUDA, a large dataset) would arrive.
_STOP_WHILE_STARTING = """
import importlib.abc, os, signal, sys

class StopOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "har_bench.experiment.run":
            os.kill(os.getpid(), signal.SIGTERM)
        return None

sys.meta_path.insert(0, StopOnImport())
from har_bench.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigterm_while_starting_says_it_was_stopped(tmp_path):
    p = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_STOP_WHILE_STARTING), *SMALL],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            # The package under test, wherever this test file lies.
            "PYTHONPATH": str(Path(har_bench.__file__).parents[1]),
            "HAR_BENCH_DATA": str(tmp_path / "data"),
        },
    )
    assert p.returncode == 128 + signal.SIGTERM, p.stderr
    assert "stopped by SIGTERM while starting, before any training" in p.stderr
    assert "Traceback" not in p.stderr


def test_a_sweep_under_torchrun_stops_rather_than_skip_on_one_rank(main, tmp_path, monkeypatch):
    # The other ranks train into throw-away dirs: skipping on rank 0 alone would pair its next
    # job with their current one.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    sweep_dir = tmp_path / "sweep"
    fake_run(sweep_dir, "0", [*SMALL, "seed=0"], "completed")
    before = everything(sweep_dir)
    code, err = main("-m", *SMALL, "seed=0,1", f"hydra.sweep.dir={sweep_dir}")
    assert_one_line_error(code, err, "a sweep under torchrun cannot skip jobs")
    assert not (sweep_dir / "1").exists()
    assert {k: v for k, v in everything(sweep_dir).items() if "/" in k} == before


def test_only_a_resume_of_this_very_dir_may_start_in_it(tmp_path):
    from har_bench.runs.resume import RunDirTakenError, Start, check_new_run

    run_dir = fake_run(tmp_path, "run", RUN, "interrupted")
    elsewhere = {"trainer": {"resume": str(tmp_path / "other")}}
    with pytest.raises(RunDirTakenError, match="already holds a run"):
        check_new_run(run_dir, elsewhere, sweep=False)
    assert check_new_run(run_dir, {"trainer": {"resume": str(run_dir)}}, sweep=False) == Start()
    assert check_new_run(tmp_path / "new", {"trainer": {}}, sweep=False) == Start()

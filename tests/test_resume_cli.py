"""``trainer.resume`` on the command line: which run, what is refused, nothing overwritten."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import SMALL, assert_one_line_error, in_process_cli

from har_bench.config import compose
from har_bench.runs import resume

RUN = [*SMALL, "trainer.max_epochs=2"]


@pytest.fixture
def main(tmp_path, monkeypatch, capsys):
    return in_process_cli(tmp_path, monkeypatch, capsys)


def set_status(run_dir: Path, status: str, **extra) -> None:
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics.update(status=status, **extra)
    path.write_text(json.dumps(metrics))


@pytest.fixture
def finished_run(main, tmp_path) -> Path:
    code, err = main(*RUN)
    assert code == 0, err
    (run_dir,) = [p.parent for p in (tmp_path / "outputs").glob("*/*/metrics.json")]
    return run_dir


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != "metrics.json"
    }


_HOLD_LOCK = """
import sys, time
from har_bench.core.fs import hold_lock
assert hold_lock(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


@contextmanager
def held_by_another_process(path: Path) -> Iterator[None]:
    """Another process holds ``path``'s run-dir lock for the block."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_refused_resumes_leave_the_run_untouched(main, tmp_path):
    run_dir = fake_run(tmp_path / "outputs" / "day", "run", RUN, "completed")
    before = snapshot(run_dir)
    code, err = main(f"trainer.resume={run_dir}")
    assert_one_line_error(code, err, "already completed", str(run_dir))

    set_status(run_dir, "interrupted")
    code, err = main(f"trainer.resume={run_dir}", "model=resnet34")
    line = assert_one_line_error(code, err, "that run has a different config")
    assert "model.layers: [2, 2, 2, 2] -> [3, 4, 6, 3]" in line

    code, err = main(f"trainer.resume={run_dir}", "optimizer.lr=0.5")
    assert_one_line_error(code, err, "optimizer.lr: 0.002 -> 0.5")

    code, err = main("-m", f"trainer.resume={run_dir}")
    assert_one_line_error(code, err, "cannot be combined with -m")

    # Still running: a live process of ours that has "har" on its command line.
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "har-bench"])
    try:
        set_status(run_dir, "running", pid=live.pid, host=socket.gethostname())
        code, err = main(f"trainer.resume={run_dir}")
        assert_one_line_error(code, err, f"is still running (pid {live.pid})")
    finally:
        live.kill()
        live.wait()

    # Another resume of it has just started (status not yet "running"): it holds the run's lock.
    set_status(run_dir, "interrupted")
    with held_by_another_process(run_dir):
        code, err = main(f"trainer.resume={run_dir}")
        assert_one_line_error(code, err, "is in use by another har-bench process")
    assert snapshot(run_dir) == before
    assert len(list((tmp_path / "outputs").glob("*/*"))) == 1  # and no new run dir either


@pytest.mark.slow
def test_resume_continues_in_the_same_dir_with_more_epochs(main, tmp_path):
    # A constant lr: a cosine schedule's horizon cannot be stretched (next test).
    code, err = main(*RUN, "scheduler=none")
    assert code == 0, err
    (finished_run,) = [p.parent for p in (tmp_path / "outputs").glob("*/*/metrics.json")]
    history = pd.read_csv(finished_run / "history.csv")
    set_status(finished_run, "interrupted", error="interrupted by SIGINT")
    # The run's own overrides come from .hydra/overrides.yaml; the command line adds to them.
    code, err = main(f"trainer.resume={finished_run}", "trainer.max_epochs=3")
    assert code == 0, err
    assert len(list((tmp_path / "outputs").glob("*/*"))) == 1
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and "error" not in metrics
    assert metrics["resumed_from_epoch"] == 2 and metrics["epochs_trained"] == 3
    resumed = pd.read_csv(finished_run / "history.csv")
    assert list(resumed.epoch) == [1, 2, 3]
    pd.testing.assert_frame_equal(resumed.iloc[:2], history)
    env = json.loads((finished_run / "environment.json").read_text())
    assert env["resumed"][0]["from_epoch"] == 2
    overrides = (finished_run / ".hydra" / "overrides.yaml").read_text()
    assert "model=resnet18" in overrides and f"trainer.resume={finished_run}" in overrides


@pytest.mark.slow
def test_resume_refuses_to_stretch_a_cosine_schedule(main, finished_run, tmp_path):
    set_status(finished_run, "interrupted", error="interrupted by SIGINT")
    code, err = main(f"trainer.resume={finished_run}", "trainer.max_epochs=3")
    assert code == 2
    # The default warm-up + cosine schedule is per step: its horizon is epochs x steps per epoch.
    assert "total_steps (= epochs x steps per epoch) was" in err
    assert json.loads((finished_run / "metrics.json").read_text())["epochs_trained"] == 2


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda d: d / "nope", "no such run directory"),
        (lambda d: d, "is not a har-bench run directory (no .hydra/config.yaml)"),
    ],
)
def test_resume_target_must_be_a_run(main, tmp_path, make, needle):
    code, err = main(f"trainer.resume={make(tmp_path)}")
    assert_one_line_error(code, err, needle)


def test_resume_without_checkpoint(main, tmp_path):
    run_dir = fake_run(tmp_path / "outputs" / "day", "run", RUN, "interrupted")
    (run_dir / "checkpoints" / "last.pt").unlink()
    code, err = main(f"trainer.resume={run_dir}")
    assert_one_line_error(code, err, "has no checkpoints/last.pt", "without trainer.resume")


def fake_run(root: Path, name: str, overrides: list[str], status: str) -> Path:
    """A run directory as Hydra leaves it, without training: config, overrides, checkpoint."""
    run_dir = root / name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    from omegaconf import OmegaConf

    OmegaConf.save(compose(overrides), run_dir / ".hydra/config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra/overrides.yaml")
    (run_dir / "metrics.json").write_text(json.dumps({"status": status}))
    return run_dir


def test_resume_last_picks_the_newest_unfinished_run_with_this_config(tmp_path):
    out = tmp_path / "outputs"
    base = [*SMALL, f"paths.output_dir={out}"]
    older = fake_run(out / "day", "a", [*base, "seed=1"], "interrupted")
    fake_run(out / "day", "b", [*base, "seed=2"], "interrupted")
    fake_run(out / "day", "c", [*base, "seed=1"], "completed")  # newest, but done
    args = resume.resolve_resume(["trainer.resume=last", *base, "seed=1"])
    assert f"hydra.run.dir={older.resolve()}" in args
    assert f"trainer.resume={older.resolve()}" in args
    with pytest.raises(resume.ResumeError, match="no unfinished run under .* has this config"):
        resume.resolve_resume(["trainer.resume=last", *base, "seed=3"])


def test_paths_with_spaces_and_quotes_survive_hydra(tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for path in ("/tmp/a b/run", "/tmp/it's/run", "/tmp/x=y,z/run"):
        override = f"hydra.run.dir={resume.hydra_quote(path)}"
        assert OverridesParser.create().parse_override(override).value() == path


def test_a_run_never_writes_into_a_dir_another_process_trains_in(tmp_path):
    from har_bench.experiment.run import run
    from har_bench.runs.rundir import RunDirInUseError

    with (
        held_by_another_process(tmp_path),
        pytest.raises(RunDirInUseError, match="in use by another har-bench process"),
    ):
        run(None, tmp_path)  # refused before the config is even looked at
    assert list(tmp_path.iterdir()) == []  # no status written over the other process's


def test_resume_under_torchrun_is_refused_clearly(main, tmp_path, monkeypatch):
    run_dir = fake_run(tmp_path / "outputs" / "day", "run", RUN, "interrupted")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, err = main(f"trainer.resume={run_dir}")
    assert_one_line_error(code, err, "not supported under torchrun")


def test_a_run_pointed_at_a_busy_dir_leaves_its_saved_config_alone(main, tmp_path):
    run_dir = fake_run(tmp_path / "outputs" / "day", "run", RUN, "running")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with held_by_another_process(run_dir):
        code, err = main(*RUN, "seed=7", f"hydra.run.dir={run_dir}")
        assert_one_line_error(code, err, "is in use by another har-bench process")
    # .hydra/config.yaml (what a resume compares against) included: byte for byte.
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_key_added_later_with_a_null_default_does_not_block_a_resume():
    saved = {"trainer": {"max_epochs": 2}}
    assert resume.config_differences(saved, {"trainer": {"max_epochs": 2, "max_steps": None}}) == []
    assert resume.config_differences(saved, {"trainer": {"max_epochs": 2, "max_steps": 9}}) == [
        "trainer.max_steps: <absent> -> 9"
    ]


@pytest.mark.slow
def test_a_job_of_a_preset_sweep_resumes_as_one_run(main, tmp_path):
    """A preset that sets hydra.mode=MULTIRUN (cardinality_sweep, s0_table, ...) is in the saved
    overrides of each of its jobs: the resume command a stopped job prints must continue that
    job in its own directory, not start a new one-job sweep."""
    job = tmp_path / "sweep" / "0"
    small = [
        "experiment=cardinality_sweep",
        "dataset=synthetic",
        "model.shape=1x64d",
        "model.stem_width=8",
        "model.layers=[1,1,1,1]",
        "trainer.limit_train_batches=1",
        "trainer.limit_eval_batches=1",
        "trainer.progress=false",
        "efficiency.latency_repeats=1",
        "scheduler=none",
    ]
    code, err = main(*small, "trainer.max_epochs=1", "hydra.mode=RUN", f"hydra.run.dir={job}")
    assert code == 0, err
    set_status(job, "interrupted", error="interrupted by SIGINT")
    code, err = main(f"trainer.resume={job}", "trainer.max_epochs=2")
    assert code == 0, err
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_trained"] == 2
    assert not (tmp_path / "outputs" / "multirun").exists()  # no new sweep was started

"""Multirun sweeps: the summary at the end, failed jobs, per-job resources, TensorBoard sessions."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from cli_helpers import SMALL, in_process_cli
from omegaconf import OmegaConf
from test_compare import make_run

from har_bench.analysis import sweep
from har_bench.analysis.sweep import SUMMARY_CSV, configure_job_resources, summarise


def hparams_sessions(root: Path) -> Counter[str]:
    """Run dir (relative to root) -> number of HParams session-start summaries in its event
    files, read back with TensorBoard's own event reader."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata

    sessions: Counter[str] = Counter()
    for f in root.rglob("events.out.tfevents.*"):
        run = str(f.parent.relative_to(root))
        sessions[run] += 0
        for event in EventFileLoader(str(f)).Load():
            for value in event.summary.value:
                if value.tag == metadata.SESSION_START_INFO_TAG:
                    start = metadata.parse_session_start_info_plugin_data(
                        value.metadata.plugin_data.content
                    )
                    assert "model.cardinality" in start.hparams
                    sessions[run] += 1
    return sessions


@pytest.mark.slow
def test_sweep_with_a_failing_job_keeps_the_others_and_summarises(tmp_path, monkeypatch, capsys):
    main = in_process_cli(tmp_path, monkeypatch, capsys)
    code, err = main("-m", *SMALL, "trainer.num_threads=1", "optimizer.lr=0.001,-1,0.002")
    assert code == 2, err  # the one failure was bad input
    assert "error: job 1 (" in err and "1 of 3 sweep jobs failed" in err
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    with open(sweep_dir / SUMMARY_CSV) as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["status"]) for r in rows] == [
        ("0", "completed"),
        ("1", "failed"),
        ("2", "completed"),
    ]
    assert "optimizer.lr=-1" in rows[1]["overrides"] and "optimizer.lr" in rows[1]["error"]
    assert rows[1]["accuracy"] == "" and float(rows[0]["accuracy"]) > 0
    for job in ("0", "2"):
        names = {p.name for p in (sweep_dir / job).iterdir()}
        assert {"metrics.json", "timings.json", "model_summary.json", "history.csv"} <= names
    assert (sweep_dir / "1" / "error.txt").is_file()
    # TensorBoard: one HParams session per completed run, in the run's own event file (no
    # timestamped sub-run as SummaryWriter.add_hparams would create).
    assert hparams_sessions(sweep_dir) == {"0": 1, "2": 1}


def test_summary_of_fabricated_jobs(tmp_path, capsys):
    make_run(tmp_path / "0", cardinality=1, acc=0.9)
    make_run(tmp_path / "1", cardinality=2, status="failed")
    (tmp_path / "2" / ".hydra").mkdir(parents=True)  # died before run() began
    (tmp_path / "not_a_job").mkdir()
    result = summarise(tmp_path)
    assert result.jobs == 3 and result.failures == [True, False]
    with open(tmp_path / SUMMARY_CSV) as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["completed", "failed", "failed"]
    assert float(rows[0]["accuracy"]) == pytest.approx(0.9)
    out = capsys.readouterr().out
    assert "job 1 failed: ValueError: boom" in out
    assert "model.cardinality=1" in out  # the swept override identifies the job


def test_summary_finds_jobs_in_nested_subdirs(tmp_path, capsys):
    """hydra.sweep.subdir=<model>/<seed> (experiment=s0_table) nests the job dirs."""
    for i, model in enumerate(("resnet18", "cnn")):
        for seed in (10, 2):
            make_run(tmp_path / model / str(seed), cardinality=seed, acc=0.5 + i / 10)
    result = summarise(tmp_path)
    assert result.jobs == 4 and not result.failures
    with open(tmp_path / SUMMARY_CSV) as f:
        jobs = [r["job"] for r in csv.DictReader(f)]
    assert jobs == ["cnn/2", "cnn/10", "resnet18/2", "resnet18/10"]


def _job_config(launcher: dict, num_threads: int | None = None, sweep_dir: str = "x"):
    return OmegaConf.create(
        {
            "trainer": {"num_threads": num_threads},
            "hydra": {"launcher": launcher, "sweep": {"dir": sweep_dir}, "job": {"num": 3}},
        }
    )


@pytest.fixture
def restore_threads(monkeypatch):
    before = torch.get_num_threads()
    for key in (sweep.GPUS_ENV, sweep.SLOTS_ENV, sweep.MAIN_PID_ENV, "CUDA_VISIBLE_DEVICES"):
        # setenv first so monkeypatch records the original state: the code under test sets
        # these in os.environ itself, and an unset variable must be unset again afterwards.
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    yield
    torch.set_num_threads(before)


def test_joblib_jobs_get_cores_divided_by_jobs(restore_threads, monkeypatch):
    monkeypatch.setattr(sweep, "usable_cores", lambda: 8)
    joblib = {"_target_": sweep._JOBLIB, "n_jobs": 2}
    configure_job_resources(_job_config(joblib))
    assert torch.get_num_threads() == 4
    configure_job_resources(_job_config({**joblib, "n_jobs": -1}))  # one job per core
    assert torch.get_num_threads() == 1
    torch.set_num_threads(3)
    configure_job_resources(_job_config(joblib, num_threads=2))  # explicit setting wins
    assert torch.get_num_threads() == 3
    basic = {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}
    configure_job_resources(_job_config(basic))  # jobs in turn: torch's default stays
    assert torch.get_num_threads() == 3
    submitit = {"_target_": sweep._SUBMITIT + "LocalLauncher", "cpus_per_task": 2}
    configure_job_resources(_job_config(submitit))
    assert torch.get_num_threads() == 2


def test_parent_watch_runs_only_in_a_worker_of_the_sweep_process(restore_threads, monkeypatch):
    import threading

    def watching() -> bool:
        monkeypatch.setattr(sweep, "_watched_parent", None)
        sweep._watch_parent(poll_seconds=3600)
        return sweep._watched_parent is not None

    monkeypatch.setattr(threading.Thread, "start", lambda self: None)  # nothing really starts
    assert not watching()  # not in a sweep at all
    monkeypatch.setenv(sweep.MAIN_PID_ENV, str(os.getpid()))
    assert not watching()  # joblib with n_jobs=1 runs jobs in the main process: its parent
    #                        is a shell that may exit on purpose (nohup)
    monkeypatch.setenv(sweep.MAIN_PID_ENV, str(os.getppid()))
    assert watching()  # a worker whose parent launched the sweep


def test_each_joblib_worker_gets_its_own_gpu(restore_threads, monkeypatch, tmp_path):
    monkeypatch.setattr(sweep, "_held_slot", None)
    monkeypatch.setenv(sweep.GPUS_ENV, "0,1")
    monkeypatch.setenv(sweep.SLOTS_ENV, "2")
    config = _job_config({"_target_": sweep._JOBLIB, "n_jobs": 2}, sweep_dir=str(tmp_path))
    configure_job_resources(config)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    configure_job_resources(config)  # the same worker's next job keeps its GPU
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    # Another live worker (a process while this one holds slot 0) gets the other GPU.
    code = (
        "import os, sys; from omegaconf import OmegaConf; from har_bench.analysis import sweep; "
        "sweep.configure_job_resources(OmegaConf.create(sys.argv[1])); "
        "print(os.environ['CUDA_VISIBLE_DEVICES'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, OmegaConf.to_yaml(config)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.stdout.split()[-1] == "1"
    os.close(sweep._held_slot[1])

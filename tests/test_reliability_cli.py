"""The real command under real signals: SIGKILL + resume reproduces an uninterrupted run exactly,
SIGINT/SIGTERM save and say how to resume, and a sweep outlives a failing job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

# Big enough that an epoch takes a noticeable time (24 batches), small enough for CI.
ARGS = [
    "dataset=synthetic",
    "dataset.windows_per_subject=300",
    "model=resnet18",
    "model.stem_width=8",
    "trainer.max_epochs=4",
    "split.val_fraction=0.2",  # the best-epoch tracking resumes too
    "trainer.patience=null",
    # The recipe's random state (augmentation, mixup/cutmix, EMA) must resume exactly too.
    "augment.time_warp=0.2",
    "augment.mixup=0.2",
    "augment.cutmix=0.2",
    "trainer.num_threads=1",
    "trainer.progress=false",
    "efficiency.latency_repeats=2",
]
pytestmark = pytest.mark.slow


def start(*args: str, cwd: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "har_bench.cli", *args],
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HAR_BENCH_DATA": str(cwd / "data")},
    )


def finish(p: subprocess.Popen) -> tuple[int, str]:
    _, err = p.communicate(timeout=600)
    return p.returncode, err


def run_dir_of(cwd: Path) -> Path:
    (run_dir,) = (cwd / "outputs").glob("*/*")
    return run_dir


def wait_for_epoch(p: subprocess.Popen, cwd: Path, epoch: int = 1) -> int:
    """Poll until checkpoints/last.pt holds at least ``epoch`` completed epochs."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert p.poll() is None, p.communicate()[1]
        for last in (cwd / "outputs").glob("*/*/checkpoints/last.pt"):
            try:  # replaced atomically, so a read sees a whole file
                done = torch.load(last, weights_only=True)["epoch"]
            except (OSError, RuntimeError, EOFError):
                continue
            if done >= epoch:
                return done
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def results(run_dir: Path) -> tuple[dict, list[float]]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = pd.read_csv(run_dir / "history.csv")
    numbers = {k: metrics[k] for k in ("val", "test", "best_epoch", "best_val_metric")}
    return numbers, history[["train_loss", "val_loss", "val_macro_f1", "lr"]].values.tolist()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("reference")
    code, err = finish(start(*ARGS, cwd=cwd))
    assert code == 0, err
    return results(run_dir_of(cwd))


def test_sigkill_then_resume_gives_the_uninterrupted_result(reference, tmp_path):
    p = start(*ARGS, cwd=tmp_path)
    done = wait_for_epoch(p, tmp_path)
    p.kill()  # SIGKILL: no handler runs, nothing gets saved on the way out
    p.wait()
    run_dir = run_dir_of(tmp_path)
    assert done < 4
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "running"

    code, err = finish(start(f"trainer.resume={run_dir}", cwd=tmp_path))
    assert code == 0, err
    assert run_dir_of(tmp_path) == run_dir  # continued in place, no second run dir
    assert results(run_dir) == reference  # exactly, not approximately


def test_sigint_saves_prints_the_command_and_resume_last_matches(reference, tmp_path):
    p = start(*ARGS, cwd=tmp_path)
    wait_for_epoch(p, tmp_path)
    p.send_signal(signal.SIGINT)
    code, err = finish(p)
    assert code == 130, err
    run_dir = run_dir_of(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["interrupted"]["signal"] == "SIGINT"
    command = f"har-bench trainer.resume={run_dir.resolve()}"
    assert metrics["resume_command"] == command
    assert f"Resume with:\n  {command}" in err and "Traceback" not in err
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert len(pd.read_csv(run_dir / "history.csv")) == state["epoch"] >= 1

    # `last` + the same overrides finds it; the mid-epoch state resumes exactly.
    code, err = finish(start("trainer.resume=last", *ARGS, cwd=tmp_path))
    assert code == 0, err
    assert run_dir_of(tmp_path) == run_dir
    assert results(run_dir) == reference


def test_sigterm_is_saved_as_interrupted_exit_143(tmp_path):
    p = start(*ARGS, cwd=tmp_path)
    wait_for_epoch(p, tmp_path)
    p.send_signal(signal.SIGTERM)
    code, err = finish(p)
    assert code == 143, err
    metrics = json.loads((run_dir_of(tmp_path) / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["interrupted"]["signal"] == "SIGTERM"
    assert "Resume with:" in err


def test_a_failing_job_does_not_stop_the_sweep(tmp_path):
    small = ["experiment=smoke", "model=resnet18", "model.stem_width=8"]
    p = start("-m", *small, "efficiency.latency_repeats=1", "optimizer.lr=-1,0.001", cwd=tmp_path)
    code, err = finish(p)
    assert code == 2, err
    assert "Traceback" not in err
    assert "error: job 0 (" in err and "optimizer.lr=-1 is invalid" in err
    assert "1 of 2 sweep jobs failed" in err
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    failed = json.loads((sweep / "0" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "optimizer.lr=-1" in failed["error"]
    assert (sweep / "0" / "error.txt").is_file()
    assert json.loads((sweep / "1" / "metrics.json").read_text())["status"] == "completed"

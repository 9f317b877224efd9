"""End to end: a tiny training writes every run-directory artifact with consistent numbers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import SHARED_DATA

from har_bench.experiment.run import run
from har_bench.runs import rundir

ARTIFACTS = [
    "metrics.json",
    "history.csv",
    "confusion_matrix.csv",
    "confusion_matrix.png",
    "training_curves.png",
    "timings.json",
    "model_summary.json",
    "environment.json",
    "checkpoints/best.pt",
    "checkpoints/last.pt",
]
SMALL_MODEL = ["model=resnet18", "model.stem_width=8"]


def hparams_sessions(run_dir: Path) -> int:
    """Count HParams session-start summaries in the run's own event files."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata

    n = 0
    for f in run_dir.rglob("events.out.tfevents.*"):
        for event in EventFileLoader(str(f)).Load():
            for v in event.summary.value:
                n += v.tag == metadata.SESSION_START_INFO_TAG
    return n


def check_run_dir(run_dir: Path, epochs: int) -> dict:
    for name in ARTIFACTS:
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert 1 <= metrics["best_epoch"] <= epochs
    for split in ("val", "test"):
        if split == "val" and metrics["val"] is None:  # split.val_fraction=0
            continue
        for key in (
            "accuracy",
            "balanced_accuracy",
            "macro_precision",
            "macro_recall",
            "macro_f1",
            "weighted_f1",
        ):
            assert 0.0 <= metrics[split][key] <= 1.0
        for cls in metrics[split]["per_class"].values():
            assert set(cls) == {"precision", "recall", "f1", "support", "accuracy"}
    cm = pd.read_csv(run_dir / "confusion_matrix.csv", index_col=0)
    assert list(cm.columns) == list(cm.index) == list(metrics["test"]["per_class"])
    counts = cm.to_numpy()
    assert metrics["test"]["accuracy"] == pytest.approx(np.trace(counts) / counts.sum())
    assert counts.sum() == metrics["test"]["num_samples"]
    for i, name in enumerate(cm.index):
        assert counts[i].sum() == metrics["test"]["per_class"][name]["support"]

    history = pd.read_csv(run_dir / "history.csv")
    assert len(history) == metrics["epochs_trained"] <= epochs
    for col in (
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "val_macro_f1",
        "lr",
        "epoch_seconds",
        "samples_per_second",
    ):
        assert col in history
    best_row = history[history.epoch == metrics["best_epoch"]].iloc[0]
    if metrics["val"] is None:  # nothing validated: the last epoch is the one kept
        assert metrics["best_epoch"] == metrics["epochs_trained"] and history.val_loss.isna().all()
    else:
        assert best_row.val_macro_f1 == pytest.approx(metrics["best_val_metric"])
        assert best_row.val_macro_f1 == pytest.approx(metrics["val"]["macro_f1"], abs=1e-6)

    timings = json.loads((run_dir / "timings.json").read_text())
    assert len(timings["train_seconds_per_epoch"]) == len(history)
    assert timings["train_seconds_total"] == pytest.approx(sum(timings["train_seconds_per_epoch"]))
    assert 0 < timings["inference_latency_ms"]["p50"] <= timings["inference_latency_ms"]["p95"]
    assert timings["inference_samples_per_second"] > 0 and timings["test_inference_seconds"] > 0
    summary = json.loads((run_dir / "model_summary.json").read_text())
    assert summary["params"] == summary["trainable_params"] > 0
    assert summary["flops_per_sample"] > 0 and summary["size_mb"] > 0
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["torch"] and env["device"] == timings["device"] and env["processor"]
    assert hparams_sessions(run_dir) == 1
    return metrics


def test_tiny_run_writes_every_artifact(compose_cfg, tmp_path):
    cfg = compose_cfg(
        "dataset=synthetic",
        *SMALL_MODEL,
        "trainer.max_epochs=3",
        "efficiency.latency_repeats=3",
        "split.val_fraction=0.2",
    )
    run_dir = tmp_path / "run"
    metrics = run(cfg, run_dir)
    on_disk = check_run_dir(run_dir, epochs=3)
    assert on_disk["test"] == metrics["test"]


def test_failed_run_keeps_status_and_traceback(compose_cfg, tmp_path):
    cfg = compose_cfg("dataset=synthetic", "dataset.num_subjects=1")
    with pytest.raises(ValueError, match="num_subjects"):
        run(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "num_subjects" in metrics["error"]
    assert "Traceback" in (tmp_path / "run" / rundir.ERROR).read_text()


def test_uci_har_layout_end_to_end(compose_cfg, tmp_path):
    from fixtures_uci import write_uci_dataset

    fx = write_uci_dataset(tmp_path / "src", gz=True, n_train=24, n_test=12)
    cfg = compose_cfg(
        f"dataset.root={fx.dataset_dir}",
        *SMALL_MODEL,
        "trainer.max_epochs=2",
        "efficiency.latency_repeats=2",
        "split.val_fraction=0.5",
    )
    run(cfg, tmp_path / "run")
    metrics = check_run_dir(tmp_path / "run", epochs=2)
    assert metrics["test"]["num_samples"] == 12


def cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "har_bench.cli", *args],
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HAR_BENCH_DATA": str(cwd / "data"), **(env or {})},
    )


@pytest.mark.slow
def test_cli_runs_started_together_get_their_own_dirs(tmp_path):
    # One thread each: two processes on two cores must not oversubscribe (OpenMP spin-waits).
    args = [
        "experiment=smoke",
        *SMALL_MODEL,
        "efficiency.latency_repeats=2",
        "trainer.num_threads=1",
    ]
    procs = [cli(*args, cwd=tmp_path) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    runs = sorted((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 2
    for r in runs:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", r.parent.name)
        assert re.fullmatch(r"\d{2}-\d{2}-\d{2}-\d{6}", r.name)
        assert json.loads((r / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_cli_multirun_puts_jobs_under_multirun(tmp_path):
    p = cli(
        "-m",
        "experiment=smoke",
        *SMALL_MODEL,
        "efficiency.latency_repeats=2",
        "model.cardinality=1",
        "seed=0,1",
        cwd=tmp_path,
    )
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    jobs = sorted((tmp_path / "outputs" / "multirun").glob("*/*/*/metrics.json"))
    assert [j.parent.name for j in jobs] == ["0", "1"]


def test_cli_help_lists_groups(tmp_path):
    p = cli("--help", cwd=tmp_path)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0
    for group in ("model:", "dataset:", "optimizer:", "trainer:", "experiment:"):
        assert group in out
    assert "resnext50" in out and "uci_har" in out


def test_cli_user_error_is_one_line_exit_2(tmp_path):
    p = cli("dataset=synthetic", "trainer.accumulate_grad_batches=0", cwd=tmp_path)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2
    assert "trainer.accumulate_grad_batches=0 is invalid" in err
    assert "Traceback" not in err
    (metrics,) = (tmp_path / "outputs").glob("*/*/metrics.json")
    assert json.loads(metrics.read_text())["status"] == "failed"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "UCI_HAR").is_dir(), reason="shared UCI-HAR data absent")
def test_real_uci_har_resnext50_smoke(tmp_path):
    p = cli(
        "model=resnext50",
        "dataset=uci_har",
        f"dataset.root={SHARED_DATA / 'UCI_HAR'}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=5",
        "efficiency.latency_repeats=5",
        cwd=tmp_path,
    )
    out, err = p.communicate(timeout=900)
    assert p.returncode == 0, err
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    metrics = check_run_dir(run_dir, epochs=1)
    assert metrics["test"]["num_samples"] == 2947
    assert metrics["model"] == "resnext50" and metrics["dataset"] == "uci_har"
    assert set(metrics["test"]["per_class"]) == {
        "WALKING",
        "WALKING_UPSTAIRS",
        "WALKING_DOWNSTAIRS",
        "SITTING",
        "STANDING",
        "LAYING",
    }


def test_recipe_with_refit_tests_the_refit_model_and_never_sees_test_subjects(
    compose_cfg, tmp_path
):
    cfg = compose_cfg(
        "dataset=synthetic",
        *SMALL_MODEL,
        "trainer.max_epochs=2",
        "efficiency.latency_repeats=2",
        "augment=sensor",
        "augment.mixup=0.2",
        "scheduler=warmup_cosine",
        "trainer.ema_decay=0.9",
        "trainer.label_smoothing=0.1",
        "trainer.refit=true",
        "trainer.patience=null",
        "split.val_fraction=0.2",
    )
    run_dir = tmp_path / "run"
    metrics = run(cfg, run_dir)
    check_run_dir(run_dir, epochs=2)
    assert metrics["weights"] == "ema" and metrics["tested"] == "refit"
    refit = metrics["refit"]
    # A fixed schedule (no early stopping): the refit runs the whole of it.
    assert refit["epochs"] == 2 and refit["epochs_from"] == "schedule"
    assert len(refit["history"]) == refit["epochs"]
    report = json.loads((run_dir / "split_report.json").read_text())
    parts = report["parts"]
    assert report["refit"]["test_subjects_in_training"] == []
    assert report["refit"]["train_windows"] == parts["train"]["windows"] + parts["val"]["windows"]
    assert set(report["refit"]["train_subjects"]).isdisjoint(parts["test"]["subjects"])
    assert (run_dir / "checkpoints" / "refit" / "last.pt").is_file()
    # The temperature comes from windows no tested weights saw: the first phase's validation
    # part, scored by the first phase's model, as the first phase reported it.
    calibration = metrics["calibration"]
    assert calibration["fitted_on"] == "val (first phase)"
    assert calibration["n_windows"] == parts["val"]["windows"]


def test_step_budget_sets_the_epochs_of_both_phases(compose_cfg, tmp_path):
    cfg = compose_cfg(
        "dataset=synthetic",
        *SMALL_MODEL,
        "trainer.max_epochs=6",
        "trainer.batch_size=32",
        "trainer.max_steps=15",
        "trainer.refit=true",
        "split.val_fraction=0.2",
        "efficiency.latency_repeats=2",
    )
    run_dir = tmp_path / "run"
    metrics = run(cfg, run_dir)
    train_windows = json.loads((run_dir / "split_report.json").read_text())["parts"]["train"]
    per_epoch = -(-train_windows["windows"] // 32)
    epochs = -(-15 // per_epoch)
    assert epochs < 6  # the budget binds
    assert metrics["step_budget"] == {
        "max_steps": 15,
        "steps_per_epoch": per_epoch,
        "max_epochs": 6,
        "epochs": epochs,
    }
    assert metrics["epochs_trained"] == epochs and metrics["refit"]["epochs"] == epochs
    history = pd.read_csv(run_dir / "history.csv")
    assert len(history) == epochs and history["lr"].iloc[-1] < history["lr"].max()


def test_minirocket_goes_through_the_same_stages(compose_cfg, tmp_path):
    pytest.importorskip("aeon", reason="model=minirocket needs the [rocket] extra")
    cfg = compose_cfg(
        "dataset=synthetic",
        "model=minirocket",
        "model.n_kernels=168",
        "efficiency.latency_repeats=2",
    )
    run_dir = tmp_path / "run"
    metrics = run(cfg, run_dir)
    assert metrics["status"] == "completed" and metrics["weights"] == "fitted"
    assert metrics["epochs_trained"] == 0 and 0 <= metrics["test"]["accuracy"] <= 1
    summary = json.loads((run_dir / "model_summary.json").read_text())
    assert summary["params"] > 0 and summary["flops_per_sample"] is None
    timings = json.loads((run_dir / "timings.json").read_text())
    assert timings["train_samples_per_second"] > 0 and timings["inference_latency_ms"]["p50"] > 0
    assert (run_dir / "confusion_matrix.csv").is_file() and hparams_sessions(run_dir) == 1


def test_no_validation_part_trains_the_schedule_and_tests_its_last_weights(compose_cfg, tmp_path):
    cfg = compose_cfg(
        "dataset=synthetic",
        *SMALL_MODEL,
        "trainer.max_epochs=2",
        "efficiency.latency_repeats=2",
        "split.val_fraction=0",
    )
    run_dir = tmp_path / "run"
    metrics = run(cfg, run_dir)
    assert metrics["status"] == "completed" and metrics["val"] is None
    assert metrics["best_epoch"] == 2 and 0 <= metrics["test"]["accuracy"] <= 1
    assert json.loads((run_dir / "split_report.json").read_text())["parts"]["val"]["windows"] == 0


@pytest.mark.skipif(
    "model name"
    not in (Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""),
    reason="no /proc/cpuinfo model name here",
)
def test_environment_names_the_cpu_model_not_the_architecture():
    from har_bench.runs.artifacts import environment_info

    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next(
        v.strip() for k, _, v in (ln.partition(":") for ln in lines) if k.strip() == "model name"
    )
    assert environment_info("cpu")["processor"] == model

"""The sweep launchers and sweepers end to end: joblib (2 parallel jobs), submitit's local
executor (1 job) and the Optuna preset (3 trials), each on a tiny synthetic run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import SMALL, in_process_cli
from test_sweep import hparams_sessions

from har_bench.analysis.sweep import SUMMARY_CSV


def _har_bench(tmp_path: Path, *args: str, cores: int | None = None) -> subprocess.CompletedProcess:
    def pin() -> None:
        # Pins the sweep (and the workers it spawns) to `cores` CPUs, so the threads the
        # launcher gives each job (cores // n_jobs) do not depend on the test machine.
        if cores is not None:
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])

    return subprocess.run(
        [sys.executable, "-m", "har_bench.cli", *args, f"paths.output_dir={tmp_path / 'outputs'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=pin,
        env={**os.environ, "HAR_BENCH_DATA": str(tmp_path / "data")},
    )


def _sweep_dir(tmp_path: Path) -> Path:
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    return sweep_dir


def _summary(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / SUMMARY_CSV) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_joblib_launcher_runs_two_jobs_with_one_thread_each(tmp_path):
    # No trainer.num_threads: the launcher must set it, 2 cores // 2 jobs = 1 thread per job.
    small = [a for a in SMALL if not a.startswith("trainer.num_threads")]
    p = _har_bench(
        tmp_path,
        "-m",
        "hydra/launcher=parallel",
        *small,
        "seed=0,1",
        "model.cardinality=1",
        cores=2,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    sweep_dir = _sweep_dir(tmp_path)
    rows = _summary(sweep_dir)
    assert [(r["job"], r["status"]) for r in rows] == [("0", "completed"), ("1", "completed")]
    assert "Joblib.Parallel(n_jobs=2" in p.stdout + p.stderr
    for job in ("0", "1"):
        timings = json.loads((sweep_dir / job / "timings.json").read_text())
        assert timings["torch_threads"] == 1
    assert hparams_sessions(sweep_dir) == {"0": 1, "1": 1}
    assert "sweep " in p.stdout and "2 jobs" in p.stdout


@pytest.mark.slow
def test_submitit_local_executor_runs_one_job(tmp_path):
    p = _har_bench(
        tmp_path,
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=10",
        *SMALL,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    sweep_dir = _sweep_dir(tmp_path)
    assert (sweep_dir / ".submitit").is_dir()
    assert [r["status"] for r in _summary(sweep_dir)] == ["completed"]
    assert json.loads((sweep_dir / "0" / "timings.json").read_text())["torch_threads"] == 1


def test_slurm_preset_composes(compose_cfg):
    cfg = compose_cfg(
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", return_hydra_config=True
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.cpus_per_task) == ("gpu", 1, 8)


def test_optuna_preset_maximises_validation_macro_f1(compose_cfg):
    cfg = compose_cfg("hparams_search=optuna", return_hydra_config=True)
    assert cfg.hydra.sweeper.direction == "maximize"
    assert cfg.trainer.monitor == "val_macro_f1"
    assert not any("test" in k for k in cfg.hydra.sweeper.params)


@pytest.mark.slow
def test_optuna_search_runs_trials_and_reports_the_best_validation_score(
    tmp_path, monkeypatch, capsys
):
    main = in_process_cli(tmp_path, monkeypatch, capsys)
    code, err = main(
        "hparams_search=optuna",
        "experiment=smoke",  # resnext_har: every cardinality of the search space fits it
        "trainer.progress=false",
        "trainer.num_threads=1",
        "efficiency.latency_repeats=1",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "model.cardinality=choice(1,2)",  # a search space given on the command line
    )
    assert code == 0, err
    sweep_dir = _sweep_dir(tmp_path)
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    val = [
        json.loads((sweep_dir / str(j) / "metrics.json").read_text())["best_val_metric"]
        for j in range(3)
    ]
    assert best["best_value"] == pytest.approx(max(val))
    assert len(_summary(sweep_dir)) == 3


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie no-one reaps (PID 1 in a container) has finished


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_joblib_workers_stop_and_save_when_the_sweep_process_is_killed(tmp_path):
    import signal
    import time

    sweep_dir = tmp_path / "sweep"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "har_bench.cli",
            "-m",
            "hydra/launcher=parallel",
            *SMALL,
            "trainer.max_epochs=500",
            "trainer.patience=null",  # early stopping would end the jobs within seconds
            "seed=0,1,2",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HAR_BENCH_DATA": str(tmp_path / "data")},
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            running = [m for m in sweep_dir.glob("*/metrics.json") if '"running"' in m.read_text()]
            if len(running) == 2 and all((m.parent / "checkpoints").is_dir() for m in running):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the two parallel jobs never started training")
        workers = [
            int(pid) for pid in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
        ]
        p.send_signal(signal.SIGKILL)  # nothing in the main process can forward a signal
        p.wait()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.5)
        assert not any(_alive(w) for w in workers), "workers outlived the sweep"
    finally:
        if p.poll() is None:
            p.kill()
    statuses = sorted(json.loads(m.read_text())["status"] for m in sweep_dir.glob("*/metrics.json"))
    assert statuses == ["interrupted", "interrupted"]  # saved, resumable; job 2 never started
    for job in ("0", "1"):
        assert (sweep_dir / job / "checkpoints" / "last.pt").is_file()

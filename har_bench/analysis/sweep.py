"""Hydra callback for multiruns: per-job resources, the sweep summary and, with
``tracking=mlflow``, the sweep's parent run in MLflow.

Configured in ``configs/hydra/default.yaml`` (``hydra.callbacks.sweep``), so every launcher gets
it. Jobs may run in other processes (joblib's loky workers, submitit), so nothing is passed
in memory: the summary at the end reads each job's directory, which is also where a failed
job's status and error already are.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from har_bench.core.fs import atomic_write
from har_bench.runs.rundir import HYDRA_DIR, METRICS, set_aside
from har_bench.runs.tracking import MlflowTracking, begin_sweep, end_sweep, enter_sweep_job

log = logging.getLogger(__name__)

SUMMARY_CSV = "sweep_summary.csv"
# Set by the sweep's own process for its joblib workers (inherited when loky spawns them).
GPUS_ENV = "HAR_BENCH_SWEEP_GPUS"
SLOTS_ENV = "HAR_BENCH_SWEEP_SLOTS"
MAIN_PID_ENV = "HAR_BENCH_SWEEP_PID"  # the process that launched the joblib workers
# The sweep directory, for the process that started the sweep to read its jobs' outcome.
SWEEP_DIR_ENV = "HAR_BENCH_SWEEP_DIR"
_JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
_SUBMITIT = "hydra_plugins.hydra_submitit_launcher.submitit_launcher."


@dataclass
class SweepResult:
    sweep_dir: Path
    jobs: int = 0
    failures: list[bool] = field(default_factory=list)  # per failed job: was it bad input?


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[SWEEP_DIR_ENV] = str(config.hydra.sweep.dir)
        launcher = config.hydra.launcher
        if launcher.get("_target_") == _JOBLIB:
            n_jobs = _joblib_jobs(launcher.get("n_jobs"))
            gpus = _visible_gpus()
            os.environ[SLOTS_ENV] = str(n_jobs)
            os.environ[MAIN_PID_ENV] = str(os.getpid())
            if len(gpus) > 1:
                os.environ[GPUS_ENV] = ",".join(gpus)
                log.info("%d parallel jobs on GPUs %s, one GPU per job", n_jobs, ",".join(gpus))
        tracker = tracked(config)
        if tracker is not None:
            begin_sweep(tracker, Path(str(config.hydra.sweep.dir)))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        _job_done.clear()
        configure_job_resources(config)
        # In the job's own process (a joblib or submitit worker too): its MLflow run is a child
        # of the sweep's parent run.
        enter_sweep_job(Path(str(config.hydra.sweep.dir)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        result = None
        try:
            result = summarise(sweep_dir)
        except Exception as e:  # the jobs' own results must never be lost to a summary bug
            log.exception("could not write the sweep summary: %s", e)
        tracker = tracked(config)
        if tracker is not None:
            failed = result is None or bool(result.failures)
            end_sweep(tracker, sweep_dir, failed, [sweep_dir / SUMMARY_CSV])
        enter_sweep_job(None)
        for key in (GPUS_ENV, SLOTS_ENV):
            os.environ.pop(key, None)


def tracked(config: DictConfig) -> MlflowTracking | None:
    """The sweep's MLflow settings (``tracking=mlflow``), or None. A bad setting is left to the
    jobs, which report it as their error."""
    from hydra.utils import instantiate

    if not config.get("tracking"):
        return None
    try:
        tracker = instantiate(config.tracking)
    except Exception:
        return None
    return tracker if isinstance(tracker, MlflowTracking) else None


# -- per-job resources -------------------------------------------------------------------------


def _joblib_jobs(n_jobs: Any) -> int:
    cores = usable_cores()
    n = int(n_jobs) if n_jobs is not None else -1
    # joblib's convention: -1 = all cores, -2 = all but one, ...
    return max(1, cores + 1 + n if n < 0 else n)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in (s.strip() for s in env.split(",")) if g and g != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


_held_slot: tuple[int, int] | None = None  # (slot, fd) this worker process holds


def _acquire_slot(lock_dir: Path, n_slots: int) -> int:
    """A slot number unique among the live workers of this sweep, kept for the process's life.

    A loky worker runs job after job, and once CUDA is initialised in it the visible devices
    can no longer change; the job number would also pin two concurrent jobs to one GPU when
    jobs finish out of order. A lock file per slot, held until the worker exits (the OS frees
    it then), gives each live worker its own slot.
    """
    import fcntl  # POSIX only; imported here so that runs elsewhere never need it

    global _held_slot
    if _held_slot is not None:
        return _held_slot[0]
    lock_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(max(n_slots, 1) * 4):
        fd = os.open(lock_dir / f"slot{slot}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        _held_slot = (slot, fd)
        return slot
    raise RuntimeError(f"no free job slot in {lock_dir}")


def configure_job_resources(config: DictConfig) -> None:
    """Torch threads (and the GPU) for a job that shares the machine with other jobs.

    With the joblib launcher, n parallel jobs each default to torch's all-core thread pool;
    oversubscribed OpenMP threads spin-wait for each other and a job runs many times slower
    than alone. Each job gets cores // n threads unless ``trainer.num_threads`` is set.
    Under submitit each job gets its ``cpus_per_task``.
    """
    launcher = config.hydra.launcher
    target = str(launcher.get("_target_", ""))
    threads: int | None = None
    if target == _JOBLIB:
        _watch_parent()
        n_jobs = int(os.environ.get(SLOTS_ENV) or _joblib_jobs(launcher.get("n_jobs")))
        gpus = [g for g in os.environ.get(GPUS_ENV, "").split(",") if g]
        if gpus:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            slot = _acquire_slot(sweep_dir / ".slots", n_jobs)
            gpu = gpus[slot % len(gpus)]
            if os.environ.get("CUDA_VISIBLE_DEVICES") not in (None, gpu) and _cuda_initialised():
                log.warning("CUDA already initialised in this worker; GPU pinning skipped")
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = gpu
                log.info("job %s: GPU %s (worker slot %d)", config.hydra.job.num, gpu, slot)
        threads = max(1, usable_cores() // n_jobs)
    elif target.startswith(_SUBMITIT) and launcher.get("cpus_per_task"):
        threads = int(launcher.cpus_per_task)
    if threads is None or config.trainer.get("num_threads") is not None:
        return
    import torch

    torch.set_num_threads(threads)
    log.info("job %s: %d torch thread(s)", config.hydra.job.get("num"), threads)


_watched_parent: int | None = None
_job_done = threading.Event()  # set between jobs in a launcher worker


def job_finished() -> None:
    """Called by the CLI when a job's run ends, however it ends (Hydra's ``on_job_end`` is
    skipped when a job is interrupted)."""
    _job_done.set()


def _watch_parent(poll_seconds: float = 1.0) -> None:
    """Stop this worker like Ctrl-C would when the sweep's main process goes away.

    A joblib (loky) worker is its own process: when the main ``har-bench -m`` process is
    killed (SIGTERM or SIGKILL to its pid alone, a crashed login node session), the workers
    would go on training the jobs they hold with nobody to collect them, and a rerun would
    compete with them for the cores. Once the parent pid changes (we were re-parented), the
    worker sends itself SIGTERM: the job saves ``last.pt``, records ``interrupted`` with its
    resume command, and the worker exits.
    """
    import signal
    import time

    global _watched_parent
    if _watched_parent is not None:
        return
    # Only in a worker whose parent is the sweep's main process: joblib runs jobs in the main
    # process itself when n_jobs resolves to 1, and that process's parent is a shell (which
    # may exit on purpose, e.g. under nohup).
    main = int(os.environ.get(MAIN_PID_ENV) or 0)
    parent = os.getppid()
    if not main or main == os.getpid() or parent != main:
        return
    _watched_parent = parent

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        if not _job_done.is_set():
            log.warning("the sweep's main process (pid %d) is gone: stopping this job", parent)
            os.kill(os.getpid(), signal.SIGTERM)
            _job_done.wait()
        # loky does not retire workers whose parent died; an idle one would linger forever.
        logging.shutdown()
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="har-bench-parent-watch", daemon=True).start()


def _cuda_initialised() -> bool:
    import sys

    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


# -- the summary -------------------------------------------------------------------------------


_METRIC_COLS = (
    "val_accuracy",
    "val_macro_f1",
    "accuracy",
    "macro_f1",
    "params",
    "flops",
    "train_sps",
    "latency_ms",
    "epochs",
)
SUMMARY_COLUMNS = ("job", "status", "overrides", *_METRIC_COLS, "error", "run_dir")


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job directories (those Hydra wrote a .hydra/ into), in job order; nested
    ones too, for a ``hydra.sweep.subdir`` such as ``<model>/<seed>``."""
    dirs = [
        p.parent
        for p in sweep_dir.rglob(HYDRA_DIR)
        if p.is_dir() and p.parent != sweep_dir and not set_aside(p.parent.relative_to(sweep_dir))
    ]

    def order(d: Path) -> list[tuple[bool, int, str]]:
        parts = d.relative_to(sweep_dir).parts
        return [(not n.isdigit(), int(n) if n.isdigit() else 0, n) for n in parts]

    return sorted(dirs, key=order)


def outcome(sweep_dir: Path) -> SweepResult:
    """How the sweep's jobs ended, read from their run directories."""
    return _read_jobs(sweep_dir)[0]


def summarise(sweep_dir: Path, print_table: bool = True) -> SweepResult:
    """Write ``sweep_summary.csv`` (one row per job) and print it as a table."""
    import csv

    result, rows = _read_jobs(sweep_dir)
    path = sweep_dir / SUMMARY_CSV

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(SUMMARY_COLUMNS))
            w.writeheader()
            for r in rows:
                w.writerow(
                    {k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
                )

    atomic_write(path, write)
    if print_table:
        _print(rows, sweep_dir, result)
    return result


def _read_jobs(sweep_dir: Path) -> tuple[SweepResult, list[dict[str, Any]]]:
    from har_bench.analysis.grouping import load_run

    result = SweepResult(sweep_dir)
    rows: list[dict[str, Any]] = []
    for d in job_dirs(sweep_dir):
        run = load_run(d)
        if not (d / METRICS).is_file():
            run.status, run.error = (
                "failed",
                f"no {METRICS}: the job stopped before its run began",
            )
        result.jobs += 1
        if run.status != "completed":
            result.failures.append(run.status == "failed" and run.user_error)
        rows.append(
            {
                "job": d.relative_to(sweep_dir).as_posix(),
                "status": run.status,
                "overrides": " ".join(run.overrides),
                **{k: run.values.get(k, math.nan) for k in _METRIC_COLS},
                "error": run.error or "",
                "run_dir": str(d),
            }
        )
    return result, rows


def _print(rows: list[dict[str, Any]], sweep_dir: Path, result: SweepResult) -> None:
    from rich.table import Table

    from har_bench.analysis.grouping import METRICS
    from har_bench.analysis.tables import format_value, rich_console

    shown = ("val_macro_f1", "accuracy", "macro_f1", "params", "flops", "train_sps", "latency_ms")
    # The overrides every job shares say nothing about which job is which.
    common = set.intersection(*(set(r["overrides"].split()) for r in rows)) if rows else set()
    table = Table(title=f"sweep {sweep_dir}: {result.jobs} jobs")
    for col in ("job", "swept", "status"):
        table.add_column(col)
    for m in shown:
        table.add_column(METRICS[m].label, justify="right")
    for r in rows:
        style = {"completed": "green", "failed": "red", "diverged": "red"}.get(
            r["status"], "yellow"
        )
        table.add_row(
            r["job"],
            " ".join(o for o in r["overrides"].split() if o not in common),
            f"[{style}]{r['status']}[/{style}]",
            *(format_value(r[m], METRICS[m].kind) for m in shown),
        )
    console = rich_console()
    console.print(table)
    failed = [r for r in rows if r["status"] != "completed"]
    for r in failed:
        console.print(f"[red]job {r['job']}[/red] {r['status']}: {r['error']}", highlight=False)
    console.print(
        f"summary: {sweep_dir / SUMMARY_CSV}; mean ± std over seeds/folds: har-bench compare {sweep_dir}",
        highlight=False,
    )

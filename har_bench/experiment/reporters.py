"""What a run reports as it goes and when it ends: one class per artifact or logger.

A reporter sees every epoch's history row (:meth:`Reporter.on_epoch`), the completed run's
:class:`~har_bench.experiment.evaluate.RunResult` (:meth:`Reporter.on_end`, before
``metrics.json`` marks the run completed), the exception of a run that did not complete
(:meth:`Reporter.on_abort`) and is closed however the run ends (after ``metrics.json`` for a
completed run). A new artifact or logger is one more class in :func:`default_reporters`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from har_bench.experiment.evaluate import RunResult
from har_bench.experiment.spec import Tracking
from har_bench.runs import artifacts, rundir, tracking


class Reporter(Protocol):
    """Every method is optional: subclass and override what the reporter needs."""

    def on_epoch(self, row: Mapping[str, float]) -> None:
        pass

    def on_end(self, result: RunResult) -> None:
        pass

    def on_abort(self, error: BaseException) -> None:
        pass

    def close(self) -> None:
        pass


class HistoryCsv(Reporter):
    """``history.csv``, rewritten after every epoch."""

    def __init__(self, run_dir: Path, resumed: Sequence[Mapping[str, float]] | None) -> None:
        self.run_dir = run_dir
        self.history = [dict(r) for r in resumed or ()]
        if resumed is not None:
            # history.csv may lag last.pt by one epoch (killed between the two writes).
            artifacts.write_history(run_dir, self.history)

    def on_epoch(self, row: Mapping[str, float]) -> None:
        self.history.append(dict(row))
        artifacts.write_history(self.run_dir, self.history)


class ResultFiles(Reporter):
    """``timings.json``, the confusion matrix (CSV and PNG) and the training curves."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_end(self, result: RunResult) -> None:
        rundir.write_json(self.run_dir / rundir.TIMINGS, dataclasses.asdict(result.timings))
        artifacts.write_confusion_matrix(self.run_dir, result.confusion, result.class_names)
        if result.history:  # a model fitted outside the loop has no epochs to plot
            artifacts.write_training_curves(self.run_dir, result.history)


class CalibrationFiles(Reporter):
    """``calibration.json`` (the temperature predict uses) and the test set's reject curve
    (CSV and PNG)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_end(self, result: RunResult) -> None:
        if result.calibration is None:
            return
        rundir.write_json(
            self.run_dir / rundir.CALIBRATION, result.calibration.calibration.to_json()
        )
        artifacts.write_reject_curve(self.run_dir, result.calibration.reject_curve)


class TestPredictionsFile(Reporter):
    """``test_predictions.csv``: every test window's calibrated probabilities, so that
    ``har-bench ensemble`` averages runs without running their models again."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_end(self, result: RunResult) -> None:
        if result.test_predictions is not None:
            result.test_predictions.write(self.run_dir)


class TensorBoard(Reporter):
    """Scalars per epoch; the test confusion matrix and one HParams session at the end."""

    def __init__(
        self,
        run_dir: Path,
        hparams: Mapping[str, Any],
        resumed: Sequence[Mapping[str, float]] | None,
    ) -> None:
        self.hparams = dict(hparams)
        # A resume hides the earlier event files' points from its first epoch on, so an epoch
        # logged both before the stop and after the resume shows once.
        self.logger = artifacts.TensorBoardLogger(run_dir, purge_step=len(resumed or ()) or None)
        if resumed:
            self.logger.log_epoch(resumed[-1])

    def on_epoch(self, row: Mapping[str, float]) -> None:
        self.logger.log_epoch(row)

    def on_end(self, result: RunResult) -> None:
        metrics, summary = result.metrics, result.model_summary
        self.logger.log_confusion_matrix(result.confusion, result.class_names, result.best_epoch)
        figures = {
            "val_accuracy": (metrics["val"] or {}).get("accuracy"),
            "val_macro_f1": (metrics["val"] or {}).get("macro_f1"),
            "test_accuracy": metrics["test"]["accuracy"],
            "test_macro_f1": metrics["test"]["macro_f1"],
            "params": summary["params"],
            "flops_per_sample": summary["flops_per_sample"],
            "train_samples_per_second": result.timings.train_samples_per_second,
            "latency_ms_p50": result.timings.inference_latency_ms["p50"],
        }
        # A figure that does not apply (no FLOP count for MiniRocket) is left out.
        self.logger.log_hparams(self.hparams, {k: v for k, v in figures.items() if v is not None})

    def close(self) -> None:
        self.logger.close()


class Mlflow(Reporter):
    """``tracking=mlflow``: the config as params and the group choices as tags when the run
    starts, each epoch's history row as metrics at step = epoch, the final figures
    (``final/...``), then the run directory's key files and the run's status when it ends.
    MLflow out of reach costs one warning and stops this reporter, never the run."""

    def __init__(
        self,
        run_dir: Path,
        spec: Tracking,
        resumed: Sequence[Mapping[str, float]] | None,
    ) -> None:
        self.run_dir = run_dir
        sweep_dir = tracking.sweep_of(run_dir)
        name = "-".join(spec.tags[g] for g in ("model", "dataset") if g in spec.tags) or "run"
        if sweep_dir is not None:
            name += f" {Path(run_dir).resolve().relative_to(sweep_dir).as_posix()}"
        self.run = tracking.start_run(
            spec.settings,
            run_dir,
            params=spec.params,
            tags=spec.tags,
            run_name=name,
            resume=resumed is not None,
            sweep_dir=sweep_dir,
        )
        self.status: str | None = None

    def on_epoch(self, row: Mapping[str, float]) -> None:
        if self.run is not None:
            values = {k: v for k, v in row.items() if k != "epoch" and _finite(v)}
            self.run.log_metrics(values, step=int(row["epoch"]))

    def on_end(self, result: RunResult) -> None:
        if self.run is not None:
            self.run.log_metrics(final_figures(result))
        self.status = "FINISHED"

    def on_abort(self, error: BaseException) -> None:
        self.status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"

    def close(self) -> None:
        if self.run is None:
            return
        self.run.log_run_files(self.run_dir, tracking.ARTIFACTS)
        self.run.end(self.status or "FAILED")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def final_figures(result: RunResult) -> dict[str, float]:
    """``final/val_*`` and ``final/test_*`` (every scalar of metrics.json's val and test), the
    best epoch, the model's size and the timings: one value each, for a run as a whole."""
    metrics, summary, timings = result.metrics, result.model_summary, result.timings
    out: dict[str, Any] = {}
    for part in ("val", "test"):
        for key, value in (metrics.get(part) or {}).items():
            out[f"final/{part}_{key}"] = value
    out |= {
        "final/best_epoch": metrics.get("best_epoch"),
        "final/epochs_trained": metrics.get("epochs_trained"),
        "final/params": summary.get("params"),
        "final/flops_per_sample": summary.get("flops_per_sample"),
        "final/train_samples_per_second": timings.train_samples_per_second,
        "final/latency_ms_p50": timings.inference_latency_ms.get("p50"),
        "final/latency_ms_p95": timings.inference_latency_ms.get("p95"),
    }
    # A figure that does not apply (no validation part, no FLOP count for MiniRocket) is left out.
    return {k: float(v) for k, v in out.items() if _finite(v)}


class ConsoleSummary(Reporter):
    """The table of final figures, printed when the run completes."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_end(self, result: RunResult) -> None:
        from rich.console import Console
        from rich.table import Table

        metrics, summary, timings = result.metrics, result.model_summary, result.timings
        refit = metrics.get("tested") == "refit"
        # After a refit the two columns are two models: validation scored the first phase's
        # selected weights, the test set the model trained again on train + validation.
        table = Table(
            title=f"har-bench: {metrics.get('model')} on {metrics.get('dataset')}",
            caption=(
                "val: the first-phase model, chosen on validation; "
                "test: the model refitted on train + validation"
                if refit
                else None
            ),
        )
        table.add_column("metric")
        table.add_column("val (first phase)" if refit else "val", justify="right")
        table.add_column("test (refit)" if refit else "test", justify="right")
        for key in (
            "accuracy",
            "balanced_accuracy",
            "macro_precision",
            "macro_recall",
            "macro_f1",
            "weighted_f1",
        ):
            val = f"{metrics['val'][key]:.4f}" if metrics["val"] else "-"
            table.add_row(key, val, f"{metrics['test'][key]:.4f}")
        # Model size and speed belong to no evaluation part: a table of their own.
        tested = "the refitted model" if refit else "the tested model"
        figures = Table(title=f"model and speed ({tested})")
        figures.add_column("figure")
        figures.add_column("value", justify="right")
        figures.add_row("best epoch (validation)", str(metrics["best_epoch"]))
        if refit:
            figures.add_row("refit epochs", str(metrics.get("refit", {}).get("epochs", "-")))
        selection = metrics.get("selection")
        if selection:
            chosen = ", ".join(f"{k}={v}" for k, v in selection["chosen"].items())
            figures.add_row(f"chosen by {selection['folds']}-fold CV", chosen)
            figures.add_row(
                f"CV {selection['metric']} (mean ± std)",
                f"{selection['cv_mean']:.4f} ± {selection['cv_std']:.4f}",
            )
            figures.add_row(
                "train s, selection + final",
                f"{selection['train_seconds'] + timings.train_seconds_total:.1f}",
            )
        figures.add_row("params", f"{summary['params']:,}")
        flops = summary.get("flops_per_sample")
        figures.add_row("MFLOPs / sample", f"{flops / 1e6:.2f}" if flops is not None else "n/a")
        phase = ", first phase" if refit else ""  # timings.json times the selection phase
        figures.add_row(
            f"train s / epoch (median{phase})",
            f"{float(np.median(timings.train_seconds_per_epoch)):.2f}",
        )
        figures.add_row(
            f"train samples / s{' (first phase)' if refit else ''}",
            f"{timings.train_samples_per_second:.0f}",
        )
        latency = timings.inference_latency_ms
        figures.add_row(
            "latency p50 / p95 ms (bs 1)", f"{latency['p50']:.2f} / {latency['p95']:.2f}"
        )
        Console().print(table)
        Console().print(figures)
        Console().print(f"run directory: [bold]{self.run_dir}[/bold]")


class Reporters(Reporter):
    """Several reporters as one, in order."""

    def __init__(self, reporters: Sequence[Reporter]) -> None:
        self.reporters = list(reporters)

    def on_epoch(self, row: Mapping[str, float]) -> None:
        for r in self.reporters:
            r.on_epoch(row)

    def on_end(self, result: RunResult) -> None:
        for r in self.reporters:
            r.on_end(result)

    def on_abort(self, error: BaseException) -> None:
        for r in self.reporters:
            r.on_abort(error)

    def close(self) -> None:
        for r in self.reporters:
            r.close()


@contextmanager
def default_reporters(
    run_dir: Path,
    hparams: Mapping[str, Any],
    resumed: Sequence[Mapping[str, float]] | None,
    tracked: Tracking | None = None,
) -> Iterator[Reporters]:
    """The run's reporters, closed on the way out however the run ends; ``resumed`` is the
    history a resumed run continues (None for a fresh run), ``tracked`` the experiment tracker
    (None for tracking=none)."""
    reporters = Reporters(
        [
            HistoryCsv(run_dir, resumed),
            ResultFiles(run_dir),
            CalibrationFiles(run_dir),
            TestPredictionsFile(run_dir),
            TensorBoard(run_dir, hparams, resumed),
            ConsoleSummary(run_dir),
        ]
    )
    if tracked is not None:
        reporters.reporters.append(Mlflow(run_dir, tracked, resumed))
    try:
        yield reporters
    except BaseException as e:
        reporters.on_abort(e)
        # A run that failed on a full disk fails again when its writers flush on closing;
        # the first error is the one to report.
        with contextlib.suppress(OSError):
            reporters.close()
        raise
    reporters.close()

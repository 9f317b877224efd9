"""What a run reports as it goes and when it ends: one class per artifact or logger.

A reporter sees every epoch's history row (:meth:`Reporter.on_epoch`), the completed run's
:class:`~har_bench.experiment.evaluate.RunResult` (:meth:`Reporter.on_end`, before
``metrics.json`` marks the run completed) and is closed however the run ends. A new artifact or
logger is one more class in :func:`default_reporters`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from har_bench.experiment.evaluate import RunResult
from har_bench.runs import artifacts, rundir


class Reporter(Protocol):
    """Every method is optional: subclass and override what the reporter needs."""

    def on_epoch(self, row: Mapping[str, float]) -> None:
        pass

    def on_end(self, result: RunResult) -> None:
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

    def close(self) -> None:
        for r in self.reporters:
            r.close()


@contextmanager
def default_reporters(
    run_dir: Path,
    hparams: Mapping[str, Any],
    resumed: Sequence[Mapping[str, float]] | None,
) -> Iterator[Reporters]:
    """The run's reporters, closed on the way out however the run ends; ``resumed`` is the
    history a resumed run continues (None for a fresh run)."""
    reporters = Reporters(
        [
            HistoryCsv(run_dir, resumed),
            ResultFiles(run_dir),
            TensorBoard(run_dir, hparams, resumed),
            ConsoleSummary(run_dir),
        ]
    )
    try:
        yield reporters
    except BaseException:
        # A run that failed on a full disk fails again when its writers flush on closing;
        # the first error is the one to report.
        with contextlib.suppress(OSError):
            reporters.close()
        raise
    reporters.close()

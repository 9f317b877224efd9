"""The table a completed run prints: its val and test columns hold only evaluation figures, and
after a refit they say which model each one scored."""

from __future__ import annotations

import numpy as np

from har_bench.experiment.evaluate import RunResult, Timings
from har_bench.experiment.reporters import ConsoleSummary

SCORES = {
    k: 0.9
    for k in (
        "accuracy",
        "balanced_accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "weighted_f1",
    )
}


def _result(refit: bool) -> RunResult:
    metrics = {
        "model": "resnext_har",
        "dataset": "synthetic",
        "val": dict(SCORES),
        "test": dict(SCORES),
        "best_epoch": 3,
        "tested": "refit" if refit else "selected",
    }
    if refit:
        metrics["refit"] = {"epochs": 3}
    timings = Timings(
        train_seconds_per_epoch=[1.0, 2.0],
        train_seconds_total=3.0,
        train_samples_per_second=100.0,
        inference_latency_ms={"p50": 1.0, "p95": 2.0},
        inference_samples_per_second=1000.0,
        inference_batch_size=256,
        test_inference_seconds=0.1,
        device="cpu",
        precision="32",
        eval_precision="32",
        torch_threads=1,
    )
    return RunResult(
        metrics=metrics,
        model_summary={"params": 492214, "flops_per_sample": 25.3e6},
        timings=timings,
        confusion=np.eye(2, dtype=int),
        class_names=["a", "b"],
        history=[],
        best_epoch=3,
    )


def _header_above(lines: list[str], needle: str) -> list[str]:
    """The column names (rich draws the header row with ┃) of the table holding row ``needle``."""
    at = next(i for i, line in enumerate(lines) if needle in line)
    row = next(line for line in reversed(lines[:at]) if "┃" in line)
    return [cell.strip() for cell in row.split("┃") if cell.strip()]


def test_model_figures_are_not_in_the_val_column(tmp_path, capsys):
    ConsoleSummary(tmp_path).on_end(_result(refit=False))
    lines = capsys.readouterr().out.splitlines()
    assert _header_above(lines, "macro_f1") == ["metric", "val", "test"]
    for row in ("params", "MFLOPs", "latency", "best epoch"):
        header = _header_above(lines, row)
        assert "val" not in header and "test" not in header, (row, header)


def test_refit_columns_name_the_model_each_scores(tmp_path, capsys):
    ConsoleSummary(tmp_path).on_end(_result(refit=True))
    out = capsys.readouterr().out
    header = _header_above(out.splitlines(), "macro_f1")
    assert header == ["metric", "val (first phase)", "test (refit)"], header
    assert "refitted on train + validation" in " ".join(out.split())

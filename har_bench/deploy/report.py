"""The report of ``har-bench export``: each form's accuracy, its agreement with the eager model
and with its own reference form (parity), sizes and latencies, the headline ratios, and the
deployment checks."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from har_bench.core.metrics import classification_metrics
from har_bench.deploy import onnx_model
from har_bench.deploy.loaded import FinishedRun
from har_bench.runs.artifacts import host_info

# Windows per batch for the throughput figure.
THROUGHPUT_BATCH = 256
# The deployment checks the report ends with (set for resnext_har on UCI-HAR):
# (what is checked, report key, comparison, bound).
TARGETS = (
    ("parity max |Δlogit|", "parity_max_abs_logit", "<=", 1e-4),
    ("parity agreement", "parity_agreement", ">=", 1.0),
    ("ORT / eager latency, batch 1 (p50)", "ort_latency_ratio_bs1", "<=", 0.5),
    ("int8 / fp32 file size", "int8_size_ratio", "<=", 0.3),
    ("int8 accuracy delta (points)", "int8_accuracy_delta_points", ">=", -1.0),
    ("pruned accuracy delta (points)", "pruned_accuracy_delta_points", ">=", -1.0),
    ("pruned FLOPs reduction", "pruned_flops_reduction", ">=", 0.3),
)


@dataclasses.dataclass
class Form:
    """One way to run the model: PyTorch eager or an ONNX Runtime session over a file."""

    name: str
    runtime: str  # "torch" or "onnxruntime"
    model: nn.Module | None = None
    path: Path | None = None
    session: Any = None
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)  # params, FLOPs
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    logits: np.ndarray | None = None

    def call(self, X: torch.Tensor) -> Callable[[], object]:
        """A no-argument call running this form on ``X`` (for the timer)."""
        if self.session is not None:
            name = self.session.get_inputs()[0].name
            feed = {name: np.ascontiguousarray(X.numpy())}
            return lambda: self.session.run(None, feed)
        model = self.model.eval()  # type: ignore[union-attr]

        def run() -> object:
            with torch.inference_mode():
                return model(X)

        return run


def scores(logits: np.ndarray, y: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    m = classification_metrics(y, logits.argmax(1), class_names)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def build_report(
    run: FinishedRun,
    forms: dict[str, Form],
    y_test: np.ndarray,
    latency: dict[str, dict[str, float]],
    batch: dict[str, dict[str, float]],
    batch_size: int,
    threads: int | None,
) -> dict[str, Any]:
    class_names = run.data.class_names
    eager = forms["eager"]
    assert eager.logits is not None
    reference = {"fp32": "eager", "int8": "fp32", "pruned": "pruned_eager", "pruned_int8": "pruned"}
    rows: dict[str, dict[str, Any]] = {}
    for name, form in forms.items():
        assert form.logits is not None
        row: dict[str, Any] = {
            "runtime": form.runtime,
            "file": str(form.path.relative_to(run.path)) if form.path else None,
            "size_bytes": onnx_model.file_size(form.path) if form.path else None,
            "params": form.summary.get("params"),
            "flops_per_sample": form.summary.get("flops_per_sample"),
            **scores(form.logits, y_test, class_names),
            "latency_ms_bs1": latency[name],
            "batch_ms": batch[name],
            "samples_per_second": batch_size / (batch[name]["p50"] / 1000),
            **form.info,
        }
        if form.runtime == "torch":
            row["size_bytes"] = int(round(form.summary.get("size_mb", 0) * 2**20))
        ref = reference.get(name)
        if ref is not None and forms[ref].logits is not None:
            diff = np.abs(form.logits - forms[ref].logits)
            row["vs"] = ref
            row["max_abs_logit_diff"] = float(diff.max())
            row["agreement"] = float((form.logits.argmax(1) == forms[ref].logits.argmax(1)).mean())
        row["accuracy_delta_points"] = 100 * (row["accuracy"] - rows.get("eager", row)["accuracy"])
        row["latency_ratio_vs_eager"] = latency[name]["p50"] / latency["eager"]["p50"]
        rows[name] = row
    summary = headline(rows)
    return {
        "run_dir": str(run.path),
        "model": run.choices.model,
        "dataset": run.choices.dataset,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "test_windows": int(len(y_test)),
        "opset": onnx_model.OPSET,
        "input": {
            "name": onnx_model.INPUT_NAME,
            "shape": ["batch", *run.preprocessing.input_shape],
        },
        "batchnorm_folded": True,
        "machine": machine(threads),
        "timing": {
            "method": "alternating: each repeat calls every form once, order rotated",
            "batch_1_repeats": next(iter(latency.values()))["repeats"],
            "throughput_batch": batch_size,
            "throughput_repeats": next(iter(batch.values()))["repeats"],
        },
        "forms": rows,
        "summary": summary,
        "targets": check_targets(summary),
    }


def headline(rows: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The headline figures the deployment checks are about."""
    out: dict[str, float] = {}
    fp32, eager = rows["fp32"], rows["eager"]
    out["parity_max_abs_logit"] = fp32["max_abs_logit_diff"]
    out["parity_agreement"] = fp32["agreement"]
    out["ort_latency_ratio_bs1"] = fp32["latency_ms_bs1"]["p50"] / eager["latency_ms_bs1"]["p50"]
    out["ort_throughput_ratio"] = fp32["samples_per_second"] / eager["samples_per_second"]
    if "int8" in rows:
        int8 = rows["int8"]
        out["int8_size_ratio"] = int8["size_bytes"] / fp32["size_bytes"]
        out["int8_latency_ratio_bs1"] = (
            int8["latency_ms_bs1"]["p50"] / fp32["latency_ms_bs1"]["p50"]
        )
        out["int8_throughput_ratio"] = int8["samples_per_second"] / fp32["samples_per_second"]
        out["int8_accuracy_delta_points"] = 100 * (int8["accuracy"] - fp32["accuracy"])
    if "pruned" in rows:
        pruned = rows["pruned"]
        out["pruned_fraction"] = rows["pruned_eager"]["pruning"]["pruned_fraction"]
        out["pruned_params_ratio"] = pruned["params"] / eager["params"]
        out["pruned_flops_reduction"] = 1 - pruned["flops_per_sample"] / eager["flops_per_sample"]
        out["pruned_accuracy_delta_points"] = 100 * (pruned["accuracy"] - eager["accuracy"])
        before = rows["pruned_eager"]["before_finetune"]["accuracy"]
        out["pruned_accuracy_delta_before_finetune_points"] = 100 * (before - eager["accuracy"])
        out["pruned_latency_ratio_bs1"] = (
            pruned["latency_ms_bs1"]["p50"] / fp32["latency_ms_bs1"]["p50"]
        )
    return out


def check_targets(summary: dict[str, float]) -> list[dict[str, Any]]:
    out = []
    for label, key, op, bound in TARGETS:
        if key not in summary:
            continue
        value = summary[key]
        met = value <= bound if op == "<=" else value >= bound
        out.append(
            {"target": label, "key": key, "bound": f"{op} {bound:g}", "value": value, "met": met}
        )
    return out


def machine(threads: int | None) -> dict[str, Any]:
    return {
        **host_info(),
        "ort_threads": threads or torch.get_num_threads(),
        **onnx_model.versions(),
    }


def print_report(report: dict[str, Any]) -> None:
    """One column per form, one row per figure (fits a terminal with six forms)."""
    from rich.console import Console
    from rich.table import Table

    forms = report["forms"]
    table = Table(
        title=f"har-bench export: {report['model']} on {report['dataset']} "
        f"({report['test_windows']} test windows)"
    )
    table.add_column("")
    for name, r in forms.items():
        table.add_column(f"{name}\n{r['runtime']}", justify="right")

    def num(v: Any, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("file KB", lambda r: num(r["size_bytes"] / 1024 if r["size_bytes"] else None, ",.1f")),
        ("params", lambda r: num(r["params"], ",")),
        (
            "MFLOPs / window",
            lambda r: num(r["flops_per_sample"] and r["flops_per_sample"] / 1e6, ".2f"),
        ),
        ("test accuracy %", lambda r: num(100 * r["accuracy"], ".2f")),
        ("Δ accuracy vs eager, pts", lambda r: num(r["accuracy_delta_points"], "+.2f")),
        ("test macro-F1 %", lambda r: num(100 * r["macro_f1"], ".2f")),
        ("max |Δlogit| vs source", lambda r: num(r.get("max_abs_logit_diff"), ".1e")),
        (
            "agreement vs source %",
            lambda r: num(None if r.get("agreement") is None else 100 * r["agreement"], ".2f"),
        ),
        ("batch 1 p50 ms", lambda r: num(r["latency_ms_bs1"]["p50"], ".3f")),
        ("batch 1 p95 ms", lambda r: num(r["latency_ms_bs1"]["p95"], ".3f")),
        ("p50 / eager p50", lambda r: num(r["latency_ratio_vs_eager"], ".2f")),
        (f"windows/s at batch {THROUGHPUT_BATCH}", lambda r: num(r["samples_per_second"], ",.0f")),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(r) for r in forms.values()))
    console = Console()
    console.print(table)
    targets = Table(title="deployment checks (set for resnext_har on UCI-HAR)")
    for col in ("target", "bound", "value", "met"):
        targets.add_column(col)
    for t in report["targets"]:
        targets.add_row(t["target"], t["bound"], f"{t['value']:.4g}", "yes" if t["met"] else "NO")
    console.print(targets)
    console.print(
        "source: fp32 vs eager, int8 vs fp32, pruned vs pruned_eager, pruned_int8 vs pruned. "
        "Latencies measured alternately in one process; threads: torch "
        f"{report['machine']['torch_threads']}, ONNX Runtime {report['machine']['ort_threads']}."
    )

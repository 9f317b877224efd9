"""``har-bench export RUN_DIR``: the run's tested model as ONNX (and int8, and pruned), each
form checked on the run's real test windows and timed against PyTorch eager in one process.

Writes into ``RUN_DIR/export/``: ``model.onnx`` (BatchNorm folded, dynamic batch axis),
``model_int8.onnx`` (``--quantize int8``), ``model_pruned.onnx`` (``--prune RATIO``, plus
``model_pruned_int8.onnx`` with both), ``preprocessing.json`` (channels, window, step,
sampling rate and standardisation, which ``har-bench predict`` and a device apply before the
model) and ``export_report.json`` with every figure of the printed table.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from har_bench.core.errors import UserError, bug_message, save_traceback
from har_bench.core.metrics import classification_metrics
from har_bench.core.seeding import seed_everything
from har_bench.core.timing import alternating_latency
from har_bench.deploy import onnx_model
from har_bench.deploy.loaded import FinishedRun, save_preprocessing
from har_bench.experiment.components import as_user_error
from har_bench.experiment.fit import bind_augment
from har_bench.models.compress import (
    check_ratio,
    count_batchnorms,
    fold_batchnorm,
    prune_residual_channels,
)
from har_bench.models.summary import model_summary
from har_bench.runs import rundir
from har_bench.runs.artifacts import host_info

FORMATS = ("onnx",)
QUANTIZE = ("int8",)
THROUGHPUT_BATCH = 256
CALIBRATION_WINDOWS = 512
# Fine-tuning after pruning starts from the run's learning rate times this and decays it to 0
# (cosine): the weights are already trained, a full-size step would undo them.
FINETUNE_LR_FACTOR = 0.1
# Issue 13's targets for resnext_har on UCI-HAR: (report key, comparison, bound).
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


# -- the export --------------------------------------------------------------------------------


def export_run(
    run_dir: Path,
    quantize: str | None = None,
    prune: float | None = None,
    finetune_epochs: int = 0,
    repeats: int = 100,
    calibration: int = CALIBRATION_WINDOWS,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Export, check and time every requested form; returns ``export_report.json``'s content."""
    onnx_model.require_onnx()
    if prune is not None:
        check_ratio(prune)
    if finetune_epochs and prune is None:
        raise UserError("--finetune-epochs fine-tunes a pruned model: give --prune RATIO too")
    if threads is not None:
        torch.set_num_threads(threads)
    t_start = time.perf_counter()
    run = FinishedRun(run_dir)
    data = run.data
    out = rundir.export_dir(run.path)
    out.mkdir(parents=True, exist_ok=True)
    save_preprocessing(run.path, run.preprocessing)
    trainer = run.trainer
    X_test, y_test = data.test.X, data.test.y.numpy()
    if not len(X_test):
        raise UserError(f"{run.path}: the run's test part has no windows to check the export on")
    log(
        f"run {run.path}: model={run.choices.model}, dataset={run.choices.dataset}, "
        f"{len(X_test)} test windows"
    )

    forms: dict[str, Form] = {}
    model = run.model
    forms["eager"] = Form("eager", "torch", model=model, summary=model_summary(model, data.sample))
    forms["fp32"] = onnx_form("fp32", model, run.path, data.sample, threads)
    log(f"wrote {forms['fp32'].path} (opset {onnx_model.opset_of(forms['fp32'].path)})")
    if quantize:
        forms["int8"] = int8_form("int8", forms["fp32"], run, calibration, threads)
        log(f"wrote {forms['int8'].path} ({forms['int8'].info['method']} quantisation)")
    if prune is not None:
        pruned, result = prune_residual_channels(model, prune)
        info = {"pruning": result.as_dict()}
        info["before_finetune"] = scores(
            trainer.predict(pruned, X_test).numpy(), y_test, data.class_names
        )
        if finetune_epochs:
            log(f"fine-tuning the pruned model for {finetune_epochs} epochs ...")
            info["finetune"] = finetune(pruned, run, finetune_epochs)
        pruned.eval()
        forms["pruned_eager"] = Form(
            "pruned_eager",
            "torch",
            model=pruned,
            summary=model_summary(pruned, data.sample),
            info=info,
        )
        forms["pruned"] = onnx_form("pruned", pruned, run.path, data.sample, threads)
        forms["pruned"].summary = forms["pruned_eager"].summary
        log(f"wrote {forms['pruned'].path} ({result.pruned_fraction:.1%} of inner channels pruned)")
        if quantize:
            forms["pruned_int8"] = int8_form(
                "pruned_int8", forms["pruned"], run, calibration, threads
            )
            forms["pruned_int8"].summary = forms["pruned_eager"].summary

    for form in forms.values():
        if form.session is not None:
            form.logits = onnx_model.ort_logits(form.session, X_test, THROUGHPUT_BATCH)
        else:
            form.logits = trainer.predict(form.model, X_test).numpy()  # type: ignore[arg-type]

    log(f"timing {len(forms)} forms alternately: batch 1 x {repeats}, batch {THROUGHPUT_BATCH} ...")
    x1 = X_test[:1].contiguous()
    xb = X_test[:THROUGHPUT_BATCH].contiguous()
    latency = alternating_latency({n: f.call(x1) for n, f in forms.items()}, repeats, warmup=10)
    batch_repeats = max(5, repeats // 10)
    batch = alternating_latency({n: f.call(xb) for n, f in forms.items()}, batch_repeats, warmup=2)

    report = build_report(run, forms, y_test, latency, batch, len(xb), threads)
    report["seconds"] = time.perf_counter() - t_start
    rundir.write_json(out / rundir.EXPORT_REPORT, report)
    return report


def onnx_form(
    name: str, model: nn.Module, run_dir: Path, sample: torch.Tensor, threads: int | None
) -> Form:
    """``model`` with its BatchNorms folded, exported, and an ORT session over the file."""
    folded = fold_batchnorm(model)
    path = onnx_model.export_onnx(folded, sample, rundir.onnx_file(run_dir, name))
    info = {"opset": onnx_model.opset_of(path), "batchnorms_left": count_batchnorms(folded)}
    return Form(
        name, "onnxruntime", path=path, session=onnx_model.session(path, threads), info=info
    )


def int8_form(name: str, fp32: Form, run: FinishedRun, n: int, threads: int | None) -> Form:
    """Static int8 of an ONNX form, calibrated on ``n`` training windows drawn with the run's
    seed (the test windows are never seen)."""
    X, _ = run.train_part()
    rng = np.random.default_rng(run.experiment.seed)
    idx = np.sort(rng.choice(len(X), size=min(n, len(X)), replace=False))
    path = rundir.onnx_file(run.path, name)
    assert fp32.path is not None
    info = onnx_model.quantize_int8(fp32.path, path, X[idx].numpy())
    info["opset"] = onnx_model.opset_of(path)
    return Form(
        name, "onnxruntime", path=path, session=onnx_model.session(path, threads), info=info
    )


def finetune(model: nn.Module, run: FinishedRun, epochs: int) -> dict[str, Any]:
    """Train ``model`` in place for ``epochs`` on the data the tested model was trained on,
    with the run's optimizer, augmentation and label smoothing at a lower learning rate; the
    last epoch's weights are kept (nothing is selected on test windows)."""
    training = run.experiment.training
    trainer = dataclasses.replace(run.trainer, max_epochs=epochs, patience=None, ema_decay=None)
    factory = training.optimizer_factory
    lr = None
    if isinstance(factory, functools.partial) and "lr" in factory.keywords:
        lr = float(factory.keywords["lr"]) * FINETUNE_LR_FACTOR
        factory = functools.partial(factory.func, *factory.args, **{**factory.keywords, "lr": lr})
    schedule = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=epochs)
    X, y = run.train_part()
    seed_everything(training.seed)
    t0 = time.perf_counter()
    fitted = trainer.fit(
        model,
        X,
        y,
        X[:0],
        y[:0],
        optimizer_factory=factory,
        scheduler_factory=schedule,
        checkpoint_dir=None,
        seed=training.seed,
        augment=bind_augment(training, run.data),
    )
    model.load_state_dict(fitted.best_state)
    return {
        "epochs": epochs,
        "lr": lr,
        "schedule": "cosine to 0",
        "train_windows": len(y),
        "data": "train + validation (the run refit)" if run.refit else "train",
        "train_loss": [r["train_loss"] for r in fitted.history],
        "seconds": time.perf_counter() - t0,
    }


# -- the report --------------------------------------------------------------------------------


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
    """The figures the issue's targets are about."""
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
    targets = Table(title="targets (issue 13: resnext_har on UCI-HAR)")
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


# -- the command -------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="har-bench export",
        description="Export a finished run's model to ONNX (optionally int8 and pruned), check "
        "it against PyTorch on the run's test windows and time both; writes RUN_DIR/export/.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument(
        "--quantize",
        choices=QUANTIZE,
        default=None,
        help="also write model_int8.onnx: static int8, calibrated on training windows",
    )
    p.add_argument(
        "--prune",
        type=float,
        default=None,
        metavar="RATIO",
        help="also write model_pruned.onnx with RATIO of each residual branch's inner "
        "channels removed (L1 ranking, every group kept)",
    )
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=0,
        metavar="N",
        help="fine-tune the pruned model N epochs on the run's training data",
    )
    p.add_argument("--repeats", type=int, default=100, help="batch-1 timing rounds (default 100)")
    p.add_argument(
        "--calibration",
        type=int,
        default=CALIBRATION_WINDOWS,
        help=f"training windows calibrating int8 (default {CALIBRATION_WINDOWS})",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch and ONNX Runtime intra-op threads (default: torch's)",
    )
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    try:
        for name in ("finetune_epochs", "repeats", "calibration", "threads"):
            value = getattr(args, name)
            minimum = 0 if name == "finetune_epochs" else 1
            if value is not None and value < minimum:
                raise UserError(
                    f"--{name.replace('_', '-')}={value} is invalid: expected >= {minimum}"
                )
        report = export_run(
            args.run_dir,
            quantize=args.quantize,
            prune=args.prune,
            finetune_epochs=args.finetune_epochs,
            repeats=args.repeats,
            calibration=args.calibration,
            threads=args.threads,
            log=lambda msg: print(msg, file=sys.stderr),
        )
    except Exception as e:
        user_error = as_user_error(e)
        if user_error is None:
            print(f"error: {bug_message(e, save_traceback(e))}", file=sys.stderr)
            return 1
        print(f"error: {user_error}", file=sys.stderr)
        return 2
    print_report(report)
    print(f"wrote {rundir.export_dir(args.run_dir) / rundir.EXPORT_REPORT}")
    return 0

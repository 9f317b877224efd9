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

from har_bench.config import report_error
from har_bench.core.errors import UserError
from har_bench.core.seeding import seed_everything
from har_bench.core.timing import alternating_latency
from har_bench.deploy import onnx_model
from har_bench.deploy.loaded import FinishedRun, save_preprocessing
from har_bench.deploy.report import THROUGHPUT_BATCH, Form, build_report, print_report, scores
from har_bench.experiment.fit import bind_augment
from har_bench.models.compress import (
    check_ratio,
    count_batchnorms,
    fold_batchnorm,
    prune_residual_channels,
)
from har_bench.models.summary import model_summary
from har_bench.runs import rundir
from har_bench.runs.tracking import attach_files

FORMATS = ("onnx",)
QUANTIZE = ("int8",)
CALIBRATION_WINDOWS = 512
# Fine-tuning after pruning starts from the run's learning rate times this and decays it to 0
# (cosine): the weights are already trained, a full-size step would undo them.
FINETUNE_LR_FACTOR = 0.1


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
    preprocessing = save_preprocessing(run.path, run.preprocessing)
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
    # A run tracked in MLflow gets its exported files in the same MLflow run.
    files = [f.path for f in forms.values() if f.path is not None]
    attach_files(
        run.path, [*files, preprocessing, out / rundir.EXPORT_REPORT], rundir.EXPORT_DIR, log
    )
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
        return report_error(e)
    print_report(report)
    print(f"wrote {rundir.export_dir(args.run_dir) / rundir.EXPORT_REPORT}")
    return 0

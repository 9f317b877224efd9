"""One experiment: seed -> instantiate -> fit -> evaluate -> artifacts.

Hydra and OmegaConf stop here: everything below this module is plain typed Python.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from har_bench import artifacts
from har_bench.data.base import HARData
from har_bench.data.splits import SPLIT_REPORT, Split, assert_clean, split_report, standardise
from har_bench.engine import Trainer, measure_latency, seed_everything
from har_bench.metrics import classification_metrics, confusion_counts
from har_bench.models.summary import model_summary

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train and evaluate the configured model; write every artifact into ``run_dir``.

    On any error the run dir keeps what was written so far, ``metrics.json`` says
    ``status: failed`` with the message, and ``error.txt`` holds the traceback.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_status(run_dir, "running", run_dir=str(run_dir))
    try:
        return _run(cfg, run_dir)
    except BaseException as e:
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        (run_dir / artifacts.ERROR).write_text(traceback.format_exc())
        artifacts.write_status(run_dir, status, error=f"{type(e).__name__}: {e}")
        raise


def _run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    seed_everything(int(cfg.seed))
    # The trainer first: a bad trainer/device setting fails before any data is read.
    trainer: Trainer = build(cfg, "trainer")
    artifacts.write_json(
        run_dir / artifacts.ENVIRONMENT, artifacts.environment_info(str(trainer.device))
    )

    t0 = time.perf_counter()
    data: HARData = build(cfg, "dataset")
    split: Split = build(cfg, "split")(data)
    # Written before the check so a leaking split can be inspected; then it fails the run
    # (unless split=random with allow_leakage=true, which only logs and records it).
    report = split_report(data, split, name=_choice("split"))
    artifacts.write_json(run_dir / SPLIT_REPORT, report)
    assert_clean(report)
    log.info(
        "dataset %s: %d windows, %d channels x %d samples, %d classes; split train/val/test = "
        "%d/%d/%d windows (%.1fs)",
        data.name,
        len(data.X),
        data.num_channels,
        data.window_length,
        data.num_classes,
        len(split.train),
        len(split.val),
        len(split.test),
        time.perf_counter() - t0,
    )
    X, _, _ = standardise(data.X, split.train)
    X_t = torch.from_numpy(X)
    y_t = torch.from_numpy(data.y.astype(np.int64))
    parts = {
        name: (X_t[idx], y_t[idx])
        for name, idx in (("train", split.train), ("val", split.val), ("test", split.test))
    }

    model: nn.Module = build(
        cfg, "model", in_channels=data.num_channels, num_classes=data.num_classes
    )
    summary = model_summary(model, X_t[:1])
    summary["model"] = _choice("model")
    artifacts.write_json(run_dir / artifacts.MODEL_SUMMARY, summary)
    log.info(
        "model %s: %s params, %.3g MFLOPs per sample",
        summary["model"],
        f"{summary['params']:,}",
        summary["flops_per_sample"] / 1e6,
    )

    tb = artifacts.TensorBoardLogger(run_dir)
    history: list[dict[str, float]] = []

    def on_epoch_end(row: dict[str, float]) -> None:
        history.append(row)
        artifacts.write_history(run_dir, history)
        tb.log_epoch(row)

    try:
        scheduler = build(cfg, "scheduler") if cfg.get("scheduler") else None
        fit = trainer.fit(
            model,
            *parts["train"],
            *parts["val"],
            optimizer_factory=build(cfg, "optimizer"),
            scheduler_factory=scheduler,
            checkpoint_dir=run_dir / artifacts.CHECKPOINTS,
            seed=int(cfg.seed),
            on_epoch_end=on_epoch_end,
        )

        # The test set is touched once, here, with the best-on-validation weights.
        model.load_state_dict(fit.best_state)
        results = {"val": trainer.evaluate(model, *parts["val"])}
        t_test = time.perf_counter()
        results["test"] = trainer.evaluate(model, *parts["test"])
        test_seconds = time.perf_counter() - t_test
        n_test = len(results["test"]["y_true"])

        metrics: dict[str, Any] = {
            "status": "completed",
            "best_epoch": fit.best_epoch,
            "epochs_trained": len(fit.history),
            "stopped_early": fit.stopped_early,
            "monitor": trainer.monitor,
            "best_val_metric": fit.best_metric,
            "model": _choice("model"),
            "dataset": _choice("dataset"),
            "run_dir": str(run_dir),
        }
        for name, res in results.items():
            metrics[name] = {
                "loss": res["loss"],
                **classification_metrics(res["y_true"], res["y_pred"], data.class_names),
            }
        cm = confusion_counts(
            results["test"]["y_true"], results["test"]["y_pred"], data.num_classes
        )

        latency = measure_latency(
            model,
            X_t[split.test[:1]] if len(split.test) else X_t[:1],
            trainer.device,
            repeats=int(cfg.efficiency.latency_repeats),
            warmup=int(cfg.efficiency.latency_warmup),
        )
        timings = {
            "train_seconds_per_epoch": fit.train_seconds_per_epoch,
            "train_seconds_total": float(sum(fit.train_seconds_per_epoch)),
            "train_samples_per_second": float(
                np.median([r["samples_per_second"] for r in fit.history])
            ),
            "inference_latency_ms": latency,
            "inference_samples_per_second": n_test / test_seconds if test_seconds > 0 else None,
            "inference_batch_size": trainer.eval_batch_size,
            "test_inference_seconds": test_seconds,
            "device": str(trainer.device),
            "precision": trainer.precision,
            "torch_threads": torch.get_num_threads(),
        }

        artifacts.write_json(run_dir / artifacts.TIMINGS, timings)
        artifacts.write_confusion_matrix(run_dir, cm, data.class_names)
        artifacts.write_training_curves(run_dir, fit.history)
        tb.log_confusion_matrix(cm, data.class_names, fit.best_epoch)
        tb.log_hparams(
            hparams_for_tensorboard(cfg),
            {
                "val_accuracy": metrics["val"]["accuracy"],
                "val_macro_f1": metrics["val"]["macro_f1"],
                "test_accuracy": metrics["test"]["accuracy"],
                "test_macro_f1": metrics["test"]["macro_f1"],
                "params": summary["params"],
                "flops_per_sample": summary["flops_per_sample"],
                "train_samples_per_second": timings["train_samples_per_second"],
                "latency_ms_p50": latency["p50"],
            },
        )
        # metrics.json last: its status "completed" means every other artifact is in place.
        artifacts.write_json(run_dir / artifacts.METRICS, metrics)
    finally:
        tb.close()

    print_summary(metrics, summary, timings, run_dir)
    return metrics


def build(cfg: DictConfig, group: str, **kwargs: Any) -> Any:
    """``instantiate(cfg[group])``, with the constructor's own error instead of Hydra's wrapper.

    Hydra wraps a ValueError raised by a loader or model in an InstantiationException whose
    text is a traceback summary; the user should see the original one-line message, tagged
    with the config group it came from.
    """
    try:
        return instantiate(cfg[group], **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, ValueError | FileNotFoundError | NotADirectoryError):
            msg = str(cause)
            if not msg.startswith(f"{group}."):
                msg = f"{group}: {msg}"
            raise type(cause)(msg) from cause
        raise


def hparams_for_tensorboard(cfg: DictConfig) -> dict[str, Any]:
    """Scalar config values that identify a run in TensorBoard's HPARAMS tab."""
    out: dict[str, Any] = {
        "model": _choice("model"),
        "dataset": _choice("dataset"),
        "seed": int(cfg.seed),
    }
    for group in ("model", "optimizer", "trainer", "split"):
        node = OmegaConf.to_container(cfg[group], resolve=True) if cfg.get(group) else {}
        for key, value in (node or {}).items():
            if key.startswith("_"):
                continue
            if isinstance(value, list):
                value = "x".join(map(str, value))
            if isinstance(value, bool | int | float | str):
                out[f"{group}.{key}"] = value
    return out


def _choice(group: str) -> str | None:
    """The option chosen for a config group (e.g. ``resnext50``), when run under Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)


def print_summary(
    metrics: dict[str, Any], summary: dict[str, Any], timings: dict[str, Any], run_dir: Path
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"har-bench: {metrics.get('model')} on {metrics.get('dataset')}")
    table.add_column("metric")
    table.add_column("val", justify="right")
    table.add_column("test", justify="right")
    for key in (
        "accuracy",
        "balanced_accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "weighted_f1",
    ):
        table.add_row(key, f"{metrics['val'][key]:.4f}", f"{metrics['test'][key]:.4f}")
    table.add_section()
    table.add_row("best epoch", str(metrics["best_epoch"]), "")
    table.add_row("params", f"{summary['params']:,}", "")
    table.add_row("MFLOPs / sample", f"{summary['flops_per_sample'] / 1e6:.2f}", "")
    table.add_row(
        "train s / epoch (median)",
        f"{float(np.median(timings['train_seconds_per_epoch'])):.2f}",
        "",
    )
    table.add_row("train samples / s", f"{timings['train_samples_per_second']:.0f}", "")
    table.add_row(
        "latency p50 / p95 ms (bs 1)",
        f"{timings['inference_latency_ms']['p50']:.2f} / "
        f"{timings['inference_latency_ms']['p95']:.2f}",
        "",
    )
    Console().print(table)
    Console().print(f"run directory: [bold]{run_dir}[/bold]")

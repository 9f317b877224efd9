"""One experiment: seed -> instantiate -> fit -> evaluate -> artifacts.

Hydra and OmegaConf stop here: everything below this module is plain typed Python.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import socket
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

from har_bench import artifacts, distributed
from har_bench._fs import hold_lock, release_lock
from har_bench.data.base import HARData
from har_bench.data.splits import SPLIT_REPORT, Split, assert_clean, split_report, standardise
from har_bench.checkpoint import LAST_CHECKPOINT, load_resume_state, seed_everything
from har_bench.engine import DivergedError, Trainer, measure_latency
from har_bench.signals import Interrupted, stop_on_signals
from har_bench.metrics import classification_metrics, confusion_counts
from har_bench.models.summary import model_summary
from har_bench.resume import RunDirInUseError

log = logging.getLogger(__name__)


# Keys of metrics.json that describe how a previous attempt ended; a resumed run drops them.
_ENDING_KEYS = ("error", "interrupted", "diverged", "hint", "resume_command")


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train and evaluate the configured model; write every artifact into ``run_dir``.

    Whatever happens, the run dir keeps what was written so far and ``metrics.json`` ends with
    a status: ``completed``; ``interrupted`` (SIGINT/SIGTERM, with the command that resumes
    it); ``diverged`` (NaN/inf loss, with epoch, step and a hint); or ``failed`` with the
    message, the traceback in ``error.txt``. Only SIGKILL or a power cut leave ``running``.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    # The CLI takes this lock before Hydra writes .hydra/ (har_bench.resume.lock_run_dir); taken
    # here too for callers from Python. The other process's status must stay its own.
    if not hold_lock(run_dir):
        raise RunDirInUseError(run_dir)
    try:
        with stop_on_signals():
            return _run_with_status(cfg, run_dir)
    finally:
        release_lock(run_dir)


def _run_with_status(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    artifacts.write_status(
        run_dir,
        "running",
        clear=_ENDING_KEYS,
        run_dir=str(run_dir),
        # Lets a resume refuse a run that is still alive (see har_bench.resume).
        pid=os.getpid(),
        host=socket.gethostname(),
    )
    try:
        return _run(cfg, run_dir)
    except KeyboardInterrupt as e:
        saved = e.saved if isinstance(e, Interrupted) else None
        name = e.signal_name if isinstance(e, Interrupted) else "SIGINT"
        command = resume_command(run_dir)
        artifacts.write_status(
            run_dir,
            "interrupted",
            error=f"interrupted by {name}",
            interrupted={"signal": name, "checkpoint": saved},
            resume_command=command,
        )
        raise
    except DivergedError as e:
        artifacts.write_status(
            run_dir,
            "diverged",
            error=str(e),
            diverged={"epoch": e.epoch, "step": e.step, "loss": str(e.loss)},
            hint=DivergedError.HINT,
        )
        raise
    except BaseException as e:
        artifacts.write_error(run_dir, traceback.format_exc())
        artifacts.write_status(run_dir, "failed", error=f"{type(e).__name__}: {e}")
        raise


def resume_command(run_dir: Path) -> str | None:
    """The command that continues this run, or None when it has no checkpoint yet."""
    if not (run_dir / artifacts.CHECKPOINTS / LAST_CHECKPOINT).is_file():
        return None
    return f"har-bench trainer.resume={shlex.quote(str(run_dir.resolve()))}"


def _run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    seed = cfg.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} is invalid: expected an integer >= 0")
    seed_everything(seed)
    # The trainer and optimizer first: a bad setting fails before any data is read.
    trainer: Trainer = build(cfg, "trainer")
    optimizer_factory = build(cfg, "optimizer")
    scheduler_factory = build(cfg, "scheduler") if cfg.get("scheduler") else None
    check_optimizer(optimizer_factory, scheduler_factory)
    resume_state = _load_resume(cfg.trainer.get("resume"), run_dir)
    env = artifacts.environment_info(str(trainer.device))
    if resume_state is not None and (run_dir / artifacts.ENVIRONMENT).is_file():
        # The first attempt's environment stays; each resume adds where it ran.
        first = artifacts.read_json(run_dir / artifacts.ENVIRONMENT)
        first.setdefault("resumed", []).append(
            {"from_epoch": resume_state["epoch"], "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            | {k: env[k] for k in ("command", "git_commit", "device", "platform", "torch")}
        )
        env = first
    artifacts.write_json(run_dir / artifacts.ENVIRONMENT, env)

    t0 = time.perf_counter()
    data: HARData = build(cfg, "dataset")
    split: Split = build(cfg, "split")(data)
    # Written before the check so a leaking split can be inspected; then it fails the run
    # (unless split=random with allow_leakage=true, which only logs and records it).
    report = split_report(data, split, name=_choice("split"))
    artifacts.write_json(run_dir / SPLIT_REPORT, report)
    assert_clean(report)
    check_split_labels(data, split)
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

    history: list[dict[str, float]] = []
    purge_step = None
    if resume_state is not None:
        history = [dict(r) for r in resume_state["history"]]
        # history.csv may lag last.pt by one epoch (killed between the two writes).
        artifacts.write_history(run_dir, history)
        purge_step = len(history) or None
    tb = artifacts.TensorBoardLogger(run_dir, purge_step=purge_step)
    if history:
        tb.log_epoch(history[-1])

    def on_epoch_end(row: dict[str, float]) -> None:
        history.append(row)
        artifacts.write_history(run_dir, history)
        tb.log_epoch(row)

    try:
        fit = trainer.fit(
            model,
            *parts["train"],
            *parts["val"],
            optimizer_factory=optimizer_factory,
            scheduler_factory=scheduler_factory,
            checkpoint_dir=run_dir / artifacts.CHECKPOINTS,
            seed=seed,
            on_epoch_end=on_epoch_end,
            resume=resume_state,
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
        if resume_state is not None:
            metrics["resumed_from_epoch"] = resume_state["epoch"]
        for name, res in results.items():
            metrics[name] = {
                "loss": res["loss"],
                **classification_metrics(res["y_true"], res["y_pred"], data.class_names),
            }
        ddp = distributed.report(metrics)  # under torchrun: every rank's figures
        if ddp is not None:
            metrics["ddp"] = ddp
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
        if isinstance(cause, TypeError):
            # A key the constructor does not take, e.g. +trainer.foo=1.
            m = re.search(r"unexpected keyword argument '(\w+)'", str(cause))
            if m:
                target = cfg[group].get("_target_", group)
                raise ValueError(f"{group}.{m[1]} is not a parameter of {target}") from None
        if isinstance(cause, ValueError | OSError):
            msg = str(cause)
            if not msg.startswith(f"{group}."):
                msg = f"{group}: {msg}"
            raise type(cause)(msg) from cause
        raise


# torch.optim's wording -> (config key, what it takes). torch checks these only when an
# optimizer is created; check_optimizer does that before any data is read.
_OPTIMIZER_CHECKS = {
    "Invalid learning rate": ("lr", "a number >= 0"),
    "Invalid epsilon value": ("eps", "a number >= 0"),
    "Invalid weight_decay value": ("weight_decay", "a number >= 0"),
    "Invalid momentum value": ("momentum", "a number >= 0"),
    "Invalid beta parameter": ("betas", "two numbers in [0, 1)"),
    "Invalid alpha value": ("alpha", "a number >= 0"),
}


def check_optimizer(optimizer_factory: Any, scheduler_factory: Any) -> None:
    """Create the optimizer and scheduler on a dummy parameter, turning torch's errors into
    messages that name the config key (``optimizer.lr=-0.1 is invalid: ...``)."""
    keywords = dict(getattr(optimizer_factory, "keywords", {}) or {})
    target = getattr(getattr(optimizer_factory, "func", None), "__name__", "the optimizer")
    for key, value in keywords.items():
        # A typo such as optimizer.lr=1e-3x arrives as a string; torch's error would not say so.
        if key in ("lr", "eps", "weight_decay", "momentum", "alpha") and isinstance(value, str):
            raise ValueError(f"optimizer.{key}={value!r} is invalid: expected a number")
    try:
        optimizer = optimizer_factory([nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as e:
        msg = str(e)
        m = re.search(r"unexpected keyword argument '(\w+)'", msg)
        if m:
            raise ValueError(f"optimizer.{m[1]} is not a parameter of {target}") from None
        for prefix, (key, expected) in _OPTIMIZER_CHECKS.items():
            if msg.startswith(prefix):
                value = keywords.get(key, msg.rpartition(":")[2].strip())
                raise ValueError(
                    f"optimizer.{key}={value} is invalid: expected {expected}"
                ) from None
        raise ValueError(f"optimizer ({target}): {msg}") from None
    if scheduler_factory is not None:
        try:
            scheduler_factory(optimizer)
        except (ValueError, TypeError, ZeroDivisionError) as e:
            m = re.search(r"unexpected keyword argument '(\w+)'", str(e))
            if m:
                raise ValueError(f"scheduler.{m[1]} is not a parameter of the scheduler") from None
            raise ValueError(f"scheduler: {e}") from None


def check_split_labels(data: HARData, split: Split) -> None:
    """Training and test parts must have windows, and every test class must occur in training."""
    parts = {
        part: np.asarray(idx, dtype=np.int64)
        for part, idx in (("train", split.train), ("val", split.val), ("test", split.test))
    }
    sizes = {part: len(idx) for part, idx in parts.items()}
    name = f"split={_choice('split')}" if _choice("split") else "split"
    for part in ("train", "test"):
        if sizes[part] == 0:
            raise ValueError(
                f"{name}: the {part} part has no windows (train/val/test = "
                f"{sizes['train']}/{sizes['val']}/{sizes['test']} windows); check the split's "
                "subjects or fractions against the dataset"
            )
    train_classes = set(np.unique(data.y[parts["train"]]).tolist())
    for part in ("test", "val"):
        idx = parts[part]
        unseen = sorted(set(np.unique(data.y[idx]).tolist()) - train_classes)
        if not unseen:
            continue
        names = [data.class_names[k] for k in unseen]
        if part == "test":
            raise ValueError(
                f"{name}: test labels {names} never occur in the training "
                f"part ({len(train_classes)} of {data.num_classes} classes there), so no model "
                "can learn them; choose other test subjects or a dataset with those classes "
                "in training"
            )
        log.warning("validation labels %s never occur in the training part", names)


def _load_resume(resume: str | None, run_dir: Path) -> dict[str, Any] | None:
    if resume in (None, ""):
        return None
    target = Path(str(resume)).expanduser()
    if target.resolve() != run_dir.resolve():
        raise ValueError(
            f"trainer.resume={resume} is not this run's directory ({run_dir}): a run "
            "continues in its own directory (the har-bench CLI arranges that; from Python "
            "call run(cfg, Path(cfg.trainer.resume)))"
        )
    state = load_resume_state(run_dir / artifacts.CHECKPOINTS)
    log.info("resuming %s from %s", run_dir, run_dir / artifacts.CHECKPOINTS / LAST_CHECKPOINT)
    return state


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

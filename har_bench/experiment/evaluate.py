"""The evaluation stages: validation and test scored once, the timings, and the result that becomes
``metrics.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from har_bench.core.calibration import Calibration, reject_curve, softmax
from har_bench.core.metrics import classification_metrics, confusion_counts
from har_bench.core.timing import latency_ms, measure_latency
from har_bench.experiment.build import BuiltModel
from har_bench.experiment.fit import Refitted
from har_bench.experiment.prepare import Part, PreparedData
from har_bench.experiment.spec import Choices
from har_bench.runs.artifacts import TestPredictions
from har_bench.training import distributed
from har_bench.training.engine import Trainer, precision_name
from har_bench.training.image_transforms import ImageInput
from har_bench.training.session import FitResult

# One part's ``loss``, ``y_true`` and ``y_pred``, as Trainer.evaluate returns them.
Scorer = Callable[[Part], dict[str, Any]]


def best_weights_scorer(
    trainer: Trainer, model: nn.Module, fitted: FitResult, prepare: ImageInput | None = None
) -> Scorer:
    """Scores with the best-on-validation weights (loaded into ``model`` now); ``prepare``
    turns stored images into the model's input."""
    model.load_state_dict(fitted.best_state)
    return lambda part: trainer.evaluate(model, part.X, part.y, prepare)


def estimator_scorer(model: Any) -> Scorer:
    """Scores a model fitted outside the loop; it has no loss to report."""

    def score(part: Part) -> dict[str, Any]:
        if len(part.y) == 0:  # no validation part: nothing to predict
            empty = np.empty((0, 0), np.float32)
            return {
                "loss": float("nan"),
                "y_true": part.y.numpy(),
                "y_pred": part.y.numpy(),
                "logits": empty,
            }
        # Its decision scores play the logits' part for the temperature.
        scores = np.asarray(model.decision_function(part.X.numpy()), np.float32)
        return {
            "loss": float("nan"),
            "y_true": part.y.numpy(),
            "y_pred": scores.argmax(1),
            "logits": scores,
        }

    return score


@dataclass
class Evaluation:
    val: dict[str, Any]
    test: dict[str, Any]
    test_seconds: float  # scoring the test part, for the inference throughput

    def metrics(self, class_names: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """metrics.json's ``val`` and ``test``; ``val`` is null without a validation part
        (``split.val_fraction=0``)."""
        return {
            name: {
                "loss": res["loss"],
                **classification_metrics(res["y_true"], res["y_pred"], class_names),
            }
            if len(res["y_true"])
            else None
            for name, res in (("val", self.val), ("test", self.test))
        }

    def confusion(self, num_classes: int) -> np.ndarray:
        """Test-set counts, rows = true class."""
        return confusion_counts(self.test["y_true"], self.test["y_pred"], num_classes)


def evaluate(score: Scorer, data: PreparedData, score_test: Scorer | None = None) -> Evaluation:
    """Validation, then the test set: touched once, here (by ``score_test`` when the tested
    model is not the one selected on validation, e.g. after a refit)."""
    val = score(data.val)
    t0 = time.perf_counter()
    test = (score_test or score)(data.test)
    return Evaluation(val, test, time.perf_counter() - t0)


@dataclass
class Calibrated:
    """The run's temperature (``calibration.json``) and the test set's reject curve."""

    calibration: Calibration
    reject_curve: dict[str, list[float]]  # threshold, coverage, accuracy

    def metrics(self) -> dict[str, Any]:
        """metrics.json's ``calibration``."""
        c = self.calibration
        return {
            "temperature": c.temperature,
            "fitted_on": c.fitted_on,
            "n_windows": c.n_windows,
            "rule": c.rule,
            "ece": c.ece,
            "nll": c.nll,
        }


def calibrate(
    score: Scorer,
    evaluation: Evaluation,
    data: PreparedData,
    score_test: Scorer | None = None,
    *,
    val_held_out: bool,
    held_out: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
) -> Calibrated | None:
    """One temperature for the tested model's logits, fitted on windows its weights did not
    see where there are any; the test part only measures it (calibration error before/after,
    the reject curve).

    In order: the validation part when ``evaluation.val`` was scored by a model not trained on
    it (``val_held_out``; after a refit that is the first phase's model, the same recipe on
    fewer windows, whose temperature the refitted model is tested with); else what
    ``held_out()`` returns, scores of the fitted windows each from a fit without it, and their
    labels (MiniRocket's leave-one-out ridge; asked only here); else the windows the tested
    model was trained on, which are more often right and more confidently so than new ones, so
    the temperature corrects over-confidence less than held-out windows would (out-of-fold
    logits of a network would need a model per fold)."""
    test = evaluation.test
    if len(test["y_true"]) == 0 or test["logits"].shape[0] != len(test["y_true"]):
        return None
    val = evaluation.val
    if val_held_out and len(val["y_true"]):
        fit = val
        if score_test is None:
            fitted_on, rule = "val", "the validation part, held out from the tested model"
        else:
            fitted_on = "val (first phase)"
            rule = (
                "the validation part, held out from the first phase's model; the refitted "
                "model, trained on it too, is tested with that temperature"
            )
    else:
        refitted = score_test is not None
        if held_out is not None:
            scores, labels = held_out()
            fit = {"logits": scores, "y_true": labels}
            fitted_on = "train+val (leave-one-out)" if refitted else "train (leave-one-out)"
            rule = (
                "the windows the tested model was fitted on, each scored by the model fitted "
                "without it"
            )
        else:
            scorer = score_test or score
            part = Part.joined(data.train, data.val) if refitted else data.train
            fit = scorer(part)
            fitted_on = "train+val" if refitted else "train"
            why = (
                "the model was refitted on train + validation" if refitted else "no validation part"
            )
            rule = f"the windows the tested model was trained on ({why})"
    if fit["logits"].shape[0] != len(fit["y_true"]) or not len(fit["y_true"]):
        return None
    calibration = Calibration.fit(
        fit["logits"], fit["y_true"], fitted_on, rule, test["logits"], test["y_true"]
    )
    probs = softmax(test["logits"], calibration.temperature)
    return Calibrated(calibration, reject_curve(probs, test["y_true"]))


@dataclass
class Timings:
    """timings.json."""

    train_seconds_per_epoch: list[float]
    train_seconds_total: float
    train_samples_per_second: float
    inference_latency_ms: dict[str, float]
    inference_samples_per_second: float | None
    inference_batch_size: int
    test_inference_seconds: float
    device: str
    precision: str  # the training step's
    eval_precision: str
    torch_threads: int


def measure(
    trainer: Trainer,
    model: Any,
    data: PreparedData,
    fitted: FitResult,
    evaluation: Evaluation,
    *,
    repeats: int,
    warmup: int,
) -> Timings:
    """Training throughput from the fit, inference latency at batch size 1 measured now."""
    sample = data.model_input(data.test.X[:1]) if len(data.test) else data.sample
    if isinstance(model, nn.Module):
        latency = measure_latency(model, sample, trainer.device, repeats=repeats, warmup=warmup)
    else:
        window = sample.numpy()
        latency = latency_ms(lambda: model.decision_function(window), repeats, warmup)
    n_test, seconds = len(evaluation.test["y_true"]), evaluation.test_seconds
    if fitted.history:
        train_sps = float(np.median([r["samples_per_second"] for r in fitted.history]))
    else:  # fitted in one go: windows over its fitting time
        train_sps = fitted.train_windows / max(sum(fitted.train_seconds_per_epoch), 1e-9)
    return Timings(
        train_seconds_per_epoch=fitted.train_seconds_per_epoch,
        train_seconds_total=float(sum(fitted.train_seconds_per_epoch)),
        train_samples_per_second=train_sps,
        inference_latency_ms=latency,
        inference_samples_per_second=n_test / seconds if seconds > 0 else None,
        inference_batch_size=trainer.eval_batch_size,
        test_inference_seconds=seconds,
        device=str(trainer.device),
        precision=precision_name(trainer.amp_dtype),
        eval_precision=precision_name(trainer.eval_dtype),
        torch_threads=torch.get_num_threads(),
    )


@dataclass
class RunResult:
    """What a completed run reports: ``metrics`` is metrics.json, written last."""

    metrics: dict[str, Any]
    model_summary: dict[str, Any]
    timings: Timings
    confusion: np.ndarray  # test-set counts, rows = true class
    class_names: list[str]
    history: list[dict[str, float]]
    best_epoch: int
    calibration: Calibrated | None = None
    test_predictions: TestPredictions | None = None  # test_predictions.csv


def collect_test_predictions(
    evaluation: Evaluation, data: PreparedData, calibration: Calibrated | None
) -> TestPredictions | None:
    """The test windows' calibrated probabilities (temperature 1 for a run without one); None
    when the scorer gave no logits for them."""
    test = evaluation.test
    logits = test["logits"]
    if len(test["y_true"]) == 0 or logits.shape[0] != len(test["y_true"]):
        return None
    index = np.asarray(data.test.index)
    # A capped evaluation (trainer.limit_eval_batches) scored only some of the test windows; an
    # ensemble needs every one, so such a run has no file rather than a partial one.
    if len(index) != len(test["y_true"]):
        return None
    temperature = calibration.calibration.temperature if calibration is not None else 1.0
    return TestPredictions(
        window=index,
        subject=np.asarray(data.data.subjects)[index],
        y_true=np.asarray(test["y_true"]),
        probs=softmax(logits, temperature),
        class_names=data.class_names,
    )


def collect_result(
    fitted: FitResult,
    evaluation: Evaluation,
    built: BuiltModel,
    timings: Timings,
    data: PreparedData,
    *,
    monitor: str,
    choices: Choices,
    run_dir: Path,
    resume: Mapping[str, Any] | None,
    refitted: Refitted | None = None,
    finetune: dict[str, Any] | None = None,
    step_budget: dict[str, Any] | None = None,
    calibration: Calibrated | None = None,
    selection: dict[str, Any] | None = None,
) -> RunResult:
    metrics: dict[str, Any] = {
        "status": "completed",
        "best_epoch": fitted.best_epoch,
        "epochs_trained": len(fitted.history),
        "stopped_early": fitted.stopped_early,
        "monitor": monitor,
        "best_val_metric": fitted.best_metric,
        # Which weights were validated and selected: "model", "ema" (moving average) or
        # "fitted" (a model fitted outside the loop).
        "weights": fitted.weights,
        # Which model the test figures are of: the one selected on validation, or the refit.
        "tested": "refit" if refitted is not None else "selected",
        "model": choices.model,
        "dataset": choices.dataset,
        "run_dir": str(run_dir),
    }
    if step_budget is not None:
        metrics["step_budget"] = step_budget
    if selection is not None:
        # selection=kfold: the settings chosen on folds of the training part (their scores in
        # split_report.json); "tested" is then the model trained on all training cases.
        metrics["selection"] = selection
    if refitted is not None:
        metrics["refit"] = refitted.info
    if finetune is not None:
        metrics["finetune"] = finetune
    if resume is not None:
        metrics["resumed_from_epoch"] = resume["epoch"]
    metrics |= evaluation.metrics(data.class_names)
    if calibration is not None:
        metrics["calibration"] = calibration.metrics()
    ddp = distributed.report(metrics)  # under torchrun: every rank's figures
    if ddp is not None:
        metrics["ddp"] = ddp
    return RunResult(
        metrics=metrics,
        model_summary=built.summary,
        timings=timings,
        confusion=evaluation.confusion(data.data.num_classes),
        class_names=data.class_names,
        history=fitted.history,
        best_epoch=fitted.best_epoch,
        calibration=calibration,
        test_predictions=collect_test_predictions(evaluation, data, calibration),
    )

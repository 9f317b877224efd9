"""The fitting stages: resume state, ``environment.json``, the step budget, the training loop's
fit, the refit on train + validation and a model fitted outside the loop.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from har_bench.core.errors import UserError
from har_bench.core.seeding import seed_everything
from har_bench.experiment.build import BuiltModel, bind_finetune, new_model
from har_bench.experiment.prepare import Part, PreparedData
from har_bench.experiment.pretrained import WeightsSource
from har_bench.experiment.spec import Training
from har_bench.runs import artifacts, rundir
from har_bench.training.augment import Augment
from har_bench.training.checkpoint import LAST_CHECKPOINT, load_resume_state
from har_bench.training.image_transforms import ImageAugment
from har_bench.training.schedules import StepSchedule
from har_bench.training.session import FitResult

log = logging.getLogger(__name__)


def load_resume(resume: str | None, run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint a ``trainer.resume`` continues from, or None for a fresh run."""
    if resume in (None, ""):
        return None
    target = Path(str(resume)).expanduser()
    if target.resolve() != run_dir.resolve():
        raise UserError(
            f"trainer.resume={resume} is not this run's directory ({run_dir}): a run "
            "continues in its own directory (the har-bench CLI arranges that; from Python "
            "call run(cfg, Path(cfg.trainer.resume)))"
        )
    if rundir.stopped_in_selection(run_dir):
        # The final training has not started: selection=kfold resumes its folds.
        log.info("resuming %s's selection from %s", run_dir, rundir.SELECTION_CHECKPOINTS)
        return None
    state = load_resume_state(rundir.checkpoint_dir(run_dir))
    log.info("resuming %s from %s", run_dir, rundir.last_checkpoint(run_dir))
    return state


def write_environment(run_dir: Path, device: str, resume: Mapping[str, Any] | None) -> None:
    """``environment.json``; a resume keeps the first attempt's and adds where it ran."""
    env = artifacts.environment_info(device)
    path = run_dir / rundir.ENVIRONMENT
    if resume is not None and path.is_file():
        first = rundir.read_json(path)
        first.setdefault("resumed", []).append(
            {"from_epoch": resume["epoch"], "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            | {k: env[k] for k in ("command", "git_commit", "device", "platform", "torch")}
        )
        env = first
    rundir.write_json(path, env)


def fit(
    training: Training,
    model: nn.Module,
    data: PreparedData,
    run_dir: Path,
    resume: Mapping[str, Any] | None,
    on_epoch: Callable[[dict[str, float]], None],
) -> FitResult:
    """Train on the training part, selecting the epoch on validation."""
    return train_model(
        training,
        model,
        data,
        data.train,
        data.val,
        rundir.checkpoint_dir(run_dir),
        resume,
        on_epoch=on_epoch,
    )


def train_model(
    training: Training,
    model: nn.Module,
    data: PreparedData,
    train: Part,
    val: Part | None,
    checkpoints: Path,
    resume: Mapping[str, Any] | None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``model`` on ``train`` with the run's settings (optimizer, schedule, augmentation
    and fine-tuning bound to ``data``), selecting the epoch on ``val``; ``val=None`` selects
    nothing, so the last epoch's weights are kept. The run, the refit and every fold of a
    selection start their training here."""
    val_X, val_y = (train.X[:0], train.y[:0]) if val is None else (val.X, val.y)
    return training.trainer.fit(
        model,
        train.X,
        train.y,
        val_X,
        val_y,
        optimizer_factory=training.optimizer_factory,
        scheduler_factory=training.scheduler_factory,
        checkpoint_dir=checkpoints,
        seed=training.seed,
        on_epoch_end=on_epoch,
        resume=resume,
        augment=bind_augment(training, data),
        prepare=data.prepare,
        finetune=bind_finetune(training, model),
    )


def bind_augment(training: Training, data: PreparedData) -> Augment | ImageAugment | None:
    """A fresh copy of the run's augmentation for this data (each training phase starts its
    generator from the same seed)."""
    if training.augment is None:
        return None
    augment = copy.deepcopy(training.augment)
    if isinstance(augment, ImageAugment):
        if data.prepare is None:
            raise UserError(
                f"augment=image transforms images; dataset={data.data.name} holds sensor "
                "windows: use augment=sensor or augment=none"
            )
        return augment.bind(data.prepare, training.seed)
    if data.prepare is not None:
        raise UserError(
            f"the sensor augmentation transforms windows [N, C, T]; dataset={data.data.name} "
            "holds images: use augment=image or augment=none"
        )
    return augment.bind(
        data.data.num_classes, data.data.channel_groups or [], data.mean, data.std, training.seed
    )


def apply_step_budget(training: Training, n_train: int) -> tuple[Training, dict[str, Any] | None]:
    """``training`` with about ``max_steps`` optimizer steps over ``n_train`` windows, and
    metrics.json's ``step_budget`` record (None without a budget).

    The epoch count becomes min(trainer.max_epochs, ceil(max_steps / steps per epoch)), whole
    epochs, so up to one epoch more than the budget: a recipe written for tens of cases keeps
    its epochs there and does not turn into tens of thousands of steps on thousands of cases.
    A shortened step schedule keeps its shape (the warm-up its share of it), a cosine its
    horizon; a refit trains the same number of epochs on train + validation, so more steps.
    Steps are per process under torchrun (each takes a share of the windows).
    """
    if training.max_steps is None:
        return training, None
    trainer = training.trainer
    per_epoch = trainer.steps_per_epoch(n_train)
    epochs = min(trainer.max_epochs, math.ceil(training.max_steps / per_epoch))
    record = {
        "max_steps": training.max_steps,
        "steps_per_epoch": per_epoch,
        "max_epochs": trainer.max_epochs,
        "epochs": epochs,
    }
    if epochs == trainer.max_epochs:
        return training, record
    log.info(
        "trainer.max_steps=%d at %d steps per epoch: %d of trainer.max_epochs=%d epochs",
        training.max_steps,
        per_epoch,
        epochs,
        trainer.max_epochs,
    )
    factory = training.scheduler_factory
    schedule = rescaled_schedule(factory, epochs)
    if isinstance(factory, StepSchedule):
        warmup = factory.warmup_epochs * epochs / factory.epochs
        schedule = dataclasses.replace(schedule, warmup_epochs=warmup)
    elif schedule is factory and factory is not None:
        log.warning(
            "the scheduler counts epochs and is not shortened by trainer.max_steps: it runs "
            "%d of its epochs; scheduler=warmup_cosine, one_cycle or cosine follow the budget",
            epochs,
        )
    finetune = training.finetune
    if finetune is not None and (finetune.unfreeze_after or 0) >= epochs:
        log.warning(
            "model.unfreeze_after=%s is not reached in the %d epochs of trainer.max_steps=%d: "
            "the frozen part stays frozen",
            finetune.unfreeze_after,
            epochs,
            training.max_steps,
        )
    budgeted = dataclasses.replace(
        training,
        trainer=dataclasses.replace(trainer, max_epochs=epochs),
        scheduler_factory=schedule,
    )
    return budgeted, record


@dataclass
class Refitted:
    """The second phase of ``trainer.refit``: the model trained on train + validation."""

    fitted: FitResult
    model: nn.Module
    info: dict[str, Any]  # metrics.json's ``refit``


def rescaled_schedule(factory: Callable[..., Any] | None, epochs: int) -> Callable[..., Any] | None:
    """The scheduler factory with its horizon set to ``epochs`` (cosine T_max, step schedules);
    others unchanged."""
    if isinstance(factory, StepSchedule):
        return dataclasses.replace(factory, epochs=epochs)
    if isinstance(factory, functools.partial) and "T_max" in factory.keywords:
        return functools.partial(
            factory.func, *factory.args, **{**factory.keywords, "T_max": epochs}
        )
    return factory


def refit(
    training: Training,
    make_model: Callable[[int, int], nn.Module],
    data: PreparedData,
    selected: FitResult,
    run_dir: Path,
    weights: WeightsSource | None = None,
) -> Refitted:
    """Train a new model from scratch on train + validation for the epochs chosen on validation
    (the best epoch under early stopping; the whole schedule with ``trainer.patience=null``).

    Nothing is selected in this phase (it has no validation part): the weights after its last
    epoch (their moving average with ``trainer.ema_decay``) are the ones tested. Its
    checkpoints are in ``checkpoints/refit/``, so an interrupted refit resumes there.
    """
    # Early stopping chose the epoch count; a fixed schedule is its own choice.
    fixed = not training.selects_on_validation
    epochs = training.trainer.max_epochs if fixed else max(selected.best_epoch, 1)
    phase = dataclasses.replace(
        training,
        trainer=dataclasses.replace(training.trainer, max_epochs=epochs, patience=None),
        scheduler_factory=rescaled_schedule(training.scheduler_factory, epochs),
    )
    trained_on = Part.joined(data.train, data.val)
    checkpoints = rundir.checkpoint_dir(run_dir) / rundir.REFIT_CHECKPOINTS
    resume = load_resume_state(checkpoints) if (checkpoints / LAST_CHECKPOINT).is_file() else None
    log.info("refit: %d epochs on train + validation (%d windows)", epochs, len(trained_on))
    seed_everything(training.seed)
    model, _ = new_model(make_model, data, weights)  # from the same pretrained weights
    fitted = train_model(phase, model, data, trained_on, None, checkpoints, resume)
    model.load_state_dict(fitted.best_state)
    # From the rows trained on, not from the split: the record must show what the refit saw.
    subjects = np.unique(data.data.subjects[trained_on.index])
    info = {
        "epochs": epochs,
        "epochs_from": "schedule" if fixed else "best_epoch",
        "train_windows": len(trained_on),
        "train_subjects": [int(s) for s in subjects],
        "weights": fitted.weights,
        "history": [
            {k: r[k] for k in ("epoch", "train_loss", "train_accuracy", "lr", "train_seconds")}
            for r in fitted.history
        ],
    }
    record_refit(run_dir, data, info)
    return Refitted(fitted, model, info)


def record_refit(run_dir: Path, data: PreparedData, info: Mapping[str, Any]) -> None:
    """``split_report.json`` gains the refit's training part, and the proof that it holds no
    test subject."""
    path = run_dir / rundir.SPLIT_REPORT
    report = rundir.read_json(path)
    test_subjects = set(np.unique(data.data.subjects[data.split.test]).tolist())
    report["refit"] = {
        "train_windows": info["train_windows"],
        "train_subjects": info["train_subjects"],
        "test_subjects_in_training": sorted(test_subjects & set(info["train_subjects"])),
        "epochs": info["epochs"],
    }
    rundir.write_json(path, report)


def estimator_windows(data: PreparedData, refit: bool) -> tuple[np.ndarray, np.ndarray]:
    """The windows and labels a model not trained by the loop is fitted on: the training part,
    or train + validation with ``trainer.refit``."""
    parts = [data.train, data.val] if refit else [data.train]
    return torch.cat([p.X for p in parts]).numpy(), torch.cat([p.y for p in parts]).numpy()


def estimator_held_out_scores(
    model: Any, data: PreparedData, refit: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The windows a fitted estimator was fitted on, each scored without it, and their labels
    (``model.held_out_scores``, MiniRocket's leave-one-out ridge): asked after the timed fit,
    so not training time."""
    return model.held_out_scores(*estimator_windows(data, refit))


def fit_estimator(built: BuiltModel, data: PreparedData, run_dir: Path, refit: bool) -> FitResult:
    """Fit a model that is not trained by the loop (``model=minirocket``) once, on
    :func:`estimator_windows` (it selects nothing on validation)."""
    X, y = estimator_windows(data, refit)
    t0 = time.perf_counter()
    built.model.fit(X, y)
    seconds = time.perf_counter() - t0
    built.summary |= built.model.summary() | {"input_shape": list(data.sample.shape[1:])}
    rundir.write_json(run_dir / rundir.MODEL_SUMMARY, built.summary)
    log.info("fitted %s on %d windows in %.1fs", built.summary["model"], len(y), seconds)
    return FitResult(
        history=[],
        best_epoch=0,
        best_metric=None,
        stopped_early=False,
        train_seconds_per_epoch=[seconds],
        weights="fitted",
        train_windows=len(y),
    )

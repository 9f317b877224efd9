"""The stages of one experiment, each a plain typed function: prepare data -> build model -> fit
-> evaluate -> measure -> result.

No Hydra here: :mod:`har_bench.experiment.components` turns the config into an :class:`Experiment` of
typed objects and factories, and :func:`har_bench.experiment.run.run` chains the stages. A stage gets what
it needs and returns a small result; the files a stage must leave behind even when a later one
fails (the split report, the model summary, the environment) it writes itself, the rest go
to the reporters (:mod:`har_bench.experiment.reporters`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from har_bench.core.errors import UserError, check_memory
from har_bench.core.metrics import classification_metrics, confusion_counts
from har_bench.core.seeding import seed_everything
from har_bench.core.timing import latency_ms, measure_latency
from har_bench.data.base import HARData
from har_bench.data.images import channel_stats
from har_bench.data.splits import Split, assert_clean, split_report, standardise
from har_bench.experiment.pretrained import WeightsSource, load_weights
from har_bench.models.resnet import ResNet
from har_bench.models.summary import model_summary
from har_bench.runs import artifacts, rundir
from har_bench.training import distributed
from har_bench.training.augment import Augment
from har_bench.training.checkpoint import LAST_CHECKPOINT, load_resume_state
from har_bench.training.engine import Trainer
from har_bench.training.finetune import FineTune
from har_bench.training.image_transforms import ImageAugment, ImageInput
from har_bench.training.schedules import StepSchedule
from har_bench.training.session import FitResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choices:
    """The option chosen per config group (``model=resnext50``); None outside Hydra."""

    model: str | None = None
    dataset: str | None = None
    split: str | None = None

    @classmethod
    def of(cls, choices: Mapping[str, str] | None) -> Choices:
        choices = choices or {}
        return cls(choices.get("model"), choices.get("dataset"), choices.get("split"))


@dataclass(frozen=True)
class Training:
    """How a neural model is trained: the trainer, optimizer and scheduler groups, built."""

    trainer: Trainer
    optimizer_factory: Callable[..., torch.optim.Optimizer]
    scheduler_factory: Callable[..., Any] | None
    seed: int
    augment: Augment | ImageAugment | None = None  # None also when every transform is off
    # After the epoch count is chosen on validation, train again on train + validation.
    refit: bool = False
    # model.freeze / unfreeze_after / backbone_lr; None = every parameter trains at optimizer.lr.
    finetune: FineTune | None = None
    # trainer.max_steps: a budget of optimizer steps, applied by :func:`apply_step_budget`.
    max_steps: int | None = None

    @property
    def selects_on_validation(self) -> bool:
        """Whether the validation part picks anything: early stopping's epoch, or the best
        epoch's weights when they are the ones tested. A fixed schedule refit on train +
        validation picks nothing there."""
        return self.trainer.patience is not None or not self.refit


@dataclass(frozen=True)
class Experiment:
    """Everything one run needs, built from the config; data and model are built by the stages
    (factories), so that a bad trainer or optimizer setting fails before any data is read."""

    seed: int
    training: Training
    load_data: Callable[[], HARData]
    make_split: Callable[[HARData], Split]
    make_model: Callable[[int, int], nn.Module]  # (in_channels, num_classes) -> model
    choices: Choices
    latency_repeats: int
    latency_warmup: int
    resume: str | None
    hparams: dict[str, Any]  # scalar config values that identify the run (TensorBoard)
    weights: WeightsSource | None = None  # model.weights: loaded into every model built


# -- prepare data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    X: torch.Tensor
    y: torch.Tensor
    # The dataset's window indices of these rows, so what a model trained on can be traced back
    # to subjects (the refit's record).
    index: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.y)

    @classmethod
    def joined(cls, *parts: Part) -> Part:
        """The rows of ``parts`` one after the other."""
        return cls(
            torch.cat([p.X for p in parts]),
            torch.cat([p.y for p in parts]),
            np.concatenate([p.index for p in parts]),
        )


@dataclass
class PreparedData:
    """The dataset split into standardised tensors (statistics from the training part only).

    Images stay uint8 at their stored size; ``prepare`` turns a batch of them into the
    network's input on the device (resize, centre crop, normalisation).
    """

    data: HARData
    split: Split
    train: Part
    val: Part
    test: Part
    sample: torch.Tensor = field(repr=False)  # one standardised window [1, C, ...]
    # The per-channel standardisation (training part's statistics), for the augmentation.
    mean: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    std: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    prepare: ImageInput | None = None  # images: stored batch -> network input

    @property
    def class_names(self) -> list[str]:
        return list(self.data.class_names)

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """Stored windows or images as the model takes them."""
        return self.prepare(x) if self.prepare is not None else x


# Below this many validation windows, selecting an epoch on them is warned about.
SMALL_VALIDATION = 50


def prepare_data(
    load_data: Callable[[], HARData],
    make_split: Callable[[HARData], Split],
    split_name: str | None,
    run_dir: Path,
    pretrained: WeightsSource | None = None,
) -> PreparedData:
    """Load, split, check the split (writing ``split_report.json``) and standardise.

    Images are not standardised here but per batch (:func:`image_input`); with ``pretrained``
    weights their normalisation is the one the weights were trained with.
    """
    t0 = time.perf_counter()
    data = load_data()
    split = make_split(data)
    # Written before the check so a leaking split can be inspected; then it fails the run
    # (unless split=random with allow_leakage=true, which only logs and records it).
    report = split_report(data, split, name=split_name)
    rundir.write_json(run_dir / rundir.SPLIT_REPORT, report)
    assert_clean(report)
    check_split_labels(data, split, split_name)
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
    y_t = torch.from_numpy(data.y.astype(np.int64))
    if data.image is not None:
        prepare = image_input(data, split, pretrained)
        X_t = torch.from_numpy(data.X)  # uint8, stored size: no copy until the parts
        parts = [Part(X_t[idx], y_t[idx], idx) for idx in (split.train, split.val, split.test)]
        return PreparedData(
            data,
            split,
            *parts,
            sample=prepare(X_t[:1]),
            mean=np.asarray(prepare.mean, dtype=np.float32),
            std=np.asarray(prepare.std, dtype=np.float32),
            prepare=prepare,
        )
    X, mean, std = standardise(data.X, split.train)
    X_t = torch.from_numpy(X)
    parts = [Part(X_t[idx], y_t[idx], idx) for idx in (split.train, split.val, split.test)]
    return PreparedData(data, split, *parts, sample=X_t[:1], mean=mean, std=std)


def image_input(data: HARData, split: Split, pretrained: WeightsSource | None) -> ImageInput:
    """The per-batch input transform of an image dataset. Its normalisation, by priority:
    ``dataset.mean``/``std``; the pretrained weights' (ImageNet's for torchvision's); the
    training images' own statistics."""
    spec = data.image
    assert spec is not None
    if spec.mean is not None and spec.std is not None:
        mean, std, source = spec.mean, spec.std, "dataset"
    elif pretrained is not None:
        mean, std, source = pretrained.normalisation()
    else:
        m, s = channel_stats(data.X, split.train)
        mean, std, source = tuple(m), tuple(s), "train"
    if len(mean) != data.num_channels:
        raise UserError(
            f"the image normalisation ({source}) has {len(mean)} channels, the images "
            f"{data.num_channels}"
        )
    prepare = ImageInput(spec.size, mean, std, spec.crop_ratio, source)
    log.info(
        "images: stored uint8 %s, network input %s (crop_ratio %g), normalised with %s mean/std",
        "x".join(map(str, data.X.shape[2:])),
        "x".join(map(str, spec.size)),
        spec.crop_ratio,
        source,
    )
    return prepare


def check_split_labels(data: HARData, split: Split, split_name: str | None = None) -> None:
    """Training and test parts must have windows, and every test class must occur in training."""
    parts = {
        part: np.asarray(idx, dtype=np.int64)
        for part, idx in (("train", split.train), ("val", split.val), ("test", split.test))
    }
    sizes = {part: len(idx) for part, idx in parts.items()}
    name = f"split={split_name}" if split_name else "split"
    for part in ("train", "test"):
        if sizes[part] == 0:
            raise UserError(
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
            raise UserError(
                f"{name}: test labels {names} never occur in the training "
                f"part ({len(train_classes)} of {data.num_classes} classes there), so no model "
                "can learn them; choose other test subjects or a dataset with those classes "
                "in training"
            )
        log.warning("validation labels %s never occur in the training part", names)


def check_selection(training: Training, data: PreparedData, trained_by_loop: bool) -> None:
    """Early stopping and a refit select on the validation part: without one (a split with
    ``val_fraction=0``) they are refused rather than silently doing nothing. A best epoch picked
    on a handful of validation windows is warned about (a model fitted outside the training
    loop picks none)."""
    n_val = len(data.val.y)
    if 0 < n_val < SMALL_VALIDATION and trained_by_loop and training.selects_on_validation:
        log.warning(
            "the validation part has only %d windows: its accuracy moves in steps of %.3f, so "
            "a best epoch picked on it is mostly noise; prefer a fixed schedule "
            "(trainer.patience=null) with trainer.refit=true",
            n_val,
            1 / n_val,
        )
    if n_val:
        return
    for wanted, setting, off in (
        (training.trainer.patience is not None, f"trainer.patience={training.trainer.patience}",
         "trainer.patience=null"),
        (training.refit, "trainer.refit=true", "trainer.refit=false"),
    ):  # fmt: skip
        if wanted:
            raise UserError(
                f"{setting} needs a validation part, but the split has none "
                f"(split.val_fraction=0): set split.val_fraction=0.2 or {off}"
            )


# -- build model -------------------------------------------------------------------------------


@dataclass
class BuiltModel:
    model: Any  # an nn.Module, or a fitted-not-trained model (fit/decision_function/summary)
    summary: dict[str, Any]  # model_summary.json

    @property
    def trained_by_loop(self) -> bool:
        return isinstance(self.model, nn.Module)


def build_model(
    make_model: Callable[[int, int], nn.Module],
    data: PreparedData,
    name: str | None,
    run_dir: Path,
    weights: WeightsSource | None = None,
) -> BuiltModel:
    """The model for this data's channels and classes, with ``weights`` loaded;
    ``model_summary.json`` written (for a model fitted outside the loop, by
    :func:`fit_estimator`, once there is something to count)."""
    model, loaded = new_model(make_model, data, weights)
    if not isinstance(model, nn.Module):
        return BuiltModel(model, {"model": name, "architecture": type(model).__name__})
    summary = model_summary(model, data.sample)
    summary["model"] = name
    summary["classes"] = data.class_names  # the outputs, in order (read by model.weights)
    if data.prepare is not None:
        summary["input"] = data.prepare.describe()
    if loaded is not None:
        summary["weights"] = loaded
    rundir.write_json(run_dir / rundir.MODEL_SUMMARY, summary)
    log.info(
        "model %s: %s params, %.3g MFLOPs per sample",
        name,
        f"{summary['params']:,}",
        summary["flops_per_sample"] / 1e6,
    )
    return BuiltModel(model, summary)


# Bytes per parameter while training: the float32 weight, its gradient and an optimizer's two
# moments (Adam's). Activations and the weights' moving average come on top.
TRAINING_BYTES_PER_PARAMETER = 16


def check_model_fits(make_model: Callable[[int, int], Any], in_channels: int, classes: int) -> None:
    """Refuse a network whose training state cannot fit in the memory available, counted on
    the meta device (no memory allocated, no random number drawn) before it is built."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = make_model(in_channels, classes)
    except Exception:  # noqa: BLE001  (built for real next: its error is the one to show)
        return
    if isinstance(model, nn.Module):
        n = sum(p.numel() for p in model.parameters())
        check_memory(
            f"the model ({n:,} parameters, with gradients and optimizer state)",
            TRAINING_BYTES_PER_PARAMETER * n,
            "choose a smaller model (e.g. a lower model.cardinality, width or depth)",
        )


def new_model(
    make_model: Callable[[int, int], nn.Module],
    data: PreparedData,
    weights: WeightsSource | None,
) -> tuple[Any, dict[str, Any] | None]:
    """A model for ``data`` from ``make_model``, with ``weights`` loaded (and what they were)."""
    check_model_fits(make_model, data.data.num_channels, data.data.num_classes)
    model = make_model(data.data.num_channels, data.data.num_classes)
    if (
        data.prepare is not None
        and isinstance(model, ResNet)
        and model.arch["layout"] != "2d_image"
    ):
        raise UserError(
            f"dataset={data.data.name} holds images [N, 3, H, W]; model.layout="
            f"{model.arch['layout']} is for sensor windows: use model.layout=2d_image"
        )
    if weights is None:
        return model, None
    if not isinstance(model, nn.Module):
        raise UserError(f"model.weights: {type(model).__name__} is not a network to load into")
    return model, load_weights(model, weights, data.class_names)


def bind_finetune(training: Training, model: nn.Module) -> FineTune | None:
    """The run's fine-tuning controls for this model: its head and last stage by name."""
    if training.finetune is None:
        return None
    if not isinstance(model, ResNet):
        raise UserError(
            f"model.freeze / model.backbone_lr need a network with a backbone and a head (the "
            f"ResNet family); {type(model).__name__} has no such split"
        )
    return training.finetune.bind([model.head_name], model.stage_names[-1:])


def finetune_record(training: Training, built: BuiltModel, fitted: FitResult) -> dict | None:
    """metrics.json's ``finetune``: the weights started from and the freezing as it ran."""
    finetune = bind_finetune(training, built.model) if built.trained_by_loop else None
    weights = built.summary.get("weights")
    if finetune is None and weights is None:
        return None
    record: dict[str, Any] = {"weights": weights}
    if finetune is not None:
        record |= finetune.describe(built.model, len(fitted.history))
    return record


# -- fit ---------------------------------------------------------------------------------------


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
    return training.trainer.fit(
        model,
        data.train.X,
        data.train.y,
        data.val.X,
        data.val.y,
        optimizer_factory=training.optimizer_factory,
        scheduler_factory=training.scheduler_factory,
        checkpoint_dir=rundir.checkpoint_dir(run_dir),
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
    trainer = dataclasses.replace(training.trainer, max_epochs=epochs, patience=None)
    trained_on = Part.joined(data.train, data.val)
    X, y = trained_on.X, trained_on.y
    checkpoints = rundir.checkpoint_dir(run_dir) / rundir.REFIT_CHECKPOINTS
    resume = load_resume_state(checkpoints) if (checkpoints / LAST_CHECKPOINT).is_file() else None
    log.info("refit: %d epochs on train + validation (%d windows)", epochs, len(y))
    seed_everything(training.seed)
    model, _ = new_model(make_model, data, weights)  # from the same pretrained weights
    fitted = trainer.fit(
        model,
        X,
        y,
        X[:0],
        y[:0],
        optimizer_factory=training.optimizer_factory,
        scheduler_factory=rescaled_schedule(training.scheduler_factory, epochs),
        checkpoint_dir=checkpoints,
        seed=training.seed,
        resume=resume,
        augment=bind_augment(training, data),
        prepare=data.prepare,
        finetune=bind_finetune(training, model),
    )
    model.load_state_dict(fitted.best_state)
    # From the rows trained on, not from the split: the record must show what the refit saw.
    subjects = np.unique(data.data.subjects[trained_on.index])
    info = {
        "epochs": epochs,
        "epochs_from": "schedule" if fixed else "best_epoch",
        "train_windows": len(y),
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


def fit_estimator(built: BuiltModel, data: PreparedData, run_dir: Path, refit: bool) -> FitResult:
    """Fit a model that is not trained by the loop (``model=minirocket``) once, on the training
    part, or on train + validation with ``trainer.refit`` (it selects nothing on validation)."""
    parts = [data.train, data.val] if refit else [data.train]
    X = torch.cat([p.X for p in parts]).numpy()
    y = torch.cat([p.y for p in parts]).numpy()
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


# -- evaluate ----------------------------------------------------------------------------------


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
            return {"loss": float("nan"), "y_true": part.y.numpy(), "y_pred": part.y.numpy()}
        pred = model.decision_function(part.X.numpy()).argmax(1)
        return {"loss": float("nan"), "y_true": part.y.numpy(), "y_pred": pred}

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


# -- measure -----------------------------------------------------------------------------------


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
    precision: str
    torch_threads: int


def measure(
    trainer: Trainer,
    model: Any,
    data: PreparedData,
    fitted: FitResult,
    evaluation: Evaluation,
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
        precision=trainer.precision,
        torch_threads=torch.get_num_threads(),
    )


# -- result ------------------------------------------------------------------------------------


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


def collect_result(
    fitted: FitResult,
    evaluation: Evaluation,
    built: BuiltModel,
    timings: Timings,
    data: PreparedData,
    monitor: str,
    choices: Choices,
    run_dir: Path,
    resume: Mapping[str, Any] | None,
    refitted: Refitted | None = None,
    finetune: dict[str, Any] | None = None,
    step_budget: dict[str, Any] | None = None,
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
    if refitted is not None:
        metrics["refit"] = refitted.info
    if finetune is not None:
        metrics["finetune"] = finetune
    if resume is not None:
        metrics["resumed_from_epoch"] = resume["epoch"]
    metrics |= evaluation.metrics(data.class_names)
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
    )

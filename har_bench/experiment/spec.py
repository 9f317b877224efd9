"""What one run is made of, typed: the group choices, how a network is trained, and the whole
experiment built from the config (by :mod:`har_bench.experiment.components`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from har_bench.core.metrics import classification_metrics
from har_bench.data.base import HARData
from har_bench.data.splits import Split
from har_bench.experiment.pretrained import WeightsSource
from har_bench.runs.tracking import MlflowTracking
from har_bench.training.augment import Augment
from har_bench.training.engine import Trainer
from har_bench.training.finetune import FineTune
from har_bench.training.image_transforms import ImageAugment


@dataclass(frozen=True)
class Choices:
    """The option chosen per config group (``model=resnext50``); None outside Hydra."""

    model: str | None = None
    dataset: str | None = None
    split: str | None = None
    # Every group's option, as (group, option) pairs: the tags of a tracked run.
    groups: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, choices: Mapping[str, str] | None) -> Choices:
        choices = choices or {}
        groups = tuple(sorted((str(k), str(v)) for k, v in choices.items() if v is not None))
        return cls(choices.get("model"), choices.get("dataset"), choices.get("split"), groups)


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
    # trainer.max_steps: a budget of optimizer steps, applied by
    # :func:`~har_bench.experiment.fit.apply_step_budget`.
    max_steps: int | None = None

    @property
    def selects_on_validation(self) -> bool:
        """Whether the validation part picks anything: early stopping's epoch, or the best
        epoch's weights when they are the ones tested. A fixed schedule refit on train +
        validation picks nothing there."""
        return self.trainer.patience is not None or not self.refit


@dataclass(frozen=True)
class Tracking:
    """``tracking=mlflow``: where the run is tracked and what identifies it there."""

    settings: MlflowTracking
    params: dict[str, Any]  # the config, flattened (``optimizer.lr``) and resolved
    tags: dict[str, str]  # the option of each config group (``model: resnet18``)


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
    tracking: Tracking | None = None  # tracking=none: TensorBoard and the run dir only


@functools.cache
def selection_metrics() -> tuple[str, ...]:
    """What a fold's held-out cases can be scored by: the single-number scores of
    :func:`~har_bench.core.metrics.classification_metrics` (a window count is no score)."""
    example = classification_metrics(np.zeros(1, dtype=np.int64), np.zeros(1, np.int64), ["a"])
    return tuple(k for k, v in example.items() if isinstance(v, float))


@dataclass(frozen=True)
class Candidate:
    """One combination of ``selection.grid``: its settings and the experiment they make."""

    overrides: dict[str, Any]  # config key -> value, in the grid's order
    experiment: Experiment
    # Its whole config, flattened and resolved, without the bookkeeping keys and the selection
    # group: what a resumed selection compares before it reuses a fold's score.
    settings: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.overrides.items())


@dataclass(frozen=True)
class Selection:
    """``selection=kfold``: candidates scored by k-fold cross-validation inside the training
    cases (:mod:`har_bench.experiment.select`)."""

    folds: int
    metric: str
    seed: int
    grid: dict[str, list[Any]]
    candidates: tuple[Candidate, ...]

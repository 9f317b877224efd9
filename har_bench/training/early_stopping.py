"""The best epoch so far on the monitored validation metric, and when to stop looking."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from har_bench.core.errors import UserError

# Monitored metric -> whether higher ("max") or lower ("min") is better.
MONITORS = {"val_macro_f1": "max", "val_accuracy": "max", "val_loss": "min"}


# What last.pt keeps of the tracker.
STATE_KEYS = ("best_epoch", "best_metric", "bad_epochs", "stopped_early", "monitor")


@dataclass
class BestTracker:
    """Keeps the best-on-validation weights and counts the epochs without improvement.

    ``patience`` epochs without improvement stop training (None = never); epochs before
    ``patience_after`` are not counted, so a warm-up cannot use up the patience.
    """

    monitor: str = "val_macro_f1"
    patience: int | None = None
    patience_after: int = 0
    best_epoch: int = 0
    best_metric: float | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    best_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.monitor not in MONITORS:
            raise UserError(
                f"trainer.monitor={self.monitor!r} is invalid: expected one of {list(MONITORS)}"
            )

    def is_better(self, metric: float) -> bool:
        if self.best_metric is None:
            return True
        if MONITORS[self.monitor] == "max":
            return metric > self.best_metric
        return metric < self.best_metric

    def update(
        self, epoch: int, metric: float | None, weights: Callable[[], dict[str, torch.Tensor]]
    ) -> bool:
        """Record ``epoch``'s metric; True when it is the new best (its weights are kept).

        ``metric=None`` (no validation windows) makes every epoch the best: the last one wins.
        """
        if metric is None or self.is_better(metric):
            self.best_metric, self.best_epoch, self.bad_epochs = metric, epoch, 0
            self.best_state = weights()
            return True
        if epoch > self.patience_after:
            self.bad_epochs += 1
        if self.patience is not None and self.bad_epochs >= self.patience:
            self.stopped_early = True
        return False

    def best_checkpoint(self) -> dict[str, Any]:
        """The content of ``best.pt``."""
        return {
            "model": self.best_state,
            "epoch": self.best_epoch,
            "monitor": self.monitor,
            "metric": self.best_metric,
        }

    def state_dict(self) -> dict[str, Any]:
        """The tracker's part of ``last.pt`` (the best weights themselves go to ``best.pt``)."""
        return {key: getattr(self, key) for key in STATE_KEYS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("monitor", self.monitor) != self.monitor:
            raise UserError(
                f"trainer.resume: the run monitored {state['monitor']!r}, not {self.monitor!r}"
            )
        self.best_epoch = int(state["best_epoch"])
        self.best_metric = state["best_metric"]
        self.bad_epochs = int(state["bad_epochs"])
        self.stopped_early = bool(state.get("stopped_early", False))
        self.best_state = dict(state.get("best_state") or {})

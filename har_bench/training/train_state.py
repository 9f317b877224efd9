"""What the training loop carries from one optimizer step and epoch to the next.

Everything here goes into ``last.pt`` through :meth:`TrainState.state_dict`, so a run stopped at
any step boundary continues with the same numbers it would have produced uninterrupted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from har_bench.training.early_stopping import BestTracker


@dataclass
class EpochProgress:
    """The epoch under way: batches done and the running training sums."""

    epoch: int
    num_batches: int
    batches_done: int = 0
    seen: int = 0
    correct: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.long))
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    train_seconds: float = 0.0

    @property
    def finished(self) -> bool:
        return self.batches_done >= self.num_batches

    def history_row(
        self, val: dict[str, Any] | None, lr: float, eval_seconds: float
    ) -> dict[str, float]:
        """The epoch's line of ``history.csv``: training sums and the validation figures."""
        nan = float("nan")
        return {
            "epoch": self.epoch,
            "train_loss": float(self.loss_sum) / max(self.seen, 1),
            "train_accuracy": int(self.correct) / max(self.seen, 1),
            "val_loss": val["loss"] if val else nan,
            "val_accuracy": val["accuracy"] if val else nan,
            "val_macro_f1": val["macro_f1"] if val else nan,
            "lr": lr,
            "train_seconds": self.train_seconds,
            "epoch_seconds": self.train_seconds + eval_seconds,
            "samples_per_second": self.seen / self.train_seconds if self.train_seconds > 0 else nan,
        }

    def state_dict(self) -> dict[str, Any]:
        state = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in ("correct", "loss_sum"):  # device tensors while the epoch runs
            state[name] = state[name].detach().cpu().clone()
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> EpochProgress:
        return cls(**{k: state[k] for k in cls.__dataclass_fields__})


@dataclass
class TrainState:
    """Loop counters, history, the best-epoch tracker and the batch-order generator."""

    tracker: BestTracker
    # Draws every epoch's batch order; on the CPU so runs match across devices.
    generator: torch.Generator
    epoch: int = 0  # last completed epoch
    step: int = 0  # optimizer steps taken
    history: list[dict[str, float]] = field(default_factory=list)
    progress: EpochProgress | None = None
    # The generator as the epoch under way began: a mid-epoch resume redraws its batch order.
    epoch_generator: torch.Tensor | None = None

    def start_epoch(self, epoch: int, num_batches: int) -> EpochProgress:
        """The progress of ``epoch``: continued when a resumed checkpoint stopped inside it."""
        if self.progress is None or self.progress.epoch != epoch:
            self.progress = EpochProgress(epoch=epoch, num_batches=num_batches)
        return self.progress

    def end_epoch(self, row: dict[str, float]) -> None:
        self.history.append(row)
        self.epoch = int(row["epoch"])
        self.progress = None

    def state_dict(self) -> dict[str, Any]:
        # Between an epoch's last step and its validation nothing mid-epoch needs keeping.
        mid_epoch = self.progress is not None and not self.progress.finished
        return {
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            **self.tracker.state_dict(),
            "generator": self.epoch_generator if mid_epoch else self.generator.get_state(),
            "partial_epoch": self.progress.state_dict() if mid_epoch else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state)
        self.generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.history = [dict(r) for r in state["history"]]
        part = state.get("partial_epoch")
        self.progress = EpochProgress.from_state_dict(part) if part else None

    def describe(self) -> str:
        """Where training stands, for log lines and the interrupt message."""
        if self.progress is not None and not self.progress.finished:
            p = self.progress
            return (
                f"epoch {p.epoch}, {p.batches_done} of {p.num_batches} batches done "
                f"(optimizer step {self.step})"
            )
        return f"epoch {self.epoch} complete (optimizer step {self.step})"

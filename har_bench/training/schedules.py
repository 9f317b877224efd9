"""Learning-rate schedules stepped after every optimizer step.

torch's epoch schedulers (``scheduler=cosine``, ``step``) are built from the optimizer alone;
these need the number of optimizer steps per epoch, which only the trainer knows, so a config
builds a :class:`StepSchedule` and the trainer calls it with the optimizer and that count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from har_bench.core.errors import UserError, check_int, is_number

KINDS = ("warmup_cosine", "one_cycle")


@dataclass
class StepSchedule:
    """A per-step schedule over ``epochs`` epochs.

    Args:
        kind: ``warmup_cosine`` (linear warm-up from ``start_factor`` x lr to lr over
            ``warmup_epochs``, then cosine to ``min_factor`` x lr) or ``one_cycle`` (torch's
            OneCycleLR peaking at lr after ``warmup_epochs``).
        epochs: the schedule's length (``trainer.max_epochs``).
        warmup_epochs: epochs of warm-up; early stopping does not count them. A warm-up never
            takes more than half the schedule (see :attr:`warmup`), so a short smoke run of the
            default recipe keeps a decaying half.
    """

    kind: str = "warmup_cosine"
    epochs: int = 10
    warmup_epochs: float = 1.0
    start_factor: float = 0.01
    min_factor: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"scheduler.kind={self.kind!r} is invalid: expected one of {KINDS}")
        check_int("scheduler.epochs", self.epochs)
        if not is_number(self.warmup_epochs) or not self.warmup_epochs >= 0:
            raise UserError(
                f"scheduler.warmup_epochs={self.warmup_epochs!r} is invalid: expected a number >= 0"
            )
        for name in ("start_factor", "min_factor"):
            value = getattr(self, name)
            if not is_number(value) or not 0 <= value <= 1:
                raise UserError(f"scheduler.{name}={value!r} is invalid: expected 0..1")

    @property
    def warmup(self) -> float:
        """The warm-up in epochs: ``warmup_epochs``, at most half of ``epochs``."""
        return min(self.warmup_epochs, self.epochs / 2)

    def __call__(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> LRScheduler:
        total = self.epochs * steps_per_epoch
        warmup = int(round(self.warmup * steps_per_epoch))
        if self.kind == "one_cycle":
            lrs = [g["lr"] for g in optimizer.param_groups]
            scheduler: LRScheduler = OneCycleLR(
                optimizer,
                max_lr=lrs,
                total_steps=total,
                # OneCycleLR peaks at step pct_start * total - 1
                pct_start=(warmup + 1) / total,
                div_factor=1 / max(self.start_factor, 1e-8),
                final_div_factor=max(self.start_factor / max(self.min_factor, 1e-8), 1.0),
            )
        else:
            scheduler = LambdaLR(optimizer, self._warmup_cosine(total, warmup))
        # Saved with the scheduler's state and read by a resume, to refuse a schedule stretched
        # or reshaped mid-run (its lr_lambda is not saved).
        scheduler.total_steps = total  # type: ignore[attr-defined]
        scheduler.warmup_steps = warmup  # type: ignore[attr-defined]
        return scheduler

    def _warmup_cosine(self, total: int, warmup: int):  # noqa: ANN202 - a lr_lambda
        start, floor = self.start_factor, self.min_factor

        def factor(step: int) -> float:
            if step < warmup:
                return start + (1 - start) * step / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return factor

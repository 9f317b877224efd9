"""Fine-tuning controls the training loop applies: which parameters train in which epoch, and
the backbone's share of the learning rate.

The model is split by module names it is given (:meth:`FineTune.bind`): the ``head`` (always
trained, at the base learning rate) and the ``last_stage`` (also trained under
``freeze=all-but-last-stage``); everything else is the backbone. Nothing here knows a model
class: the stage that builds the model names its parts.

Every parameter is in the optimizer from the start, in two groups (head first, so the ``lr``
column of history.csv is the base rate; backbone at ``backbone_lr`` x that). A frozen parameter
has ``requires_grad=False`` and so no gradient, which torch's optimizers skip entirely (no step,
no weight decay, no momentum). Unfreezing after N epochs is a function of the epoch alone, so
a resumed run freezes exactly as the uninterrupted one did; the optimizer's groups and state
come back from ``last.pt`` like any other.

A frozen BatchNorm is kept in eval mode: its running statistics stay those of the loaded
weights, so a frozen backbone computes exactly the pretrained features.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from har_bench.core.errors import UserError, check_optional_int

FREEZE = ("none", "backbone", "all-but-last-stage")
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _inside(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@dataclass
class FineTune:
    """Args:
    freeze: ``none``, ``backbone`` (only the head trains) or ``all-but-last-stage`` (the
        last stage and the head train).
    unfreeze_after: train everything from epoch ``unfreeze_after + 1`` on; None = never.
    backbone_lr: the backbone's learning rate as a multiple of ``optimizer.lr``.
    head, last_stage: module names of the head and of the last stage (see :meth:`bind`).
    """

    freeze: str = "none"
    unfreeze_after: int | None = None
    backbone_lr: float = 1.0
    head: tuple[str, ...] = ()
    last_stage: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.freeze not in FREEZE:
            raise UserError(
                f"model.freeze={self.freeze!r} is invalid: expected one of {', '.join(FREEZE)}"
            )
        n = check_optional_int("model.unfreeze_after", self.unfreeze_after)
        if n is not None and self.freeze == "none":
            raise UserError(
                f"model.unfreeze_after={n} needs a frozen part: set model.freeze=backbone or "
                "all-but-last-stage"
            )
        lr = self.backbone_lr
        if isinstance(lr, bool) or not isinstance(lr, int | float) or lr < 0:
            raise UserError(f"model.backbone_lr={lr!r} is invalid: expected a number >= 0")
        self.backbone_lr = float(lr)
        self.head, self.last_stage = tuple(self.head), tuple(self.last_stage)

    @property
    def enabled(self) -> bool:
        """Whether training differs from plain training of every parameter at one rate."""
        return self.freeze != "none" or self.backbone_lr != 1.0

    def bind(self, head: Sequence[str], last_stage: Sequence[str]) -> FineTune:
        """A copy for one model: the module names of its head and of its last stage."""
        if not head:
            raise ValueError("fine-tuning needs the model's head (its classifier) by name")
        return dataclasses.replace(self, head=tuple(head), last_stage=tuple(last_stage))

    def frozen_at(self, epoch: int) -> bool:
        """Whether the frozen part is frozen during ``epoch`` (1-based)."""
        if self.freeze == "none":
            return False
        return self.unfreeze_after is None or epoch <= self.unfreeze_after

    def trains(self, name: str, epoch: int) -> bool:
        """Whether parameter or module ``name`` trains during ``epoch``."""
        if not self.frozen_at(epoch) or _inside(name, self.head):
            return True
        return self.freeze == "all-but-last-stage" and _inside(name, self.last_stage)

    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: head first, then the backbone (the rest)."""
        if not self.head:
            raise ValueError("FineTune.bind() the model's head before building the optimizer")
        head, backbone = [], []
        for name, p in model.named_parameters():
            (head if _inside(name, self.head) else backbone).append(p)
        if not head:
            raise ValueError(f"the model has no parameters under {list(self.head)} (its head)")
        groups = [{"params": head, "name": "head"}]
        if backbone:
            groups.append({"params": backbone, "name": "backbone"})
        return groups

    def configure(self, optimizer: torch.optim.Optimizer) -> None:
        """Scale the backbone group's learning rate; call before a scheduler is built, which
        takes each group's rate as its base."""
        for group in optimizer.param_groups:
            if group.get("name") == "backbone":
                group["lr"] = group["lr"] * self.backbone_lr

    def apply(self, model: nn.Module, epoch: int) -> bool:
        """Set ``requires_grad`` and the frozen BatchNorms' eval mode for ``epoch``; call after
        ``model.train()``. Returns whether the set of trained parameters changed."""
        changed = False
        for name, p in model.named_parameters():
            trains = self.trains(name, epoch)
            changed |= p.requires_grad != trains
            p.requires_grad_(trains)
        for name, module in model.named_modules():
            if isinstance(module, _BATCH_NORMS) and not self.trains(name, epoch):
                module.eval()
        return changed

    def trainable_params(self, model: nn.Module, epoch: int) -> int:
        return sum(p.numel() for name, p in model.named_parameters() if self.trains(name, epoch))

    def describe(self, model: nn.Module, epochs_trained: int) -> dict[str, Any]:
        """What metrics.json records: the settings and what they did in this run."""
        n = self.unfreeze_after
        # unfreeze_after is only set with a frozen part (checked in __post_init__).
        unfrozen = n + 1 if n is not None and epochs_trained > n else None
        return {
            "freeze": self.freeze,
            "unfreeze_after": self.unfreeze_after,
            "backbone_lr": self.backbone_lr,
            "head": list(self.head),
            "last_stage": list(self.last_stage),
            "trainable_params_epoch_1": self.trainable_params(model, 1),
            "unfrozen_at_epoch": unfrozen,
        }

    def state_dict(self) -> dict[str, Any]:
        """The settings, so a resume with other ones is refused rather than mixed."""
        return {
            "freeze": self.freeze,
            "unfreeze_after": self.unfreeze_after,
            "backbone_lr": self.backbone_lr,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if getattr(self, key) != value:
                raise UserError(
                    f"trainer.resume: the checkpoint was trained with model.{key}={value}, "
                    f"now {getattr(self, key)}; resume with the run's own setting"
                )

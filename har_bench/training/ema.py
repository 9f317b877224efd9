"""The moving average of the weights (``trainer.ema_decay``) and its BatchNorm statistics.

Averaging the BatchNorm running statistics along with the weights gives statistics measured on
other weights than the averaged ones, and a deep network then normalises its activations with
the wrong scale at every layer. As for stochastic weight averaging, the averaged model's
statistics are measured again on training windows before each use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

# Enough windows for stable statistics at a small share of an epoch's cost.
BN_WINDOWS = 1024


def moving_average(model: nn.Module, decay: float) -> AveragedModel:
    """A copy of ``model`` whose weights follow ``decay * average + (1 - decay) * weights``."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def calibration_windows(n: int, limit: int = BN_WINDOWS) -> torch.Tensor:
    """Indices of at most ``limit`` windows spread evenly over ``n``: no random draw, so a
    resumed run measures the same statistics."""
    return torch.linspace(0, n - 1, min(n, limit)).round().long().unique()


def recalibrate_batchnorm(
    averaged: nn.Module,
    X: torch.Tensor,
    batch_size: int,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """Replace the BatchNorm running statistics of ``averaged`` by those of its own
    activations on the windows of ``X`` chosen by :func:`calibration_windows`."""
    if not has_batchnorm(averaged) or len(X) == 0:
        return

    def batches() -> Iterator[torch.Tensor]:
        for xb in X[calibration_windows(len(X)).to(X.device)].split(batch_size):
            yield prepare(xb) if prepare is not None else xb

    update_bn(batches(), averaged)

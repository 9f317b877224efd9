"""The model stage: the network for the data's channels and classes, pretrained weights loaded,
``model_summary.json`` written; fine-tuning bound to its head and last stage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from har_bench.core.errors import UserError, check_memory
from har_bench.experiment.prepare import PreparedData
from har_bench.experiment.pretrained import WeightsSource, load_weights
from har_bench.experiment.spec import Training
from har_bench.models.resnet import ResNet, takes_images
from har_bench.models.summary import model_summary
from har_bench.runs import rundir
from har_bench.training.finetune import FineTune
from har_bench.training.session import FitResult

log = logging.getLogger(__name__)


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
    :func:`~har_bench.experiment.fit.fit_estimator`, once there is something to count)."""
    model, loaded = new_model(make_model, data, weights, name)
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
    name: str | None = None,
) -> tuple[Any, dict[str, Any] | None]:
    """A model for ``data`` from ``make_model``, with ``weights`` loaded (and what they were);
    ``name`` (the ``model=`` choice) is for the error when the data and the model disagree."""
    check_model_fits(make_model, data.data.num_channels, data.data.num_classes)
    model = make_model(data.data.num_channels, data.data.num_classes)
    if data.prepare is not None and not takes_images(model):
        raise UserError(images_need_image_model(data.data.name, model, name))
    if weights is None:
        return model, None
    if not isinstance(model, nn.Module):
        raise UserError(f"model.weights: {type(model).__name__} is not a network to load into")
    return model, load_weights(model, weights, data.class_names)


def images_need_image_model(dataset: str, model: Any, name: str | None) -> str:
    """The error for images given to a model that takes sensor windows: the ResNet family in
    another layout, or any sequence model (which has no image layout at all)."""
    head = f"dataset={dataset} holds images [N, 3, H, W]; "
    if isinstance(model, ResNet):
        layout = model.arch["layout"]
        return f"{head}model.layout={layout} is for sensor windows: use model.layout=2d_image"
    chosen = f"model={name}" if name else type(model).__name__
    return (
        f"{head}{chosen} takes sensor windows [N, C, T] only: use the ResNet family with "
        "model.layout=2d_image (e.g. model=resnet18 model.layout=2d_image)"
    )


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
